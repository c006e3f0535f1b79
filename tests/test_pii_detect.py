"""Value detectors and field-name matchers: true and false positives, as a table."""

# ruff: noqa: RUF001 - full-width digits and look-alike dashes are the test data

from __future__ import annotations

import pytest

from guard.pii.detect import (
    EmailDetector,
    NameMatcher,
    PhoneDetector,
    builtin_detectors,
    custom_detector,
    kinds_in,
    normalize,
)

PHONES = [
    # Japan
    "03-1234-5678", "090-1234-5678", "080 1234 5678", "0120-123-456", "0570-123-456", "0800-123-4567",
    "(03)1234-5678", "03(1234)5678", "09012345678", "0312345678", "+81 90 1234 5678", "+81-3-1234-5678",
    "+819012345678", "０９０－１２３４－５６７８", "０３（１２３４）５６７８",
    "090‐1234‐5678", "090ー1234ー5678",
    "TEL: 03-1234-5678", "電話090-1234-5678まで",
    # E.164 and others
    "+1 (555) 123-4567", "+44 20 7946 0958", "+49 30 1234567", "+49 (0)30 1234567", "+886 2 2345 6789",
    "+66 2 123 4567", "+33 1 23 45 67 89",
    # national formats
    "(555) 123-4567", "555-123-4567", "555.123.4567", "1-555-123-4567",   # US
    "020 7946 0958", "07700 900123", "0161 496 0000",                     # UK
    "030 12345678", "089/1234567", "0171 1234567",                        # DE
    "02-2345-6789", "0912-345-678", "(02)2345-6789",                      # TW
    "02-123-4567", "081-234-5678",                                        # TH
    "01 23 45 67 89",                                                     # FR
    "090-1234-5678 10:30",            # followed by a time
    "(090-1234-5678)", "TEL(03-1234-5678)", "[+81 90 1234 5678]", "（０３）１２３４－５６７８",
]

NOT_PHONES = [
    "2021-01-23", "01-23-2021", "01/23/2021", "23.01.2021", "2021-01-23 10:30:00", "01-23-2021 10:30",
    "¥1,234,567", "$1,234.56", "1234567.89", "0.1234567890",
    "123-4567", "〒123-4567", "060-0001", "12345-6789", "01234-5678",          # postal codes
    "ORD-2021-0001234", "0001234567", "INV-090-1234-5678", "A0312345678",      # order numbers, glued
    "1611390000", "20210123083000", "123-45-6789",                           # timestamps, SSN
    "4111 1111 1111 1111", "192.168.100.200", "10.0.0.1", "v1.2.3", "3.14159265358",
    "123-456-7890", "5551234567", "+1234", "+20210123",
    "090-1234-56789",                                                        # too many digits
    "123e4567-e89b-12d3-a456-426614174000", "0x1234567890", "dGVzdDAxMjM0NTY3ODkw", "1.0.0-rc.1",
    "2021-01-23T08:30:00+09:00", "+09:00", "page=2&sort=2021-01-23&per=100",
]

EMAILS = [
    "taro@example.com", "taro.yamada+support@mail.example.co.jp", "a@b.io",
    "ＴＡＲＯ＠ＥＸＡＭＰＬＥ．ＣＯＭ",
    "Taro <taro@example.com>", "mailto:taro@example.com", "用户@例子.广告", "x@xn--p1ai.xn--p1ai",
]
NOT_EMAILS = ["logo@2x.png", "icon@3x.webp", "user@localhost", "@example.com", "taro@", "a@b", "1.0@2.0",
              "foo@bar.123"]

USER_IDS = ["U4af4980629c2e7f5f6ae1e1cb8d9b3e7", "mid=U4af4980629c2e7f5f6ae1e1cb8d9b3e7&x=1"]
NOT_USER_IDS = ["U4af4980629c2e7f5f6ae1e1cb8d9b3e", "U4af4980629c2e7f5f6ae1e1cb8d9b3e7a",
                "XU4af4980629c2e7f5f6ae1e1cb8d9b3e7", "U4af4980629c2e7f5f6ae1e1cb8d9b3eg"]


@pytest.mark.parametrize("value", PHONES)
def test_phone_found(value: str) -> None:
    assert PhoneDetector().search(normalize(value)), value


@pytest.mark.parametrize("value", NOT_PHONES)
def test_phone_not_found(value: str) -> None:
    assert not PhoneDetector().search(normalize(value)), value


@pytest.mark.parametrize("value", EMAILS)
def test_email_found(value: str) -> None:
    assert EmailDetector().search(normalize(value)), value


@pytest.mark.parametrize("value", NOT_EMAILS)
def test_email_not_found(value: str) -> None:
    assert not EmailDetector().search(normalize(value)), value


@pytest.mark.parametrize("value", USER_IDS)
def test_user_id_found(value: str) -> None:
    assert kinds_in(value, builtin_detectors()) == ["user_id"]


@pytest.mark.parametrize("value", NOT_USER_IDS)
def test_user_id_not_found(value: str) -> None:
    assert "user_id" not in kinds_in(value, builtin_detectors())


def test_kinds_reported_in_detector_order() -> None:
    assert kinds_in("taro@example.com / 090-1234-5678", builtin_detectors()) == ["email", "phone"]


def test_scan_is_bounded() -> None:
    padding = "x" * 20_000
    assert kinds_in(padding + " taro@example.com", builtin_detectors()) == []
    assert kinds_in("taro@example.com " + padding, builtin_detectors()) == ["email"]


def test_custom_detector() -> None:
    member = custom_detector("member_no", r"\bM-\d{8}\b")
    assert member.search("M-12345678") and not member.search("M-1234")
    assert kinds_in("ID M-12345678", (*builtin_detectors(), member)) == ["member_no"]


@pytest.mark.parametrize(
    ("kind", "pattern", "message"),
    [("bad kind!", "x", "use letters"), ("k", "(", "bad regular expression"), ("k", "a*", "empty string")],
)
def test_custom_detector_errors(kind: str, pattern: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        custom_detector(kind, pattern)


@pytest.mark.parametrize(
    ("globs", "regexes", "name", "hit"),
    [
        (["tel*"], [], "tel", True),
        (["tel*"], [], "TEL_NO", True),
        (["tel*"], [], "hotel", False),
        (["mid"], [], "mid", True),
        (["mid"], [], "midx", False),
        ([], [r"phone|mobile"], "user_mobile_no", True),
        ([], [r"^mail$"], "email", False),
        (["user_id"], [r"^u_?id$"], "UID", True),
        ([], [], "anything", False),
    ],
)
def test_name_matcher(globs: list[str], regexes: list[str], name: str, hit: bool) -> None:
    assert NameMatcher.compile(globs, regexes).matches(name) is hit


def test_name_matcher_rejects_bad_regex() -> None:
    with pytest.raises(ValueError, match="field-name regex"):
        NameMatcher.compile(regexes=["("])

"""Swap-back of tokens in submitted forms: urlencoded (UTF-8, Shift_JIS), multipart, JSON, tampering."""

# ruff: noqa: RUF001 - full-width digits and look-alike dashes are the test data

from __future__ import annotations

from urllib.parse import parse_qs

import pytest

from guard.pii.forms import MAX_FIELDS, find_tokens, find_tokens_query, swap_back, swap_back_query
from guard.pii.policy import default_policy
from guard.pii.token import format_token, is_token
from tests.test_pii_support import Vault, rewrite

FORM = "application/x-www-form-urlencoded"


@pytest.fixture
def vault() -> Vault:
    return Vault("s1")


def test_token_format() -> None:
    token = format_token(bytes(range(16)))
    assert is_token(token) and len(token) == 26
    assert not is_token(token + "A") and not is_token("pii_" + "A" * 21 + "B")
    with pytest.raises(ValueError):
        format_token(b"short")


def test_urlencoded_utf8(vault: Vault) -> None:
    t1, t2 = vault.tokenize("phone", "090-1234-5678"), vault.tokenize("email", "山田+taro@example.jp")
    body = f"name=%E5%B1%B1%E7%94%B0&tel={t1}&mail={t2}&body=a+b%26c".encode()
    result = swap_back(body, FORM, vault.resolver("s1"))
    assert result.swapped == 2 and result.tampered == () and result.error is None
    assert result.body.startswith(b"name=%E5%B1%B1%E7%94%B0&tel=090-1234-5678&mail=")
    assert result.body.endswith(b"&body=a+b%26c")
    fields = parse_qs(result.body.decode(), keep_blank_values=True)
    assert fields["mail"] == ["山田+taro@example.jp"] and fields["body"] == ["a b&c"]


def test_urlencoded_shift_jis(vault: Vault) -> None:
    token = vault.tokenize("phone", "０９０－１２３４－５６７８")
    body = f"%93d%98b={token}&x=%83%5C".encode()        # 電話 in Shift_JIS
    result = swap_back(body, FORM + "; charset=Shift_JIS", vault.resolver("s1"))
    assert result.swapped == 1
    fields = parse_qs(result.body.decode("ascii"), encoding="cp932")
    assert fields == {"電話": ["０９０－１２３４－５６７８"], "x": ["ソ"]}
    # the page's charset is used when the request does not say
    assert swap_back(body, FORM, vault.resolver("s1"), charset="shift_jis").body == result.body


def test_unencodable_original_is_sent_as_a_character_reference(vault: Vault) -> None:
    token = vault.tokenize("field", "☃")
    result = swap_back(f"a={token}".encode(), FORM, vault.resolver("s1"), charset="shift_jis")
    assert result.body == b"a=%26%239731%3B"


def test_other_sessions_token_is_emptied_and_reported(vault: Vault) -> None:
    token = vault.tokenize("phone", "090-1234-5678")
    body = f"tel={token}&a=1".encode()
    result = swap_back(body, FORM, vault.resolver("s2"))
    assert result.body == b"tel=&a=1"
    assert result.tampered == ("tel",) and result.swapped == 0 and result.changed


def test_resolver_that_raises_fails_closed(vault: Vault) -> None:
    def broken(token: str) -> str | None:
        raise ConnectionError("store down")

    token = vault.tokenize("phone", "x")
    assert swap_back(f"tel={token}".encode(), FORM, broken).body == b"tel="


def test_only_token_shaped_values_are_looked_up() -> None:
    asked: list[str] = []

    def resolve(token: str) -> str | None:
        asked.append(token)
        return None

    body = b"a=pii_notatoken&b=pii_AAAAAAAAAAAAAAAAAAAAAB&c=%70ii&d=" + b"x" * 100
    result = swap_back(body, FORM, resolve)
    assert result.body is body and asked == [] and not result.changed


def test_percent_encoded_token_is_recognised(vault: Vault) -> None:
    token = vault.tokenize("phone", "03-1234-5678")
    body = ("tel=" + token.replace("_", "%5F")).encode()
    assert swap_back(body, FORM, vault.resolver("s1")).body == b"tel=03-1234-5678"


def test_query_string(vault: Vault) -> None:
    token = vault.tokenize("phone", "090-1234-5678")
    result = swap_back_query(f"q=a+b&tel={token}".encode(), vault.resolver("s1"))
    assert result.body == b"q=a+b&tel=090-1234-5678" and result.swapped == 1
    assert swap_back_query(b"q=1", vault.resolver("s1")).body == b"q=1"


def test_find_tokens_for_an_async_vault(vault: Vault) -> None:
    t1, t2 = vault.tokenize("phone", "1"), vault.tokenize("email", "2")
    body = _multipart([("a", t1.encode(), ""), ("b", t2.encode(), ""), ("c", b"pii_x", "")])
    assert find_tokens(body, MULTIPART) == {t1, t2}
    assert find_tokens_query(f"a={t1}&b=2".encode()) == {t1}
    values = {t1: "one"}
    assert swap_back(f"a={t1}".encode(), FORM, values.get).body == b"a=one"


def test_body_without_tokens_costs_nothing() -> None:
    body = b"a=1&b=2"
    assert swap_back(body, FORM, lambda t: None).body is body


def test_too_many_fields_is_refused() -> None:
    body = b"&".join([b"a=pii"] * (MAX_FIELDS + 1))
    result = swap_back(body, FORM, lambda t: None)
    assert result.error == "too-many-fields" and result.body is body


def _multipart(parts: list[tuple[str, bytes, str]], boundary: str = "----WebKitFormBoundaryx7Y") -> bytes:
    out = b""
    for name, value, extra in parts:
        out += f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"{extra}\r\n\r\n".encode()
        out += value + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


MULTIPART = "multipart/form-data; boundary=----WebKitFormBoundaryx7Y"


def test_multipart(vault: Vault) -> None:
    t1, t2 = vault.tokenize("phone", "090-1234-5678"), vault.tokenize("email", "taro@example.jp")
    body = _multipart([("tel", t1.encode(), ""), ("mail", t2.encode(), ""), ("note", b"hello\r\nworld", ""),
                       ("file", t1.encode(), '; filename="t.txt"')])
    result = swap_back(body, MULTIPART, vault.resolver("s1"))
    assert result.swapped == 2
    assert result.body == _multipart([
        ("tel", b"090-1234-5678", ""), ("mail", b"taro@example.jp", ""), ("note", b"hello\r\nworld", ""),
        ("file", t1.encode(), '; filename="t.txt"')])


def test_multipart_tamper_and_part_charset(vault: Vault) -> None:
    mine = vault.tokenize("field", "山田")
    theirs = Vault("s2").tokenize("phone", "x")
    body = _multipart([("a", mine.encode(), ""), ("b", theirs.encode(), "")]).replace(
        b'name="a"', b'name="a"\r\nContent-Type: text/plain; charset=euc-jp')
    result = swap_back(body, MULTIPART, vault.resolver("s1"))
    assert result.tampered == ("b",) and result.swapped == 1
    assert "山田".encode("euc_jp") + b"\r\n" in result.body


def test_multipart_value_containing_the_boundary_is_dropped(vault: Vault) -> None:
    token = vault.tokenize("field", "x\r\n------WebKitFormBoundaryx7Y--")
    result = swap_back(_multipart([("a", token.encode(), "")]), MULTIPART, vault.resolver("s1"))
    assert result.dropped == 1 and result.body == _multipart([("a", b"", "")])


@pytest.mark.parametrize("body", [b"no delimiter pii_", b"------WebKitFormBoundaryx7Y\r\nbroken pii_"])
def test_malformed_multipart_is_left_alone(body: bytes) -> None:
    result = swap_back(body, MULTIPART, lambda t: "x")
    assert result.error == "bad-multipart" and result.body is body


def test_json_request(vault: Vault) -> None:
    token = vault.tokenize("phone", "090-1234-5678")
    body = f'{{"contact": {{"tel": "{token}", "n": 1}}, "list": ["{token}"]}}'.encode()
    result = swap_back(body, "application/json", vault.resolver("s1"))
    assert result.swapped == 2
    assert result.body == b'{"contact":{"tel":"090-1234-5678","n":1},"list":["090-1234-5678"]}'


def test_round_trip_through_the_page(vault: Vault) -> None:
    """The form the browser gets carries tokens; what it submits reaches the upstream with the values."""
    page = (b'<form><input type=hidden name=tel value="090-1234-5678">'
            b"<input type=hidden name=mid value=U4af4980629c2e7f5f6ae1e1cb8d9b3e7></form>")
    out, _ = rewrite(default_policy(), page, vault=vault)
    import re

    fields = dict(re.findall(rb'name=(\w+) value="([^"]+)"', out))
    body = b"&".join(k + b"=" + v for k, v in fields.items())
    result = swap_back(body, FORM, vault.resolver("s1"))
    assert result.body == b"tel=090-1234-5678&mid=U4af4980629c2e7f5f6ae1e1cb8d9b3e7"

"""Policy compilation: CSS subset, selector validation, masks, charset labels and sniffing."""

from __future__ import annotations

import pytest

from guard.pii import charset
from guard.pii.css import CSSSelector
from guard.pii.detect import custom_detector
from guard.pii.mask import Mask, country_code_length
from guard.pii.policy import JSONRule, Mode, Policy, Scope, Selector, default_policy


@pytest.mark.parametrize(
    ("selector", "tag", "attrs", "hit"),
    [
        ("input[type=hidden][name^=tel]", "input", {"type": "HIDDEN", "name": "tel_1"}, True),
        ("input[type=hidden][name^=tel]", "input", {"type": "text", "name": "tel_1"}, False),
        ("[data-user-id]", "li", {"data-user-id": ""}, True),
        ('[name$="_mail"]', "input", {"name": "user_mail"}, True),
        ("[name*=phone i]", "input", {"name": "MyPhone"}, True),
        ("[class~=pii]", "div", {"class": "a pii b"}, True),
        (".pii", "div", {"class": "api"}, False),
        ("#tel", "input", {"id": "tel"}, True),
        ("[lang|=ja]", "p", {"lang": "ja-JP"}, True),
        ("p, input[type='hidden']", "input", {"type": "hidden"}, True),
        ("*[data-x]", "b", {"data-x": "1"}, True),
        ("input", "inputx", {}, False),
    ],
)
def test_css_matching(selector: str, tag: str, attrs: dict[str, str], hit: bool) -> None:
    assert (CSSSelector.parse(selector).matching(tag, attrs) is not None) is hit


@pytest.mark.parametrize(
    ("selector", "message"),
    [("form input", "combinators"), ("a > b", "combinators"), ("input:checked", "pseudo"), ("", "empty"),
     ("*", "every element"), ("[a=b", "syntax"), ("a, ", "empty"), ("[data-x]input", "type must come first")],
)
def test_css_errors(selector: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CSSSelector.parse(selector)


def test_selector_needs_an_attribute_on_non_inputs() -> None:
    with pytest.raises(ValueError, match="selects no attribute"):
        Selector(Mode.MASK, css=CSSSelector.parse("span.who"))
    assert Selector(Mode.MASK, css=CSSSelector.parse("span.who"), attr="Title").attr == "title"


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="unknown detector kind"):
        Policy(selectors=(Selector(Mode.MASK, kinds=frozenset({"ssn"})),))
    with pytest.raises(ValueError, match="unique"):
        Policy(detectors=(custom_detector("a", "x"), custom_detector("a", "y")))
    with pytest.raises(ValueError, match="max_tag_bytes"):
        Policy(max_tag_bytes=10)
    with pytest.raises(ValueError, match="fallback_charset"):
        Policy(fallback_charset="utf-16")
    with pytest.raises(ValueError, match="unknown detector"):
        Policy(json_rules=(JSONRule("/a", Mode.MASK, kinds=frozenset({"nope"})),))
    with pytest.raises(ValueError, match="empty list"):
        Selector(Mode.MASK, kinds=frozenset())


def test_interest_follows_the_selectors() -> None:
    assert default_policy().interest.elements == {b"input"} and not default_policy().interest.attr_prefixes
    pol = Policy(selectors=(Selector(Mode.MASK, scopes=frozenset({Scope.DATA})),
                            Selector(Mode.MASK, css=CSSSelector.parse("[data-uid], td.x[data-y]"))))
    assert pol.interest.attr_prefixes == {b"data-"} and pol.interest.attr_names == {b"data-uid"}
    assert pol.interest.elements == {b"td"}
    assert default_policy().tokenizes and not Policy().tokenizes


@pytest.mark.parametrize(("digits", "length"), [("819012345678", 2), ("15551234567", 1), ("886212345678", 3),
                                                 ("4420", 2), ("66212345", 2), ("85212345678", 3)])
def test_country_code_length(digits: str, length: int) -> None:
    assert country_code_length(digits) == length


def test_mask_validation_and_short_values() -> None:
    with pytest.raises(ValueError):
        Mask(keep_last=-1)
    with pytest.raises(ValueError):
        Mask(char="**")
    assert Mask(keep_last=4, text="?").apply("12345") == "?"       # would reveal almost everything
    assert Mask(keep_last=2, char="#").apply("Taro 03-1234-5678") == "#### ##-####-##78"


@pytest.mark.parametrize(
    ("label", "codec"),
    [("Shift_JIS", "cp932"), ("x-sjis", "cp932"), ("EUC-JP", "euc_jp"), ("utf8", "utf-8"), ("UTF-8", "utf-8"),
     ("iso-8859-1", "cp1252"), ("latin1", "cp1252"), ("ISO-8859-2", "iso8859-2"), ("tis-620", "cp874"),
     ("big5", "cp950"), ("gb2312", "gbk"), ("GB18030", "gb18030"), ("euc-kr", "cp949"), ("koi8-r", "koi8-r"),
     ("'windows-1251'", "cp1251"), ("iso-2022-jp", charset.UNSAFE), ("utf-16le", charset.UNSAFE),
     ("utf-7", charset.UNSAFE), ("cp037", charset.UNSAFE), ("base64", charset.UNSAFE),
     ("rot13", charset.UNSAFE),
     ("nonsense", None), ("", None), (None, None), ("x" * 100, None)],
)
def test_charset_labels(label: str | None, codec: str | None) -> None:
    assert charset.resolve(label) == codec


@pytest.mark.parametrize(
    ("head", "declared", "codec"),
    [
        (b"<meta charset=shift_jis>", None, "cp932"),
        (b'<META HTTP-EQUIV="content-type" CONTENT="text/html;charset=euc-jp">', None, "euc_jp"),
        (b"<meta content='text/html; charset=\"big5\"' http-equiv=Content-Type>", None, "cp950"),
        (b"<meta charset=shift_jis>", "utf-8", "utf-8"),                  # the header wins
        (b"\xef\xbb\xbf<meta charset=shift_jis>", "euc-jp", "utf-8"),     # the BOM wins over all
        (b"<meta charset=utf-16>", None, "utf-8"),
        (b"<meta charset=bogus><meta charset=euc-jp>", None, "euc_jp"),   # an unknown label is passed over
        (b"<p>no declaration</p>", None, None),
        (b"<meta name=x>", "bogus", None),
    ],
)
def test_charset_choice(head: bytes, declared: str | None, codec: str | None) -> None:
    assert charset.choose(head, declared) == codec

"""The streaming HTML rewriter: modes, markup corner cases, byte identity, limits, charsets."""

# ruff: noqa: RUF001, RUF003 - full-width digits and look-alike dashes are the test data

from __future__ import annotations

import re

import pytest

from guard.pii.css import CSSSelector
from guard.pii.detect import NameMatcher
from guard.pii.mask import Mask
from guard.pii.policy import Mode, Policy, Scope, Selector, default_policy
from guard.pii.report import Skip
from guard.pii.rewriter import HTMLRewriter
from guard.pii.token import TOKEN_RE
from tests.test_pii_support import Vault, rewrite

PHONE = "090-1234-5678"
UID = "U4af4980629c2e7f5f6ae1e1cb8d9b3e7"
MAIL = "taro@example.com"
TOKEN_ATTR = re.compile(rb'value="(pii_[A-Za-z0-9_-]{21}[AQgw])"')


def policy(mode: Mode, **kw: object) -> Policy:
    return Policy(selectors=(Selector(mode, **kw),))  # type: ignore[arg-type]


def tokens(out: bytes) -> list[str]:
    return [t.decode() for t in TOKEN_ATTR.findall(out)]


# -- the four modes ------------------------------------------------------------------

def test_tokenize_replaces_value_and_vault_has_it() -> None:
    vault = Vault()
    page = f'<input type="hidden" name="tel" value="{PHONE}">'.encode()
    out, rw = rewrite(default_policy(), page, vault=vault)
    [token] = tokens(out)
    assert out == f'<input type="hidden" name="tel" value="{token}">'.encode()
    assert vault.values[token] == ("s1", "phone", PHONE)
    assert rw.report.actions == {("phone", "tokenize"): 1}
    assert rw.report.changed


def test_remove_drops_the_element() -> None:
    page = f'<p>a</p><input type=hidden name=tel value="{PHONE}"><p>b</p>'.encode()
    out, rw = rewrite(policy(Mode.REMOVE, kinds=frozenset({"phone"})), page)
    assert out == b"<p>a</p><p>b</p>"
    assert rw.report.actions == {("phone", "remove"): 1}


@pytest.mark.parametrize(
    ("mask", "value", "expected"),
    [
        (Mask(), PHONE, ""),
        (Mask(text="(hidden)"), PHONE, "(hidden)"),
        (Mask(keep_last=4), PHONE, "***-****-5678"),
        (Mask(keep_last=4), "+81 90 1234 5678", "+81 ** **** 5678"),
        (Mask(keep_last=4, keep_country_code=False), "+81 90 1234 5678", "+** ** **** 5678"),
        (Mask(keep_last=4, text="x"), MAIL, "x"),
        (Mask(keep_last=4), "０９０－１２３４－５６７８", "***-****-5678"),
    ],
)
def test_mask(mask: Mask, value: str, expected: str) -> None:
    out, _ = rewrite(policy(Mode.MASK, mask=mask), f'<input type=hidden value="{value}">'.encode())
    assert out == f'<input type=hidden value="{expected}">'.encode()


def test_detect_changes_nothing_and_counts_kinds() -> None:
    page = (f'<input type=hidden value="{PHONE}"><input type=hidden value="{MAIL} {PHONE}">'
            f'<input type=hidden value="{UID}"><input type=hidden value="ja">').encode()
    out, rw = rewrite(policy(Mode.DETECT), page)
    assert out == page
    assert rw.report.found == {"phone": 2, "email": 1, "user_id": 1, "field": 1}
    assert not rw.report.changed


def test_first_matching_selector_wins() -> None:
    pol = Policy(selectors=(
        Selector(Mode.REMOVE, names=NameMatcher.compile(["tel*"])),
        Selector(Mode.TOKENIZE, kinds=frozenset({"phone"})),
    ))
    page = f'<input type=hidden name=TEL1 value="{PHONE}"><input type=hidden name=x value="{PHONE}">'
    out, rw = rewrite(pol, page.encode())
    assert out.count(b"<input") == 1 and len(tokens(out)) == 1
    assert rw.report.actions == {("phone", "remove"): 1, ("phone", "tokenize"): 1}


def test_name_selector_labels_unknown_values_with_its_kind() -> None:
    pol = policy(Mode.TOKENIZE, names=NameMatcher.compile(["mid"]), kind="member")
    vault = Vault()
    out, _ = rewrite(pol, b'<input type=hidden name=mid value="A-12">', vault=vault)
    assert vault.values[tokens(out)[0]][1:] == ("member", "A-12")


def test_default_scope_is_hidden_inputs_only() -> None:
    page = f'<input type=text value="{PHONE}"><input value="{MAIL}"><div data-tel="{PHONE}"></div>'.encode()
    out, _ = rewrite(default_policy(), page)
    assert out == page


def test_inputs_and_data_scopes() -> None:
    pol = policy(Mode.TOKENIZE, scopes=frozenset({Scope.INPUTS, Scope.DATA}), kinds=frozenset({"phone"}))
    page = (f'<input type=text value="{PHONE}"><input type=hidden value="{PHONE}">'
            f'<div class=x data-tel="{PHONE}" data-n="3"></div>').encode()
    out, rw = rewrite(pol, page)
    assert out.count(b"pii_") == 2
    assert f'<input type=hidden value="{PHONE}">'.encode() in out      # hidden is not in these scopes
    assert re.search(rb'<div class=x data-tel="pii_[^"]+" data-n="3">', out)
    assert rw.report.actions == {("phone", "tokenize"): 2}


def test_css_remove_drops_an_input_but_only_the_attribute_elsewhere() -> None:
    pol = policy(Mode.REMOVE, css=CSSSelector.parse("input[name=tel], [data-tel]"))
    out, _ = rewrite(pol, b'<p data-tel="1" id=p>x</p><input name=tel value="a"><input name=x value="b">')
    assert out == b'<p id=p>x</p><input name=x value="b">'


def test_css_selectors() -> None:
    pol = Policy(selectors=(
        Selector(Mode.MASK, css=CSSSelector.parse("input[type=hidden][name^=tel]")),
        Selector(Mode.REMOVE, css=CSSSelector.parse("[data-user-id]")),
        Selector(Mode.TOKENIZE, css=CSSSelector.parse("span.who"), attr="title"),
    ))
    page = (b'<input type=HIDDEN name=TEL_1 value="x"><input type=hidden name=x value="y">'
            b'<li data-user-id="42" class=a>u</li><span class="who me" title="Taro">t</span>')
    out, _ = rewrite(pol, page)
    assert out.startswith(b'<input type=HIDDEN name=TEL_1 value=""><input type=hidden name=x value="y">'
                          b"<li class=a>u</li>")
    assert re.search(rb'<span class="who me" title="pii_[^"]+">t</span>$', out)


# -- markup corner cases ---------------------------------------------------------------

@pytest.mark.parametrize(
    "tag",
    [
        f'<input type="hidden" name="tel" value="{PHONE}">',
        f"<input type='hidden' name='tel' value='{PHONE}'>",
        f"<input type=hidden name=tel value={PHONE}>",
        f"<INPUT TYPE=HIDDEN NAME=TEL VALUE={PHONE}>",
        f'<Input Type="Hidden" Value = "{PHONE}" />',
        f'<input\ntype="hidden"\nvalue="{PHONE}"\n>',
        f'<input/type="hidden"/value="{PHONE}">',
        f'<input type="hidden"value="{PHONE}">',
        '<input type=hidden value="090&#45;1234&#x2D;5678">',
        '<input type=hidden value="taro&#64;example.com">',
        '<input type=hidden value="taro&commat;example&period;com">',
        f'<input type=hidden value="{PHONE}" value="{PHONE}">',
        f'<input type=hidden value="" value="{PHONE}">',
        f'<input type=hidden value="ja" VALUE="{MAIL}" value={PHONE}>',
        f'<input type=hidden value="{PHONE}"/>',
        f'<input type=hidden value={PHONE}/>',
        f'<input type="&#104;idden" value="{PHONE}">',   # a browser decodes the reference: hidden
        f'<input type="hid&#100;en" value="{PHONE}">',
        f'<input type="&#x68;&#x69;dden" value="{PHONE}">',
    ],
)
def test_hidden_value_never_survives(tag: str) -> None:
    out, _ = rewrite(default_policy(), f"<td>{tag}</td>".encode())
    text = out.decode()
    for needle in ("1234", "taro", "example"):
        assert needle not in text, text
    assert text.lower().count("value") == 1, "duplicates are dropped"


def test_duplicate_attributes_first_is_replaced_rest_dropped() -> None:
    page = f'<input type=hidden value="{PHONE}" name=a VALUE="{PHONE}" x=1>'.encode()
    out, _ = rewrite(default_policy(), page)
    assert re.fullmatch(rb'<input type=hidden value="pii_[^"]+" name=a x=1>', out), out


def test_slash_inside_unquoted_value_is_part_of_it() -> None:
    # <input/type=hidden/value="..."> has ONE attribute: type='hidden/value="..."' (a text input).
    page = f'<input/type=hidden/value="{PHONE}">'.encode()
    assert rewrite(default_policy(), page)[0] == page


def test_duplicate_type_uses_the_first() -> None:
    page = f'<input type=text type=hidden value="{PHONE}">'.encode()
    assert rewrite(default_policy(), page)[0] == page     # a text input to the browser


@pytest.mark.parametrize(
    "page",
    [
        f"<script>var s = '<input type=hidden value=\"{PHONE}\">';</script>",
        f'<script type="text/template"><input type="hidden" value="{PHONE}"></script>',
        f"<SCRIPT>if (a<b) x = '</scrip' + 't><input type=hidden value={PHONE}>';</SCRIPT>",
        f"<script><!-- <script></script> <input type=hidden value={PHONE}> --></script>",
        f"<style>/* <input type=hidden value={PHONE}> */</style>",
        f"<textarea><input type=hidden value={PHONE}></textarea>",
        f"<title><input type=hidden value={PHONE}></title>",
        f"<xmp><input type=hidden value={PHONE}></xmp>",
        f"<iframe><input type=hidden value={PHONE}></iframe>",
        f"<noembed><input type=hidden value={PHONE}></noembed>",
        f"<noframes><input type=hidden value={PHONE}></noframes>",
        f"<!-- <input type=hidden value={PHONE}> -->",
        f"<!-- a -- <input type=hidden value={PHONE}> --!>",
        f'<div title="<input type=hidden value={PHONE}>"></div>',
        f"<div title='<input type=hidden value={PHONE}>'></div>",
        f"<svg><![CDATA[<input type=hidden value={PHONE}>]]></svg>",
        f"</div title='<input type=hidden value={PHONE}>'>",
        f"<plaintext><input type=hidden value={PHONE}>",
    ],
)
def test_not_a_tag_is_not_rewritten(page: str) -> None:
    data = page.encode()
    assert rewrite(default_policy(), data)[0] == data
    for size in (1, 2, 5):
        assert rewrite(default_policy(), data, chunk=size)[0] == data


@pytest.mark.parametrize(
    "prefix",
    [
        "<script>x = 1;</script>",
        "<script><!-- --></script>",
        "<script><!--<script></script>--></script>",
        "<!---->", "<!-->", "<!--->", "<!-- - -->", "<!DOCTYPE html>", "<?xml version='1.0'?>",
        "<![CDATA[x]]>",
        "</>", "</ div>", "< p>", "<3", "a < b", '<div title="x>y">', "<a b=c\"d>", "<a b='>'>",
        "<textarea></textarea >", "<style></style/>", "<title>x</title\n>",
        "<svg><style/></svg>", "<svg><script/><title/></svg>", "<svg/>", "<math><mi></math>",
        "<svg><p>", "<svg><![CDATA[ ]]></svg>", "<noscript></noscript>", "<template></template>",
    ],
)
def test_real_tag_after_construct_is_rewritten(prefix: str) -> None:
    page = f'{prefix}<input type=hidden value="{PHONE}">'.encode()
    out, _ = rewrite(default_policy(), page)
    assert PHONE.encode() not in out, out
    assert out.startswith(prefix.encode())


def test_svg_style_is_not_raw_text() -> None:
    # In foreign content <style> holds markup: the input after it is an element (an SVG one), but visible.
    page = f'<svg><style><input type=hidden value="{PHONE}"></style></svg>'.encode()
    assert PHONE.encode() not in rewrite(default_policy(), page)[0]


@pytest.mark.parametrize("breakout", ["</p>", "</br>", "</P >"])
def test_end_p_and_br_leave_foreign_content_in_every_chunking(breakout: str) -> None:
    # 13.2.6.5: </p> and </br> in <svg> return to HTML, so the <textarea> after them holds text,
    # and the "input" in it is not a field (a fuzz case once found the unsplit page treated differently).
    page = f'<svg>{breakout}<textarea><input type="hidden" value="{PHONE}">'.encode()
    whole, _ = rewrite(default_policy(), page)
    assert whole == page
    assert all(rewrite(default_policy(), page, chunk=n)[0] == page for n in (1, 3, 8))


# -- byte identity, limits, failures --------------------------------------------------------

def test_untouched_bytes_are_identical() -> None:
    head = "<!DOCTYPE html>\r\n<HTML><body class=a\tid='b'>\n<p>テキスト &amp; &nbsp; \x00 <br/>\n"
    tail = "\n<!-- c --><script>1<2</script><p>é</p></body></HTML>\n"
    page = f'{head}<input type="hidden" name="t" value="{PHONE}">{tail}'.encode()
    out, _ = rewrite(default_policy(), page)
    [token] = tokens(out)
    assert out == page.replace(PHONE.encode(), token.encode())


def test_page_without_candidates_is_unchanged_for_any_chunking() -> None:
    page = ("<html><head><script>var a = '<b>';</script></head><body>" + "<p class=x>text</p>" * 200
            + "</body></html>").encode()
    for size in (None, 1, 7, 64, 1000):
        assert rewrite(default_policy(), page, chunk=size)[0] == page


def test_oversized_tag_passes_through_and_is_counted() -> None:
    pol = Policy(selectors=default_policy().selectors, max_tag_bytes=1024)
    big = f'<input type=hidden value="{PHONE}" data-x="{"a" * 2000}">'.encode()
    page = b"<p>" + big + f'<input type=hidden value="{PHONE}">'.encode()
    for size in (None, 100):
        out, rw = rewrite(pol, page, chunk=size)
        assert out.startswith(b"<p>" + big)
        assert out.count(PHONE.encode()) == 1
        assert rw.report.skipped[Skip.OVERSIZED_TAG] == 1


def test_huge_boring_tag_is_streamed_without_holding() -> None:
    img = b'<img src="data:image/png;base64,' + b"A" * 500_000 + b'">'
    rw = HTMLRewriter(default_policy(), Vault().tokenize, "utf-8")
    sizes = [len(rw.feed(img[i : i + 65536])) for i in range(0, len(img), 65536)]
    assert sum(sizes) + len(rw.close()) == len(img)
    assert max(sizes) > 60_000, "emitted as it streams, not held"


def test_eof_inside_tag_is_still_inspected() -> None:
    out, rw = rewrite(default_policy(), f'<p>x</p><input type=hidden value="{PHONE}'.encode())
    assert PHONE.encode() not in out
    assert rw.report.skipped[Skip.EOF_IN_TAG] == 1


def test_tokenizer_failure_fails_closed() -> None:
    def broken(kind: str, value: str) -> str:
        raise RuntimeError("vault down")

    rw = HTMLRewriter(default_policy(), broken, "utf-8")
    out = rw.feed(f'<input type=hidden value="{PHONE}">'.encode()) + rw.close()
    assert out == b'<input type=hidden value="">'
    assert rw.report.skipped[Skip.TOKENIZER_ERROR] == 1


def test_existing_token_is_not_tokenized_again() -> None:
    token = "pii_" + "A" * 22
    assert TOKEN_RE.fullmatch(token)
    page = f'<input type=hidden name=tel value="{token}">'.encode()
    pol = policy(Mode.TOKENIZE, names=NameMatcher.compile(["tel"]))
    assert rewrite(pol, page)[0] == page


def test_feed_after_close_raises() -> None:
    rw = HTMLRewriter(default_policy())
    rw.close()
    with pytest.raises(RuntimeError):
        rw.feed(b"x")


# -- charsets -----------------------------------------------------------------------------

def _sjis_page(meta: bool) -> bytes:
    head = '<meta http-equiv="Content-Type" content="text/html; charset=Shift_JIS">' if meta else ""
    # ソ (0x83 0x5C) and 表 (0x95 0x5C) end in a backslash byte; ー, ～ and ＠ have ASCII-range trail bytes.
    return (f'<html><head>{head}<title>ソ表～ー</title></head><body><p>電話番号：</p>'
            '<input type="hidden" name="電話" value="０９０－１２３４－５６７８">'
            '<input type="hidden" name="メール" value="ｔａｒｏ＠ｅｘａｍｐｌｅ．ｊｐ">'
            "<p>表示</p></body></html>").encode("cp932")


@pytest.mark.parametrize(("declared", "meta"), [("Shift_JIS", False), (None, True), ("windows-31j", True)])
def test_shift_jis_page(declared: str | None, meta: bool) -> None:
    page = _sjis_page(meta)
    vault = Vault()
    out, rw = rewrite(default_policy(), page, charset=declared, vault=vault)
    assert rw.codec == "cp932"
    originals = sorted(v[2] for v in vault.values.values())
    assert originals == ["０９０－１２３４－５６７８", "ｔａｒｏ＠ｅｘａｍｐｌｅ．ｊｐ"]
    restored = out
    for token, (_, _, value) in vault.values.items():
        restored = restored.replace(token.encode(), value.encode("cp932"))
    assert restored == page


def test_shift_jis_name_selector() -> None:
    pol = policy(Mode.REMOVE, names=NameMatcher.compile(["電話"]))
    out, _ = rewrite(pol, _sjis_page(True), charset=None)
    assert "電話\"".encode("cp932") not in out
    assert "メール".encode("cp932") in out


def test_euc_jp_page() -> None:
    page = ('<meta charset="EUC-JP"><p>連絡先</p>'
            '<input type=hidden name="連絡先" value="０３−１２３４−５６７８">').encode("euc_jp")
    vault = Vault()
    out, rw = rewrite(default_policy(), page, charset=None, vault=vault)
    assert rw.codec == "euc_jp"
    assert next(iter(vault.values.values()))[2] == "０３−１２３４−５６７８"
    assert out.startswith('<meta charset="EUC-JP"><p>連絡先</p>'.encode("euc_jp"))


def test_mask_text_is_encoded_in_page_charset() -> None:
    pol = policy(Mode.MASK, mask=Mask(text="非表示 ☃"))
    out, _ = rewrite(pol, '<input type=hidden value="090-1234-5678">'.encode("cp932"), charset="shift_jis")
    assert out == '<input type=hidden value="非表示 &#9731;">'.encode("cp932")


@pytest.mark.parametrize(
    ("declared", "page"),
    [
        ("iso-2022-jp", b'<input type=hidden value="090-1234-5678">'),
        ("utf-16", b'<input type=hidden value="090-1234-5678">'),
        (None, b'\xff\xfe<\x00i\x00'),
        ("utf-8", b'\xfe\xff\x00<'),
    ],
)
def test_unsupported_charset_passes_through(declared: str | None, page: bytes) -> None:
    out, rw = rewrite(default_policy(), page, charset=declared, chunk=3)
    assert out == page
    assert rw.report.skipped == {Skip.UNSUPPORTED_CHARSET: 1}


def test_latin1_fallback_for_invalid_utf8_values() -> None:
    pol = policy(Mode.TOKENIZE, names=NameMatcher.compile(["n"]))
    vault = Vault()
    rewrite(pol, b'<input type=hidden name=n value="caf\xe9">', charset=None, vault=vault)
    assert next(iter(vault.values.values()))[2] == "café"


def test_meta_inside_comment_is_ignored() -> None:
    page = b'<!-- <meta charset="euc-jp"> --><meta charset="shift_jis"><p>x</p>'
    _, rw = rewrite(default_policy(), page, charset=None)
    assert rw.codec == "cp932"


def test_short_page_without_charset() -> None:
    page = f'<input type=hidden value="{PHONE}">'.encode()
    out, rw = rewrite(default_policy(), page, charset=None, chunk=4)
    assert PHONE.encode() not in out and rw.codec is None


def test_inputs_that_cannot_be_hidden_pass_unparsed_and_unchanged() -> None:
    """The hidden-only policy's prefilter: text, password and checkbox inputs are not even parsed."""
    page = (f'<form><input type="text" name="tel" value="{PHONE}"><input type=password value="{MAIL}">'
            f'<input type=checkbox value="{PHONE}" checked></form>').encode()
    out, _ = rewrite(default_policy(), page)
    assert out == page


def test_each_policy_gets_its_own_patterns_when_they_are_reused() -> None:
    """The scanner's patterns are built once per policy; a reload's new policy is never served old ones."""
    page = b'<input type="text" name="mail" value="taro@example.jp"><input type="hidden" name="id" value="x">'
    hidden_only = Policy(selectors=(Selector(Mode.REMOVE, kinds=frozenset({"email"})),))
    every_input = Policy(selectors=(Selector(Mode.REMOVE, kinds=frozenset({"email"}),
                                             scopes=frozenset({Scope.HIDDEN, Scope.INPUTS})),))
    for _ in range(2):   # the second round reads the cached patterns
        assert rewrite(hidden_only, page)[0] == page   # the e-mail is in a text input: out of scope
        assert b"taro@example.jp" not in rewrite(every_input, page)[0]


def test_eof_inside_a_tag_the_policy_cannot_change_is_not_reported() -> None:
    out, rw = rewrite(default_policy(), b'<p>x</p><a href="/next')
    assert out == b'<p>x</p><a href="/next'
    assert rw.report.skipped[Skip.EOF_IN_TAG] == 0

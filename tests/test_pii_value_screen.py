"""The value screen (``detect.raw_screen``): a hidden input that cannot hold PII is passed on unread.

Under a policy that takes hidden values only by what the detectors find (the shipped
one), the rewriter searches a hidden input's raw bytes for what every built-in
detector needs (an ``@``, eight digits close together, ``U`` + 32 hex) or for what may
decode into it (``&``, any non-ASCII byte).  A screen that said "no" where a detector
says "yes" would leak PII, so the property is checked on generated values in every
ASCII-compatible charset the rewriter reads, and whole pages are rewritten with the
screen and without it.
"""

from __future__ import annotations

import dataclasses
import gzip
import html
import re
from types import SimpleNamespace
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guard.observe.events import NullObserver
from guard.pii.detect import (
    FAST_SCREENS,
    PHONE_SCREEN,
    SCREEN_ANY,
    USER_ID_SCREEN,
    builtin_detectors,
    custom_detector,
    kinds_in,
    raw_screen,
)
from guard.pii.element import TagPolicy
from guard.pii.encoding import decode_whole
from guard.pii.flow import UNREAD_DECODED, Kind, PIIRuntime, Plan
from guard.pii.policy import Mode, Policy, Selector, default_policy
from guard.pii.report import Report
from guard.pii.rewriter import HTMLRewriter, _patterns, untouched
from guard.pii.settings import PIIConfig
from tests.test_pii_detect import EMAILS, PHONES, USER_IDS
from tests.test_pii_props import COMPLETE, JUNK_ALPHABET, hidden_input
from tests.test_pii_support import FUZZ_EXAMPLES

SCREEN = raw_screen(builtin_detectors())
CHARSETS = ["utf-8", "shift_jis", "euc_jp", "cp1252", "iso-8859-1"]
PIECES = [
    "0", "1", "5", "9", "-", " ", ".", "/", "(", ")", "+", "@", "U", "a", "F", "x", "_", "&", ";",
    "&#64;", "&commat;", "&#x30;", "&amp;", "&nbsp;", "\uff10", "\uff19", "\uff20", "\uff0d", "ー", "٣", "太郎", "é",
    "090", "1234", "5678", "+81", "taro", "example.jp", "4af4980629c2e7f5f6ae1e1cb8d9b3e7",
]


@st.composite
def value(draw: st.DrawFn) -> str:
    return "".join(draw(st.lists(st.sampled_from(PIECES), max_size=14)))


def test_a_screen_without_a_fast_test_is_searched_as_its_regex() -> None:
    """The built-in screens have fast tests; any other screen is searched as the regex it is."""
    assert SCREEN is not None and set(FAST_SCREENS) >= {SCREEN_ANY, b"@", PHONE_SCREEN, USER_ID_SCREEN}
    digits = dataclasses.replace(custom_detector("digits", r"[0-9]{8}"), screen=rb"[0-9]{8}")
    only = raw_screen([digits])
    assert only is not None and only.pattern.pattern == SCREEN_ANY + rb"|[0-9]{8}"
    assert only.may_hold(b'<input type=hidden value="12345678">')
    assert only.may_hold(b'<input type=hidden value="a&amp;b">')          # SCREEN_ANY is always in
    assert not only.may_hold(b'<input type=hidden value="1234-5678@x">')   # the other screens are not


RAW_PIECES = [p.encode("utf-8") for p in PIECES] + [b"\xff", b"\x80", b"  ", b"   ", b"    ", b"(", b")", b"-", b"U"]


@settings(max_examples=4000, deadline=None)
@given(st.binary(max_size=80) | st.lists(st.sampled_from(RAW_PIECES), max_size=16).map(b"".join))
def test_each_fast_test_holds_wherever_its_regex_matches(raw: bytes) -> None:
    """The fast tests may say yes more often than their regexes, never less: a "no" is what
    lets a field go unread, so it must never come where the regex (and so a detector) says yes."""
    for pattern, fast in FAST_SCREENS.items():
        if re.search(pattern, raw) is not None:
            assert fast(raw), (pattern, raw)
    assert SCREEN is not None
    if SCREEN.pattern.search(raw) is not None:
        assert SCREEN.may_hold(raw), raw


def test_the_fast_tests_are_exact_on_ordinary_markup() -> None:
    """Looser only where digits sit four or more separators apart."""
    assert SCREEN is not None
    for tag in (b'<input type="hidden" name="__VIEWSTATE" value="dDwtMTA4NzI0NTQ4Mzs7Pj0xqYk2wN1Hn0S8dWcQm6xGmJ3Y">',
                b'<input type="hidden" name="csrf_token" value="6f1c0d9e2b7a4c3f8e5d1a0b9c8d7e6f">',
                b'<input type="hidden" name="returnUrl" value="/app/home.asp">',
                b'<input type=hidden name=d value="2009-01-1">'):
        assert not SCREEN.may_hold(tag), tag
    assert SCREEN.may_hold(b'<input type=hidden value="1234    5678">')   # looser: the regex says no
    assert SCREEN.pattern.search(b'<input type=hidden value="1234    5678">') is None


@settings(max_examples=3000, deadline=None)
@given(raw=value(), charset=st.sampled_from(CHARSETS))
def test_a_value_a_detector_flags_always_passes_the_screen(raw: str, charset: str) -> None:
    assert SCREEN is not None
    try:
        tag = f'<input type="hidden" name="f" value="{raw}">'.encode(charset)
    except UnicodeEncodeError:
        return
    found = kinds_in(html.unescape(raw), builtin_detectors())
    if found:
        assert SCREEN.may_hold(tag), (raw, charset, found)


@pytest.mark.parametrize(
    "raw",
    ["taro@example.jp", "090-1234-5678", "+81 90 1234 5678", "U4af4980629c2e7f5f6ae1e1cb8d9b3e7",
     "taro&#64;example.jp", "\uff10\uff19\uff10\uff0d\uff11\uff12\uff13\uff14\uff0d\uff15\uff16\uff17\uff18", "taro\uff20example.jp"],
)
def test_every_kind_of_pii_is_screened_in(raw: str) -> None:
    """Also every sample the detector tests say is found (below)."""
    assert kinds_in(html.unescape(raw), builtin_detectors())
    assert SCREEN is not None and SCREEN.may_hold(f'<input type=hidden value="{raw}">'.encode())


@pytest.mark.parametrize(
    "raw", ["dDwtMTA4NzI0NTQ4Mzs7Pj0xqYk2wN1Hn0S8dWcQm6xGmJ3Y", "/app/home.asp", "ja", "42", "12:30"],
)
def test_ordinary_state_fields_are_screened_out(raw: str) -> None:
    assert SCREEN is not None and not SCREEN.may_hold(f'<input type=hidden name=s value="{raw}">'.encode())


def test_the_screen_applies_only_where_detectors_decide() -> None:
    assert _patterns(default_policy())[4] is not None
    # a selector without kinds takes any value in its scope: nothing can be ruled out
    assert _patterns(Policy(selectors=(Selector(Mode.TOKENIZE),)))[4] is None
    # a custom pattern has no screen: it may match anything
    custom = Policy(
        selectors=(Selector(Mode.TOKENIZE, kinds=frozenset({"member"})),),
        detectors=(*builtin_detectors(), custom_detector("member", r"M\d{6}")),
    )
    assert _patterns(custom)[4] is None
    # kinds only from detectors with screens: the screen is theirs alone
    only_mail = Policy(selectors=(Selector(Mode.TOKENIZE, kinds=frozenset({"email"})),),
                       detectors=(*builtin_detectors(), custom_detector("member", r"M\d{6}")))
    screen = _patterns(only_mail)[4]
    assert screen is not None and not screen.may_hold(b'<input type=hidden value="M123456">')


def test_screened_out_inputs_are_never_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[bytes] = []
    real = TagPolicy.rewrite

    def counting(self: TagPolicy, tag: bytes, complete: bool = True) -> bytes:
        parsed.append(tag)
        return real(self, tag, complete)

    monkeypatch.setattr(TagPolicy, "rewrite", counting)
    page = (b'<form><input type="hidden" name="__VIEWSTATE" value="dDwtMTA4NzI0NTQ4Mzs7Pj0x">'
            b'<input type="hidden" name="returnUrl" value="/app/home.asp">'
            b'<input type="hidden" name="tel" value="090-1234-5678"></form>')
    rw = HTMLRewriter(default_policy(), lambda kind, v: "pii_" + kind, "utf-8")
    out = rw.feed(page) + rw.close()
    assert b"090-1234-5678" not in out and b"pii_phone" in out
    assert parsed == [b'<input type="hidden" name="tel" value="090-1234-5678">']


ATTRS = ['type="hidden"', "type=HIDDEN", 'type="text"', 'name="tel"', 'name="csrf"', "id=x"]


@st.composite
def page(draw: st.DrawFn) -> str:
    parts = []
    for _ in range(draw(st.integers(1, 8))):
        attrs = draw(st.lists(st.sampled_from(ATTRS), max_size=3))
        raw = draw(value())
        parts.append(draw(st.sampled_from(["<p>text</p>", "<!-- c -->", ""])))
        parts.append("<input " + " ".join([*attrs, f'value="{raw}"']) + ">")
    return "<form>" + "".join(parts) + "</form>"


@settings(max_examples=1000, deadline=None)
@given(doc=page(), charset=st.sampled_from(CHARSETS))
def test_pages_rewrite_the_same_with_and_without_the_screen(doc: str, charset: str) -> None:
    try:
        body = doc.encode(charset)
    except UnicodeEncodeError:
        return
    outs = []
    for screened in (True, False):
        rw = HTMLRewriter(default_policy(), lambda kind, v: "pii_" + kind, charset)
        if not screened:
            rw._value_screen = None
        outs.append((rw.feed(body) + rw.close(), dict(rw.report.actions), dict(rw.report.found)))
    assert outs[0] == outs[1]


@pytest.mark.parametrize("raw", [*PHONES, *EMAILS, *USER_IDS])
def test_every_detector_sample_is_screened_in(raw: str) -> None:
    assert kinds_in(raw, builtin_detectors())
    for charset in CHARSETS:
        try:
            tag = f'<input type="hidden" value="{html.escape(raw)}">'.encode(charset)
        except UnicodeEncodeError:
            continue
        assert SCREEN is not None and SCREEN.may_hold(tag), (raw, charset)


# ---- whole pages passed on unread (``HTMLRewriter.untouched``) ---------------------------------

STATE = ['<input type=hidden name=csrf value="6f1c0d9e2b7a4c3f8e5d1a0b9c8d7e6f">',
         "<input type=hidden name=back value=/app/home.asp>", "<INPUT TYPE=HIDDEN NAME=n VALUE=42>"]
quiet = st.lists(st.sampled_from([*COMPLETE, *STATE, *JUNK_ALPHABET]), min_size=1, max_size=40).map("".join)
loud = st.lists(st.one_of(st.sampled_from([*COMPLETE, *STATE, *JUNK_ALPHABET]), hidden_input()),
                min_size=1, max_size=30).map("".join)


def _full(body: bytes, charset: str | None) -> tuple[bytes, Report]:
    rw = HTMLRewriter(default_policy(), lambda kind, v: "pii_" + kind, charset)
    return rw.feed(body) + rw.close(), rw.report


@settings(max_examples=FUZZ_EXAMPLES, deadline=None)
@given(doc=st.one_of(quiet, loud), charset=st.sampled_from([None, *CHARSETS]))
def test_a_page_passed_on_unread_is_one_the_scan_leaves_unchanged(doc: str, charset: str | None) -> None:
    try:
        body = doc.encode(charset or "utf-8")
    except UnicodeEncodeError:
        return
    if untouched(default_policy(), body, charset):
        out, report = _full(body, charset)
        assert out == body
        assert report == Report()


def test_ordinary_pages_are_passed_on_unread_and_pii_is_not() -> None:
    form = ('<html><head><title>Sign in</title><script>var t = "<input type=hidden value=" + v + ">";</script>'
            '</head><body><form method=post>' + "".join(STATE) +
            '<input type="text" name="user"><input type="password" name="password"></form></body></html>')
    assert untouched(default_policy(), form.encode(), "utf-8")
    assert untouched(default_policy(), b"<p>no form at all</p>", None)
    with_pii = form.replace("</form>", '<input type=hidden name=tel value="090-1234-5678"></form>')
    assert not untouched(default_policy(), with_pii.encode(), "utf-8")
    # a value a detector may flag where the scan would not touch it (a script): read in full all the same
    in_script = form.replace('" + v + "', "a@b.jp")
    assert not untouched(default_policy(), in_script.encode(), "utf-8")
    # doubt of any kind: the scan runs
    assert not untouched(default_policy(), b"<p><input type=hidden value=", "utf-8")
    assert not untouched(default_policy(), "<p>x</p>".encode("utf-16"), "utf-16")
    mask_all = Policy(selectors=(Selector(Mode.MASK),))
    assert not untouched(mask_all, b"<p>x</p>", "utf-8")


# ---- compressed pages (``PIIRuntime.unread``) -----------------------------------------------------


def _runtime(**cfg: object) -> PIIRuntime:
    engine = SimpleNamespace(observer=NullObserver())   # all ``unread`` asks of an engine
    return PIIRuntime(PIIConfig.model_validate(cfg), cast(Any, engine), None)


CLEAN = b"<form><input type=hidden name=back value=/home><input name=q></form>"
DIRTY = CLEAN.replace(b"/home", b"taro@example.jp")


def test_a_compressed_page_is_judged_decoded_and_only_where_its_bytes_can_go_out_as_they_are() -> None:
    pii = _runtime()
    gz = Plan(Kind.HTML, ("gzip",), "utf-8")
    assert pii.unread(gz, gzip.compress(CLEAN), "/p")
    assert not pii.unread(gz, gzip.compress(DIRTY), "/p")
    assert not pii.unread(gz, gzip.compress(CLEAN)[:-9], "/p")           # truncated: the full path reports it
    assert not pii.unread(gz, b"not gzip at all", "/p")
    assert not pii.unread(Plan(Kind.HTML, ("gzip", "gzip"), "utf-8"), gzip.compress(gzip.compress(CLEAN)), "/p")
    assert not _runtime(reencode=False).unread(gz, gzip.compress(CLEAN), "/p")   # it would go out as identity


def test_decoding_to_judge_stops_at_the_bound() -> None:
    bomb = gzip.compress(b"<p>" + b" " * (UNREAD_DECODED + 1))
    assert len(bomb) < 10_000
    assert decode_whole(bomb, "gzip", UNREAD_DECODED) is None
    assert not _runtime().unread(Plan(Kind.HTML, ("gzip",), None), bomb, "/p")
    assert decode_whole(gzip.compress(CLEAN), "gzip", len(CLEAN)) == CLEAN

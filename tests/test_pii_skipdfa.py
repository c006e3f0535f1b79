"""The RE2 form of the fast path stops where the readable ``re`` grammar stops.

``guard.pii.skipdfa`` runs in longest-match mode, so it is right only if its
language is exact; these tests hold it to the backtracking grammar of
``guard.pii.lexer`` (itself held to the browser by the lexbor oracle in
test_pii_props.py): exhaustively for comments, by generated pages for the rest.
"""

from __future__ import annotations

import itertools
import re

import pytest
import re2
from hypothesis import given, settings
from hypothesis import strategies as st

from guard.pii.lexer import _COMMENT, RAWTEXT, RCDATA, TAG_NAME_RE, TAG_RE, Interest, raw_end_pattern, skip_pattern
from guard.pii.skipdfa import COMMENT, SkipDFA, _avoiding, _not_in, _options, skip_dfa, skip_source

DEFAULT = Interest(elements=frozenset({b"input"}))
WIDE = Interest(frozenset({b"input", b"a"}), frozenset({b"data-"}), frozenset({b"value", b"x"}))
INTERESTS = (DEFAULT, WIDE)


COMMENT_RE2 = re2.compile(COMMENT, _options())


def _full(s: bytes, end: int) -> bool:
    """Whether ``s[:end]`` is, as a whole, in the DFA's comment language."""
    return COMMENT_RE2.fullmatch(s[:end]) is not None


def test_comments_end_where_the_tokenizer_ends_them() -> None:
    """Every string of up to 8 bytes over the bytes that matter: the first (and only) end agrees."""
    reference = re.compile(_COMMENT)
    checked = 0
    for n in range(9):
        for tail in itertools.product(b"-!>x", repeat=n):
            s = b"<!--" + bytes(tail)
            ref = reference.match(s)
            ends = [k for k in range(len(s) + 1) if _full(s, k)]
            assert ends == ([ref.end()] if ref else []), s
            checked += 1
    assert checked == sum(4**n for n in range(9))


NEEDLE = re.compile(rb"hidden|&", re.IGNORECASE)   # the rewriter's input needle


def _reference_end(page: bytes, interest: Interest, foreign: bool, plain: bool = False) -> int:
    """Where the reference grammar stops, going on through raw-text elements as the DFA does.

    The ``re`` grammar stops at ``<title>``, ``<style>`` ...: the rewriter's slow path then
    finds the end tag.  The DFA takes a raw-text element whole when the policy does not read
    it (its name, or an attribute of its start tag) and its end tag is in the buffer.  With
    ``plain``, it also passes on an ``<input>`` that the input needle would pass on.
    """
    ref = skip_pattern(interest, foreign)
    pos = 0
    while True:
        end = ref.match(page, pos).end()  # type: ignore[union-attr]
        tag = TAG_RE.match(page, end)
        if tag is None or page[end + 1:end + 2] == b"/":
            return end
        name = TAG_NAME_RE.match(page, end).group(1).lower()  # type: ignore[union-attr]
        if plain and name == b"input" and NEEDLE.search(page, end, tag.end()) is None:
            pos = tag.end()
            continue
        if foreign or name not in RAWTEXT | RCDATA or name in interest.elements:
            return end
        # The same tag under a name the policy does not stop at: do its attributes pass?
        neutral = b"<" + b"q" * len(name) + page[end + 1 + len(name):tag.end()]
        if ref.match(neutral).end() != len(neutral):  # type: ignore[union-attr]
            return end
        closing = raw_end_pattern(name).search(page, tag.end())
        close_tag = TAG_RE.match(page, closing.start()) if closing else None
        if close_tag is None:
            return end
        pos = close_tag.end()


def _agree(page: bytes, interest: Interest, foreign: bool, plain: bool = False) -> None:
    ref = _reference_end(page, interest, foreign, plain)
    got = skip_dfa(interest, foreign, plain).end(page, 0)
    # One documented difference: a run of '<' before a construct that is not complete yet is
    # left to the slow path, which passes each '<' on as text (the re grammar looks ahead).
    assert got == ref or (got < ref and set(page[got:ref]) == {0x3C}), (page, ref, got)


FRAGMENTS = [
    b"<", b">", b"/", b"=", b'"', b"'", b" ", b"\n", b"a", b"b", b"-", b"!", b"?", b"<input", b"<INPUT", b"<inpu",
    b"<inputx", b"<a", b"</a", b"<!--", b"-->", b"--!>", b"<script", b"</", b"<svg", b"<!", b"[CDATA[", b"]]>",
    b"<br", b"</p", b"data-", b"<b", b"x=", b'="', b"='", b"<title", b"<textarea", b"<s", b"<style", b"<![CDATA[",
    b"<<", b"\t", b"value", "あ".encode(), b"\x00", b"\xff", b"<!DOCTYPE", b"<?", b"&",
    b"</title", b"</TITLE>", b"</style", b"</textarea>", b"<xmp>", b"</xmp ", b"<title>", b"<style>",
]


@settings(max_examples=3000, deadline=None)
@given(parts=st.lists(st.sampled_from(FRAGMENTS), max_size=24), interest=st.sampled_from(INTERESTS),
       foreign=st.booleans())
def test_the_dfa_stops_where_the_reference_grammar_stops(parts: list[bytes], interest: Interest,
                                                         foreign: bool) -> None:
    _agree(b"".join(parts), interest, foreign)


PLAIN_FRAGMENTS = [
    b"<input", b"<INPUT ", b" type=", b"hidden", b"HIDDEN", b"hid", b"den", b"h", b"H", b"&", b"&#104;", b'"',
    b"'", b" ", b"=", b">", b"/", b"value=", b"x", b"<a>", b"<!--", b"-->", b"<title>", b"</title>", b"\n",
]


@settings(max_examples=3000, deadline=None)
@given(parts=st.lists(st.sampled_from(PLAIN_FRAGMENTS), max_size=24), foreign=st.booleans())
def test_inputs_that_cannot_be_hidden_pass_as_the_needle_says(parts: list[bytes], foreign: bool) -> None:
    _agree(b"".join(parts), DEFAULT, foreign, plain=True)


@settings(max_examples=1000, deadline=None)
@given(page=st.binary(max_size=64), foreign=st.booleans())
def test_arbitrary_bytes_agree(page: bytes, foreign: bool) -> None:
    _agree(page, DEFAULT, foreign)


@pytest.mark.parametrize("page, stop", [
    # '=' after a bare name and whitespace introduces a value: the quote opens it
    (b'<b x = = "y>"><input type=hidden>', 14),
    # '=' where a name may start is a name: the quote is part of it, the tag ends at '>'
    (b'<b x="1" ="y><input type=hidden value=z>">', 13),
    (b'<b c=c"d><input>', 9),
    (b"<div title='<input>'><input>", 21),
    (b"<!-- <input> --><input>", 16),
    (b"<!--><input>", 5),
    (b"<!---><input>", 6),
    (b"<!--!><input>-->", 16),
    (b"<x y=1><b data-b=2>", 7),     # an attribute the policy reads
    (b"<x y=1><b X=2>", 7),
    (b"<x y=1><A>", 7),              # an element the policy reads
    (b"<x><svg>", 3),
    (b"text<<input>", 4),
    (b"<a href=x", 0),   # incomplete at the end of the buffer: left for the next chunk
    # raw text: taken whole, up to its own end tag and never read as markup
    (b"<title><!--</title><input>-->", 19),
    (b"<textarea><input type=hidden></textarea ><input>", 41),
    (b"<TITLE>a</titlex></Title/><input>", 26),
    (b'<style x="</style>">a<</style><input>', 30),
    (b"<title>not closed yet <input>", 0),
    (b"<x y=1><title data-b=1>t</title>", 7),   # an attribute the policy reads: the slow path sees it
])
def test_hand_picked_stops(page: bytes, stop: int) -> None:
    interest = WIDE if b"<x" in page else DEFAULT
    assert skip_dfa(interest, False).end(page, 0) == stop
    _agree(page, interest, False)


def test_the_complement_of_a_name_set() -> None:
    letters = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    pattern = re.compile(b"(?:%s)\\Z" % _not_in(letters, letters | {0x2D}, words=[b"in", b"input"],
                                                 prefixes=[b"da"]))
    for name, ok in [(b"i", True), (b"in", False), (b"IN", False), (b"inp", True), (b"input", False),
                     (b"inputs", True), (b"d", True), (b"da", False), (b"data-x", False), (b"x", True)]:
        assert (pattern.match(name) is not None) is ok, name


def test_the_public_binding_gives_the_same_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the binding's internals (a compiled pattern with no ``_regexp``), ``match`` is used."""
    source = skip_source(WIDE, False)
    fast = SkipDFA(source)
    compile_ = re2.compile

    class PublicOnly:
        def __init__(self, source: bytes, options: object) -> None:
            self.match = compile_(source, options).match

    monkeypatch.setattr(re2, "compile", PublicOnly)
    public = SkipDFA(source)
    assert public.end.__code__ is not fast.end.__code__   # the other path, really
    for page in (b"<!-- x -->y<a>", b"<b c=d><title>x</title><input>", b"<!-- open", b"text", b""):
        for pos in range(len(page) + 1):
            assert public.end(page, pos) == fast.end(page, pos)


@pytest.mark.parametrize("page, stop", [
    (b'<input type="text" name="user"><input type=hidden value=1>', 31),
    (b'<input type="HIDDEN">', 0),
    (b"<input value='&#104;'>", 0),                  # a reference could spell hidden
    (b'<input name="hid den"><input name="xhiddenx">', 22),
    (b'<input data-x="h"idden>', 23),               # no "hidden" in the bytes: the needle passes it too
    (b'<input type=text hidde n>x', 26),
])
def test_plain_inputs(page: bytes, stop: int) -> None:
    assert skip_dfa(DEFAULT, False, True).end(page, 0) == stop
    _agree(page, DEFAULT, False, plain=True)


def test_runs_avoid_the_word_exactly() -> None:
    """Every string of up to 5 bytes over the bytes that matter, from each partial match."""
    allowed = frozenset(range(256)) - {0x26}
    for matched in (0, 1, 3, 5):
        pattern = re2.compile(b"(?:%s)" % _avoiding(allowed, matched), _options())
        for n in range(6):
            for tail in itertools.product(b"hHiden&x", repeat=n):
                s = bytes(tail)
                ok = b"hidden" not in (b"hidden"[:matched] + s).lower() and b"&" not in s
                assert (pattern.fullmatch(s) is not None) is ok, (matched, s)

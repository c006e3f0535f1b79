"""The rewriter's fast path as an exact regular language, run by RE2's DFA.

Why this exists.  Every HTML page the shipped config sees is scanned, and the
scan is the guard's largest per-request cost: the backtracking grammar in
``guard.pii.lexer`` (Python's ``re``, which tries alternatives and attributes
one by one) skipped the benchmark's 8 KB page in about 100 us.  RE2 (already a
dependency, for rule regexes) compiles a regular language to a DFA that reads
each byte once: the same page in about 20 us.  Neither Python's ``re`` nor any
parser library gives byte offsets at that speed (see ``guard.pii.rewriter``).

Why the grammar is written out again rather than translated.  RE2 has no
lookaround and no possessive quantifiers, which the ``re`` grammar leans on.
More importantly it is run here in *longest-match* mode: ``match`` returns the
longest prefix of the buffer that is in the language, whatever the order of the
alternatives.  That makes the result independent of how the regex is written,
and puts the whole burden on one property: **the language is exact** -- a string
is in it iff the browser's tokenizer reads it as a sequence of whole constructs
the rewriter may pass on.  So each construct is derived from the tokenizer's
state machine (WHATWG 13.2.5) by state elimination:

* no "lazy until" shortcuts (``<!--.*?-->`` would, under longest match, run to
  the *last* ``-->``); comments are segments between ``>`` that do or do not end
  in ``--`` / ``--!``;
* a quote opens a value only after ``=`` reached from an attribute name (a name
  may itself start with ``=``: ``<a x="1" ="y>`` ends at the first ``>``), written
  as the before-attribute-name / attribute-name / after-attribute-name states;
* the tag and attribute names the rewriter must see are excluded by a complement
  built from a trie (``_not_in``), not by a lookahead;
* raw-text elements (``<title>``, ``<style>``, ``<textarea>`` ...) are taken whole,
  start tag through end tag, in HTML content: the ``re`` grammar stopped at each for
  the slow path.  ``<script>`` (with its escape states) and ``<plaintext>`` still stop;
* under a policy that reads hidden inputs only, an ``<input>`` whose bytes hold neither
  "hidden" nor '&' is passed on too (``_plain_input``), as the rewriter's needle would.

Measured with callgrind (instructions, which a noisy VM does not change): the bench
upstream's 8 KB page plus ``bench_html.py``'s 10 KB form cost 3.85 M instructions to
rewrite with the ``re`` grammar, 2.12 M with the DFA, 1.98 M with raw text in it,
1.67 M with plain inputs too (with the element screen of ``guard.pii.element``).

The ``re`` grammar stays in ``guard.pii.lexer`` as the readable reference; the
property tests check that both stop at the same byte on generated pages.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

import re2  # type: ignore[import-untyped]  # google-re2: no type information shipped

from guard.pii.lexer import BREAKOUT, FOREIGN_ROOTS, RAW_ELEMENTS, RAWTEXT, RCDATA, Interest

_WS = frozenset(b"\t\n\f\r ")
_LETTERS = frozenset(range(0x41, 0x5B)) | frozenset(range(0x61, 0x7B))
_ALL = frozenset(range(256))


def _cls(allowed: Iterable[int]) -> bytes:
    """A character class for exactly the bytes in ``allowed`` (negated when that is shorter)."""
    allowed = frozenset(allowed)
    if not allowed:
        raise ValueError("empty character class")
    inside, neg = (allowed, b"") if len(allowed) <= 128 else (_ALL - allowed, b"^")
    return b"[" + neg + b"".join(b"\\x%02x" % c for c in sorted(inside)) + b"]"


def _but(*excluded: bytes | frozenset[int]) -> frozenset[int]:
    out = set(_ALL)
    for e in excluded:
        out -= set(e)
    return frozenset(out)


def _variants(c: int, fold: bool) -> frozenset[int]:
    if fold and c in _LETTERS:
        return frozenset({c | 0x20, c & ~0x20})
    return frozenset({c})


class _Node:
    __slots__ = ("children", "exact", "prefix")

    def __init__(self) -> None:
        self.children: dict[int, _Node] = {}
        self.exact = False    # this string itself is excluded
        self.prefix = False   # this string and everything that extends it are excluded


def _not_in(
    first: frozenset[int], rest: frozenset[int], words: Iterable[bytes] = (), prefixes: Iterable[bytes] = (),
    *, fold: bool = True, empty: bool = False,
) -> bytes:
    """A regex for the strings (first byte in ``first``, then bytes in ``rest``) that are not one of
    ``words`` and do not start with one of ``prefixes``; ASCII case-insensitively when ``fold``.

    The complement of a finite set is regular; walking the trie of the excluded
    strings gives it directly: at each node a string may stop (unless the node is
    an excluded word), go on with a byte that leaves the trie (then anything), or
    follow a trie edge.  ``empty``: the empty string is in the language too.
    """
    root = _Node()
    for word, is_prefix in [(w, False) for w in words] + [(p, True) for p in prefixes]:
        node = root
        for c in word.lower() if fold else word:
            node = node.children.setdefault(c, _Node())
        if is_prefix:
            node.prefix = True
        else:
            node.exact = True
    if root.prefix:
        raise ValueError("an empty prefix excludes everything")
    any_rest = _cls(rest) + b"*"

    def walk(node: _Node, allowed: frozenset[int], depth: int) -> bytes | None:
        if node.prefix:
            return None
        alts: list[bytes] = []
        if (depth > 0 or empty) and not node.exact:
            alts.append(b"")
        taken: set[int] = set()
        for c, child in sorted(node.children.items()):
            variants = _variants(c, fold) & allowed
            taken |= _variants(c, fold)
            if not variants:
                continue
            sub = walk(child, rest, depth + 1)
            if sub is not None:
                alts.append(_cls(variants) + sub)
        leave = allowed - taken
        if leave:
            alts.append(_cls(leave) + any_rest)
        if not alts:
            return None
        return b"(?:" + b"|".join(alts) + b")"

    out = walk(root, first, 0)
    if out is None:
        raise ValueError("no string is left")
    return out


# -- one start or end tag, from the byte after its name (13.2.5.32 onwards) ----------------------
#
# States, after merging the equivalent ones:  B  before an attribute name (also after a
# '/', and after a quoted value);  N  in a name;  A  after a name and whitespace;  V  before
# a value;  U  in an unquoted value.
#   B: ws or '/' -> B;  '>' -> end;  any other byte (even '=' or a quote) starts a name -> N
#   N: ws -> A;  '/' -> B;  '>' -> end;  '=' -> V;  else N
#   A: ws -> A;  '/' -> B;  '>' -> end;  '=' -> V;  else a new name -> N
#   V: ws -> V;  "..." or '...' -> B;  '>' -> end;  else U
#   U: ws -> B;  '>' -> end;  else U

W = _cls(_WS)
_WS_SLASH = _cls(_WS | {0x2F})
_VALUE_TO_B = rb"""%(w)s*(?:"[^"]*"|'[^']*'|%(u0)s%(u)s*%(w)s)""" % {
    b"w": W, b"u0": _cls(_but(_WS, b">\"'")), b"u": _cls(_but(_WS, b">"))}
_VALUE_TO_END = rb"%(w)s*(?:%(u0)s%(u)s*)?" % {b"w": W, b"u0": _cls(_but(_WS, b">\"'")), b"u": _cls(_but(_WS, b">"))}
_NAME_FROM_B = _but(_WS, b"/>")
_NAME_FROM_A = _but(_WS, b"/=>")
_NAME_REST = _but(_WS, b"/>=")


def _tag_rest(
    name_b: bytes, name_a: bytes, value_to_b: bytes = _VALUE_TO_B, value_to_end: bytes = _VALUE_TO_END
) -> bytes:
    """From the byte after a tag's name to its closing '>' (``name_*``: the attribute-name regexes)."""
    after_name = rb"(?:%s+%s)*%s*" % (W, name_a, W)       # N, then (A then a new name)*, then A
    to_b = rb"(?:%s|%s%s(?:/|=%s))" % (_WS_SLASH, name_b, after_name, value_to_b)
    last = rb"(?:%s%s(?:=%s)?)?>" % (name_b, after_name, value_to_end)
    return rb"(?:>|%s%s*%s)" % (_WS_SLASH, to_b, last)


# -- an <input> that cannot be hidden ------------------------------------------------------------
# A policy that reads hidden inputs only passes on every <input> whose bytes hold neither
# "hidden" (any case) nor '&' (a character reference can spell it): the rewriter's
# ``_input_needle``.  "hidden" holds no delimiter, so it can only sit inside one run of an
# attribute name or value: each run below avoids it, and '&' is left out of every class.
# Its first byte does not recur in it, so a mismatch only ever restarts at an 'h'.

def _avoiding(
    cls: frozenset[int], matched: int = 0, *, stem: bytes = b"hidde", stop: frozenset[int] = frozenset(b"nN"),
) -> bytes:
    """Strings over ``cls`` in which ``stem`` (ASCII case-insensitively) is never followed by a
    byte of ``stop``, read after ``matched`` bytes of the stem: by default, no "hidden".

    Raw text uses it too (no "</title" then whitespace, '/' or '>').  The stem's first byte
    must not recur in it, so a mismatch can only restart at that byte: the text is bytes
    other than it, and runs that start with it and break off (by a byte that neither goes on
    with the stem nor restarts it) or are followed by another start.
    """
    w0 = _variants(stem[0], True) & cls
    size = len(stem)

    def grow(i: int) -> bytes:        # the partial of length i goes on, or stops, short of a match
        return rb"(?:%s%s)?" % (_ci(stem[i]), grow(i + 1)) if i < size else b""

    def broken(i: int) -> bytes:      # the partial of length i goes on, then a byte breaks it off
        if i == size:
            return _cls(cls - stop - w0)
        return rb"(?:%s|%s%s)" % (_cls(cls - _variants(stem[i], True) - w0), _ci(stem[i]), broken(i + 1))

    h = _cls(w0)
    free = rb"(?:%s|(?:%s%s)*%s%s)*(?:%s%s)*" % (_cls(cls - w0), h, grow(1), h, broken(1), h, grow(1))
    if matched == 0:
        return free
    at_h = rb"(?:(?:%s%s)*%s%s%s|(?:%s%s)+)" % (h, grow(1), h, broken(1), free, h, grow(1))
    return rb"(?:%s(?:%s)?|%s%s)" % (grow(matched), at_h, broken(matched), free)


def _run(first: frozenset[int], rest: frozenset[int]) -> bytes:
    """A byte of ``first`` then bytes of ``rest``, no "hidden" and no '&' anywhere."""
    first, rest = first - {0x26}, rest - {0x26}
    w0 = _variants(ord("h"), True)
    return rb"(?:%s%s|%s%s)" % (_cls(first - w0), _avoiding(rest), _cls(first & w0), _avoiding(rest, 1))


def _plain_input() -> bytes:
    u0, u = _but(_WS, b">\"'"), _but(_WS, b">")
    unquoted = _run(u0, u)
    dq = b'"' + _avoiding(_but(b'"&')) + b'"'
    sq = b"'" + _avoiding(_but(b"'&")) + b"'"
    to_b = rb"%s*(?:%s|%s|%s%s)" % (W, dq, sq, unquoted, W)
    to_end = rb"%s*(?:%s)?" % (W, unquoted)
    rest = _tag_rest(_run(_NAME_FROM_B, _NAME_REST), _run(_NAME_FROM_A, _NAME_REST), to_b, to_end)
    return b"<" + b"".join(_ci(c) for c in b"input") + rest


def _tag(open_: bytes, tag_name: bytes, name_b: bytes, name_a: bytes) -> bytes:
    return open_ + tag_name + _tag_rest(name_b, name_a)


# -- comments (13.2.5.43 onwards) --------------------------------------------------------------
# A comment ends at the first '>' preceded by '--' or '--!'.  Cut at every '>', the segments
# before the last one do not end in '--' / '--!'; the last one does.  The first segment is
# special: '<!-->' and '<!--->' close at once (the opener's dashes count), but '<!--!>' and
# '<!---!>' do not (the opener's dashes count for nothing else).
_NOT_TERM = rb"(?:(?:[^>]*[^>-])?(?:-|-?!)|[^>]*[^>!-])?"
_FIRST_NOT_TERM = rb"(?:[^>]*[^>!-]|(?:[^>]*[^>-])?-?!|[^>]*[^>-]-)"
_TERM = rb"[^>]*--!?"
COMMENT = rb"<!--(?:-?>|(?:%s>(?:%s>)*)?%s>)" % (_FIRST_NOT_TERM, _NOT_TERM, _TERM)

# -- raw text (13.2.5.2, .3): <title>, <style>, <textarea> ... up to their own end tag -----------
# The text holds no markup until "</name" and then whitespace, '/' or '>' (names compared
# ASCII case-insensitively).  '<' only opens that end tag, so the text is a sequence of
# bytes other than '<' and of '<' + a partial "/name" broken by a byte that does not go on
# with it (nor is a '<', which starts the next try); a partial followed by '<' is whole too.
# The construct runs from the start tag through that end tag, never stopping inside the text:
# a prefix of raw text read as markup would let "<!--" swallow the real end tag.


def _ci(c: int) -> bytes:
    return _cls(_variants(c, True))


def _raw_text(name: bytes) -> bytes:
    return _avoiding(_ALL, stem=b"</" + name, stop=_WS | {0x2F, 0x3E})


def _raw_element(name: bytes, name_b: bytes, name_a: bytes, any_b: bytes, any_a: bytes) -> bytes:
    ci_name = b"".join(_ci(c) for c in name)
    return (b"<" + ci_name + _tag_rest(name_b, name_a) + _raw_text(name)
            + b"</" + ci_name + _tag_rest(any_b, any_a))


_BOGUS = rb"</>|</[^A-Za-z>][^>]*>|<\?[^>]*>"
_LT_TEXT = rb"<[^A-Za-z!/?<]"
"""A '<' that opens nothing: the byte after it is text too."""


def _options() -> re2.Options:
    options = re2.Options()
    options.encoding = re2.Options.Encoding.LATIN1   # bytes are bytes: no UTF-8 decoding in the DFA
    options.longest_match = True
    options.never_capture = True
    options.case_sensitive = True
    # The DFA is built lazily, state by state; this caps its cache (RE2 starts it over when
    # full).  Measured: 1.1 MB for both forms of a wide policy, unchanged after 200,000
    # generated pages, so the cap is only ever a bound.
    options.max_mem = 16 << 20
    return options


@functools.lru_cache(maxsize=64)
def skip_source(interest: Interest, foreign: bool, plain_inputs: bool = False) -> bytes:
    """The fast path's language (see the module docstring); the same stops as ``lexer.skip_pattern``.

    ``plain_inputs``: the policy reads hidden inputs only (the rewriter has an input needle),
    so an ``<input>`` with neither "hidden" nor '&' in it is passed on here too.
    """
    names = set(interest.elements) | set(RAW_ELEMENTS) | set(FOREIGN_ROOTS)
    if foreign:
        names |= BREAKOUT
    tag_name = _not_in(_LETTERS, _NAME_REST | {0x3D}, words=names)   # a tag name may hold '='
    attr_b = _not_in(_NAME_FROM_B, _NAME_REST, words=interest.attr_names, prefixes=interest.attr_prefixes)
    attr_a = _not_in(_NAME_FROM_A, _NAME_REST, words=interest.attr_names, prefixes=interest.attr_prefixes)
    start_tag = _tag(b"<", tag_name, attr_b, attr_a)
    any_b = _cls(_NAME_FROM_B) + _cls(_NAME_REST) + b"*"
    any_a = _cls(_NAME_FROM_A) + _cls(_NAME_REST) + b"*"
    # In foreign content </p> and </br> break out to HTML (13.2.6.5) like </svg>: the slow path must see them.
    end_names = (b"svg", b"math", b"p", b"br") if foreign else ()
    end_tag = _tag(b"</", _not_in(_LETTERS, _NAME_REST | {0x3D}, words=end_names), any_b, any_a)
    not_comment = (b"--", b"[CDATA[") if foreign else (b"--",)
    declaration = b"<!" + _not_in(_but(b">"), _but(b">"), prefixes=not_comment, fold=False, empty=True) + b">"
    # A '<' followed by another '<' is text: every construct may come after a run of them.
    # Raw text exists only in HTML content, and an element the policy reads is its to see.
    raw = [] if foreign else sorted((RAWTEXT | RCDATA) - interest.elements)
    raw_elements = [_raw_element(n, attr_b, attr_a, any_b, any_a) for n in raw]
    constructs = (_LT_TEXT, start_tag, end_tag, _BOGUS, COMMENT, declaration, *raw_elements)
    if plain_inputs and b"input" in interest.elements and not interest.attr_prefixes and not interest.attr_names:
        constructs += (_plain_input(),)
    return rb"(?:[^<]+|<*(?:%s))*" % b"|".join(constructs)


class SkipDFA:
    """``end(buf, pos)``: where the fast path stops.

    The contract of ``lexer.skip_pattern(...).match(buf, pos).end()``, except that a run of
    ``<`` before an incomplete construct is left to the slow path (which passes it on as text).
    """

    __slots__ = ("end",)

    end: Callable[[bytes, int], int]

    def __init__(self, source: bytes) -> None:
        regexp = re2.compile(source, _options())
        # The binding's C++ call, when it has one: its Python ``match`` wraps each call in a
        # generator.  The public one is the fallback for a binding that renames its internals
        # (tests/test_pii_skipdfa.py runs both).
        native = getattr(getattr(regexp, "_regexp", None), "Match", None)
        anchor = getattr(getattr(re2, "_Anchor", None), "ANCHOR_START", None)
        if native is not None and anchor is not None:
            self.end = lambda buf, pos: native(anchor, buf, pos, len(buf))[0][1]
        else:
            public = regexp.match
            self.end = lambda buf, pos: public(buf, pos).end()


@functools.lru_cache(maxsize=16)
def skip_dfa(interest: Interest, foreign: bool, plain_inputs: bool = False) -> SkipDFA:
    return SkipDFA(skip_source(interest, foreign, plain_inputs))

"""The HTML tokenizer's grammar, on bytes: where tags, comments and raw text begin and end.

This module knows nothing of PII.  It answers the one question a faithful
rewriter must get exactly right: *where does this construct end, as a browser
would see it?*  A wrong answer either rewrites text that is not markup (a
``<input`` inside a JavaScript string) or skips markup that is (a hidden field
after a ``<div title="<script>">``).  The rules are those of the WHATWG
tokenizer (13.2.5), restated as regular expressions over bytes:

* a tag ends at the first ``>`` that is not inside a quoted attribute value, and
  a quote opens a value only right after ``=`` (``<a b=c"d>`` has no quoted value);
* end tags (``</div title=">">``) follow the same attribute grammar;
* comments end at ``-->`` or ``--!>``, and ``<!-->`` / ``<!--->`` are complete;
* ``<!...>``, ``<?...>`` and ``</1...>`` are bogus comments ending at the next ``>``;
* ``script``, ``style``, ``textarea``, ``title``, ``xmp``, ``iframe``, ``noembed``
  and ``noframes`` hold raw text until their own end tag (``plaintext`` forever),
  and script text has the ``<!--`` / ``<script`` escape states of the spec;
* inside ``<svg>`` / ``<math>`` none of that raw text exists, but ``<![CDATA[``
  does.  Foreign content is tracked by a depth count that HTML "breakout" tags
  reset: an approximation of the tree builder, which this module does not run.

Every byte that can end or open a construct (``< > " ' = / ! - ?`` and ASCII
whitespace) is below 0x40, so the grammar holds unchanged for UTF-8 and for the
legacy encodings whose multi-byte sequences only use bytes >= 0x40 (Shift_JIS,
EUC-JP, Big5, GBK, EUC-KR): a trail byte can be ``@ [ \\ ] ^ _ ` { | } ~`` or a
letter, never a delimiter (GB18030's four-byte forms add digits, also harmless).
The one marker that can be faked by a trail byte is ``]]>`` (``]`` is 0x5D), which
only ends CDATA inside ``<svg>``/``<math>``: there a Shift_JIS or Big5 character
ending in 0x5D before ``]>`` ends the section early, and the rest of the CDATA
text is read as markup (a contrived case in a legacy-encoded inline SVG).  Tag and attribute names
are compared ASCII case-insensitively, as the spec does.

Two implementations of the tag grammar exist on purpose: a regular expression
for tags that are whole in the buffer (run in C, the fast path), and a small
resumable state machine (``TagMachine``) for tags split across chunks, which
keeps the work linear however the stream is cut.  The property tests check that
both agree by comparing every chunking of a page with the unsplit page.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

WS = rb"\t\n\f\r "
"""ASCII whitespace as the tokenizer sees it (CR is whitespace after newline normalisation)."""

RAWTEXT = frozenset({b"style", b"xmp", b"iframe", b"noembed", b"noframes"})
RCDATA = frozenset({b"textarea", b"title"})
SCRIPT = b"script"
PLAINTEXT = b"plaintext"
RAW_ELEMENTS = RAWTEXT | RCDATA | {SCRIPT, PLAINTEXT}
"""Start tags after which the tokenizer leaves the data state (in HTML content only)."""

FOREIGN_ROOTS = frozenset({b"svg", b"math"})
BREAKOUT = frozenset(
    b"b big blockquote body br center code dd div dl dt em embed font h1 h2 h3 h4 h5 h6 head hr i img "
    b"li listing menu meta nobr ol p pre ruby s small span strong strike sub sup table tt u ul var".split()
)
"""Start tags that end foreign content (13.2.6.5); ``font`` is included whatever its attributes."""

# One attribute: a name (its first byte may be '=' or a quote: parse errors the
# spec tolerates), then either '=' and a value, or no '=' at all.  The negative
# lookahead matters: without it an unclosed quote would let the regex re-read the
# value as more attribute names and find a '>' the browser never sees.
_VALUE = rb"""(?:"[^"]*+"|'[^']*+'|[^%(ws)s>"'][^%(ws)s>]*+|(?=>))""" % {b"ws": WS}
_ATTR_TAIL = rb"(?:[%(ws)s]*+=[%(ws)s]*+%(value)s|(?![%(ws)s]*+=))" % {b"ws": WS, b"value": _VALUE}
_NAME_REST = rb"[^%(ws)s/>=]*+" % {b"ws": WS}


def _attr(exclude: bytes = b"") -> bytes:
    return rb"%s[^%s/>]%s%s" % (exclude, WS, _NAME_REST, _ATTR_TAIL)


def _tag_body(attr: bytes) -> bytes:
    return rb"[^%(ws)s/>]*+(?:[%(ws)s/]++|%(attr)s)*+>" % {b"ws": WS, b"attr": attr}


TAG_RE = re.compile(rb"</?[A-Za-z]" + _tag_body(_attr()))
"""A whole start or end tag at a position (``match``), or no match when it is not complete yet."""

_COMMENT = rb"<!--(?:>|->|(?s:.)*?--!?>)"
_END_TAG = rb"</[A-Za-z]" + _tag_body(_attr())
_BOGUS = rb"</>|</[^A-Za-z>][^>]*+>|<\?[^>]*+>"


def _alternation(words: Iterable[bytes]) -> bytes:
    """A regex for any of ``words``, as a trie (``s(?:cript|tyle|vg)``).

    The stop-name test runs at every tag of the page; factoring common prefixes
    makes the regex engine reject most names after one byte (~15% faster).
    """
    groups: dict[bytes, list[bytes]] = {}
    for w in sorted(set(words)):
        groups.setdefault(w[:1], []).append(w[1:])
    parts = []
    for head, rests in groups.items():
        tails = [r for r in rests if r]
        if not tails:
            parts.append(re.escape(head))
            continue
        inner = _alternation(tails) if len(tails) > 1 else re.escape(tails[0])
        parts.append(re.escape(head) + b"(?:" + inner + b")" + (b"?" if b"" in rests else b""))
    return b"|".join(parts)


@dataclass(frozen=True, slots=True)
class Interest:
    """What makes a start tag worth a closer look, beyond the raw-text openers.

    ``elements``: lower-case tag names (``input``).  ``attr_prefixes``: lower-case
    attribute-name prefixes (``data-``).  ``attr_names``: exact lower-case names.
    """

    elements: frozenset[bytes] = frozenset()
    attr_prefixes: frozenset[bytes] = frozenset()
    attr_names: frozenset[bytes] = frozenset()


@functools.lru_cache(maxsize=64)
def skip_pattern(interest: Interest, foreign: bool) -> re.Pattern[bytes]:
    """The fast path's reference grammar: one ``match`` that consumes every construct the rewriter can pass on as is.

    The rewriter runs the same language as a DFA (``guard.pii.skipdfa``, RE2); this readable
    backtracking form is the oracle its property tests compare against.

    It stops before the first construct that needs the slow path: an interesting
    start tag, a raw-text opener, anything incomplete at the end of the buffer,
    and (in foreign content) CDATA and the tags that change the foreign depth.
    """
    names = set(interest.elements) | set(RAW_ELEMENTS) | set(FOREIGN_ROOTS)
    if foreign:
        names |= BREAKOUT
    stop_names = rb"(?!(?i:%s)[%s/>])" % (_alternation(names), WS)
    attr_stops = [re.escape(p) for p in sorted(interest.attr_prefixes)]
    attr_stops += [re.escape(n) + rb"(?=[%s/>=])" % WS for n in sorted(interest.attr_names)]
    exclude = rb"(?!(?i:%s))" % b"|".join(attr_stops) if attr_stops else b""
    start_tag = b"<" + stop_names + rb"[A-Za-z]" + _tag_body(_attr(exclude))
    # In foreign content </p> and </br> break out to HTML (13.2.6.5) like </svg>: the slow path must see them.
    end_tag = rb"</(?!(?i:svg|math|p|br)[%s/>])" % WS + _END_TAG[2:] if foreign else _END_TAG
    declaration = rb"<!(?!--|\[CDATA\[)[^>]*+>" if foreign else rb"<!(?!--)[^>]*+>"
    text_lt = rb"<(?=[^A-Za-z!/?])"
    alternatives = (rb"[^<]++", text_lt, start_tag, end_tag, _BOGUS, _COMMENT, declaration)
    return re.compile(rb"(?:%s)*+" % b"|".join(alternatives))


def raw_end_pattern(name: bytes) -> re.Pattern[bytes]:
    """The end tag that closes a raw-text element: ``</name`` then whitespace, ``/`` or ``>``."""
    return _raw_end(name.lower())


@functools.lru_cache(maxsize=32)
def _raw_end(name: bytes) -> re.Pattern[bytes]:
    return re.compile(rb"</(?i:%s)(?=[%s/>])" % (re.escape(name), WS))


# Script data (13.2.5.4 onwards): ``<!--`` escapes, ``<script`` inside an escape
# double-escapes, and ``-->`` returns to plain script data from either.
SCRIPT_DATA_RE = re.compile(rb"<!--|</(?i:script)(?=[%s/>])" % WS)
SCRIPT_ESCAPED_RE = re.compile(rb"-->|</(?i:script)(?=[%s/>])|<(?i:script)(?=[%s/>])" % (WS, WS))
SCRIPT_DOUBLE_RE = re.compile(rb"-->|</(?i:script)(?=[%s/>])" % WS)
SCRIPT_TAIL = len(b"</script") + 1
"""Bytes kept back at a chunk end while in script data: a partial ``</script`` plus its terminator."""

COMMENT_END_RE = re.compile(rb"--!?>")

# Attributes of a complete tag, for the slow path.  The closing quote is optional
# so that a tag cut off by the end of the document still yields its last value.
ATTR_RE = re.compile(
    rb"""[%(ws)s/]*+(?P<name>[^%(ws)s/>][^%(ws)s/>=]*+)"""
    rb"""(?:[%(ws)s]*+=[%(ws)s]*+(?:"(?P<dq>[^"]*+)"?|'(?P<sq>[^']*+)'?|(?P<uq>[^%(ws)s>"'][^%(ws)s>]*+))?)?"""
    % {b"ws": WS}
)
TAG_NAME_RE = re.compile(rb"</?([^%s/>]*+)" % WS)


# TagMachine states (13.2.5.8 onwards, with equivalent states merged).
_NAME, _BEFORE_ATTR, _ATTR_NAME, _AFTER_ATTR_NAME, _BEFORE_VALUE, _DQ, _SQ, _UQ = range(8)
_RUN_NAME = re.compile(rb"[^%s/>]*+" % WS)
_RUN_WS = re.compile(rb"[%s]*+" % WS)
_RUN_WS_SLASH = re.compile(rb"[%s/]*+" % WS)
_RUN_ATTR_NAME = re.compile(_NAME_REST)
_RUN_UNQUOTED = re.compile(rb"[^%s>]*+" % WS)
_WS_BYTES = frozenset(WS)
_NAME_KEEP = 32
"""Bytes of a tag name remembered: longer than any name the rewriter compares against."""


class TagMachine:
    """A tag split across chunks: the tokenizer's tag states, resumable at any byte.

    ``advance`` returns the position just past the closing ``>``, or ``None`` when
    the buffer ended first; the next call continues from the saved state, so a
    tag of any size is read once.  The name (first bytes only) is collected
    because whether a tag matters depends on it.
    """

    __slots__ = ("name", "state")

    def __init__(self) -> None:
        self.state = _NAME
        self.name = b""

    def advance(self, buf: bytes, pos: int) -> int | None:
        n = len(buf)
        state = self.state
        while pos < n:
            if state == _NAME:
                end = _RUN_NAME.match(buf, pos).end()  # type: ignore[union-attr]
                if len(self.name) < _NAME_KEEP:
                    self.name += buf[pos:end][: _NAME_KEEP - len(self.name)]
                pos = end
                if pos == n:
                    break
                c = buf[pos]
                pos += 1
                if c == 0x3E:  # >
                    self.state = state
                    return pos
                state = _BEFORE_ATTR  # whitespace or '/' (self-closing: '/x' reconsumes here)
            elif state == _BEFORE_ATTR:
                pos = _RUN_WS_SLASH.match(buf, pos).end()  # type: ignore[union-attr]
                if pos == n:
                    break
                c = buf[pos]
                pos += 1
                if c == 0x3E:
                    self.state = state
                    return pos
                state = _ATTR_NAME  # any other byte, '=' included, starts a name
            elif state == _ATTR_NAME:
                pos = _RUN_ATTR_NAME.match(buf, pos).end()  # type: ignore[union-attr]
                if pos == n:
                    break
                c = buf[pos]
                pos += 1
                if c == 0x3E:
                    self.state = state
                    return pos
                state = _BEFORE_VALUE if c == 0x3D else _BEFORE_ATTR if c == 0x2F else _AFTER_ATTR_NAME
            elif state == _AFTER_ATTR_NAME:
                pos = _RUN_WS.match(buf, pos).end()  # type: ignore[union-attr]
                if pos == n:
                    break
                c = buf[pos]
                pos += 1
                if c == 0x3E:
                    self.state = state
                    return pos
                state = _BEFORE_VALUE if c == 0x3D else _BEFORE_ATTR if c == 0x2F else _ATTR_NAME
            elif state == _BEFORE_VALUE:
                pos = _RUN_WS.match(buf, pos).end()  # type: ignore[union-attr]
                if pos == n:
                    break
                c = buf[pos]
                if c == 0x22:
                    state, pos = _DQ, pos + 1
                elif c == 0x27:
                    state, pos = _SQ, pos + 1
                elif c == 0x3E:
                    self.state = state
                    return pos + 1
                else:
                    state = _UQ
            elif state in (_DQ, _SQ):
                end = buf.find(b'"' if state == _DQ else b"'", pos)
                if end < 0:
                    pos = n
                    break
                state, pos = _BEFORE_ATTR, end + 1
            else:  # _UQ
                pos = _RUN_UNQUOTED.match(buf, pos).end()  # type: ignore[union-attr]
                if pos == n:
                    break
                c = buf[pos]
                pos += 1
                if c == 0x3E:
                    self.state = state
                    return pos
                state = _BEFORE_ATTR
        self.state = state
        return None


def is_self_closing(tag: bytes, last_attr_end: int) -> bool:
    """``<x/>``: the ``/`` is the byte before ``>`` and not the end of an unquoted value."""
    return len(tag) >= 3 and tag[-2:] == b"/>" and last_attr_end < len(tag) - 1

"""The byte-level HTML grammar: tag ends, the resumable tag machine, the fast-path stops."""

from __future__ import annotations

import re

import pytest

from guard.pii.lexer import TAG_RE, Interest, TagMachine, _alternation, skip_pattern

DEFAULT = Interest(elements=frozenset({b"input"}))


@pytest.mark.parametrize(
    ("tag", "end"),
    [
        (b"<a>", 3),
        (b'<a title="x>y">z', 15),
        (b"<a title='x>y'>z", 15),
        (b'<a b=c"d>e"', 9),               # a quote inside an unquoted value is a character
        (b'<a "b=">">', 10),               # an attribute name may start with a quote
        (b"<a =b>", 6),
        (b"<a b==c>", 8),
        (b"<a b= >", 7),
        (b"<a b=>", 6),
        (b"<a/b>", 5),
        (b'<a b="x"c=">">', 14),
        (b"<a b=x/>", 8),
        (b"<A\nB\n=\n'>'\n>", 12),
        (b'</div title=">">', 16),
        (b'<a b="x', None),
        (b"<a b=", None),
        (b"<a b", None),
        (b"<abc", None),
    ],
)
def test_tag_end(tag: bytes, end: int | None) -> None:
    m = TAG_RE.match(tag)
    assert (m.end() if m else None) == end
    for cut in range(2, len(tag) + 1):      # the machine agrees however the tag is cut
        machine = TagMachine()
        got = machine.advance(tag[:cut], 1)
        if got is None:
            got = machine.advance(tag, cut)
        assert got == end, cut


def test_machine_collects_the_name() -> None:
    machine = TagMachine()
    assert machine.advance(b"<inp", 1) is None
    assert machine.advance(b"<input type=hidden>", 4) == 19
    assert machine.name == b"input"


@pytest.mark.parametrize(
    ("page", "stop"),
    [
        (b"text <p class=a>x</p> <!-- c --> <!DOCTYPE html> <?x?> </> <3 <input>", 62),
        (b"<p title='<input>'>", None),
        (b"<div><script>", 5),
        (b"<div><SVG>", 5),
        (b"<p><inp", 3),                  # incomplete: stop before it
        (b"<!-- open", 0),
        (b"<div data-x=1>", None),        # data-* is not interesting to the default policy
    ],
)
def test_fast_path_stops(page: bytes, stop: int | None) -> None:
    end = skip_pattern(DEFAULT, False).match(page).end()  # type: ignore[union-attr]
    assert end == (len(page) if stop is None else stop)


def test_fast_path_stops_at_interesting_attributes() -> None:
    interest = Interest(attr_prefixes=frozenset({b"data-"}), attr_names=frozenset({b"itemprop"}))
    pattern = skip_pattern(interest, False)
    assert pattern.match(b"<p>x<div DATA-uid=1>").end() == 4  # type: ignore[union-attr]
    assert pattern.match(b"<p itemprop=x>").end() == 0  # type: ignore[union-attr]
    assert pattern.match(b"<p itemprops=x>").end() == 15  # type: ignore[union-attr]


def test_foreign_fast_path_stops_at_cdata_and_breakout() -> None:
    pattern = skip_pattern(DEFAULT, True)
    assert pattern.match(b"<g><![CDATA[x]]>").end() == 3  # type: ignore[union-attr]
    assert pattern.match(b"<g><p>").end() == 3  # type: ignore[union-attr]
    assert pattern.match(b"<g></svg>").end() == 3  # type: ignore[union-attr]


def test_alternation_is_an_exact_trie() -> None:
    words = [b"input", b"in", b"script", b"style", b"svg", b"s", b"xmp"]
    pattern = re.compile(b"(?:" + _alternation(words) + rb")\Z")
    assert all(pattern.match(w) for w in words)
    assert not any(pattern.match(w) for w in (b"inp", b"sv", b"scrip", b"x", b"", b"inputs"))

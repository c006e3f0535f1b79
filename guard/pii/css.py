"""A small CSS selector subset that a streaming rewriter can answer from one start tag alone.

Supported: a type (``input``), attribute conditions (``[data-user-id]``,
``[type=hidden]``, ``[name^=tel]`` with ``= ^= $= *= ~= |=``, quoted or bare
values), ``#id`` and ``.class``, and comma-separated lists.  Combinators
(``form input``, ``a > b``) and pseudo-classes are refused with an error naming
the position: they need the element's ancestors or siblings, which a rewriter
that holds only the current tag does not have, and silently ignoring them would
select more (or less) than the operator wrote.

Attribute values are compared ASCII case-insensitively (``[type=HIDDEN]``):
legacy markup is inconsistent about case, and a selector that misses a field
leaks it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_IDENT = r"-?[A-Za-z_][-A-Za-z0-9_]*"
_TOKEN = re.compile(
    rf"""(?P<type>{_IDENT}|\*)|\#(?P<id>-?[-A-Za-z0-9_]+)|\.(?P<cls>{_IDENT})"""
    rf"""|\[\s*(?P<attr>{_IDENT})\s*(?:(?P<op>[\^$*~|]?=)\s*"""
    rf"""(?:"(?P<dq>[^"\\]*)"|'(?P<sq>[^'\\]*)'|(?P<bare>-?[-A-Za-z0-9_]+))\s*(?P<flag>[iIsS])?\s*)?\]"""
)


@dataclass(frozen=True, slots=True)
class AttrCond:
    """One ``[name op value]``; ``op`` is None for bare presence."""

    name: str
    op: str | None = None
    value: str = ""

    def test(self, attrs: Mapping[str, str]) -> bool:
        got = attrs.get(self.name)
        if got is None:
            return False
        if self.op is None:
            return True
        have, want = got.lower(), self.value.lower()
        if self.op == "=":
            return have == want
        if self.op == "^=":
            return bool(want) and have.startswith(want)
        if self.op == "$=":
            return bool(want) and have.endswith(want)
        if self.op == "*=":
            return bool(want) and want in have
        if self.op == "~=":
            return want in have.split()
        return have == want or have.startswith(want + "-")   # |=


@dataclass(frozen=True, slots=True)
class Compound:
    """``type[cond]...``: every part must hold."""

    tag: str | None
    conds: tuple[AttrCond, ...]

    def matches(self, tag: str, attrs: Mapping[str, str]) -> bool:
        return (self.tag is None or self.tag == tag) and all(c.test(attrs) for c in self.conds)

    @property
    def data_attrs(self) -> tuple[str, ...]:
        """The ``data-*`` attributes this compound names: what it selects on elements other than inputs."""
        return tuple(dict.fromkeys(c.name for c in self.conds if c.name.startswith("data-")))


@dataclass(frozen=True, slots=True)
class CSSSelector:
    """A parsed selector list; ``source`` is kept for error messages and logs."""

    source: str
    compounds: tuple[Compound, ...]

    @classmethod
    def parse(cls, source: str) -> CSSSelector:
        compounds = tuple(_compound(part.strip(), source) for part in source.split(","))
        return cls(source, compounds)

    def matching(self, tag: str, attrs: Mapping[str, str]) -> Compound | None:
        """The first compound that matches the element, if any."""
        for c in self.compounds:
            if c.matches(tag, attrs):
                return c
        return None


def _compound(text: str, source: str) -> Compound:
    if not text:
        raise ValueError(f"CSS selector {source!r}: empty selector in the list")
    tag: str | None = None
    conds: list[AttrCond] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            if text[pos] in " >+~:":
                what = "combinators and pseudo-classes are not supported"
            else:
                what = "syntax error"
            raise ValueError(f"CSS selector {source!r}: {what} at {text[pos:pos + 12]!r}")
        if m.group("type") is not None:
            if pos != 0:
                raise ValueError(f"CSS selector {source!r}: a type must come first ({m.group('type')!r})")
            tag = None if m.group("type") == "*" else m.group("type").lower()
        elif m.group("id") is not None:
            conds.append(AttrCond("id", "=", m.group("id")))
        elif m.group("cls") is not None:
            conds.append(AttrCond("class", "~=", m.group("cls")))
        else:
            op = m.group("op")
            value = next((v for v in (m.group("dq"), m.group("sq"), m.group("bare")) if v is not None), "")
            conds.append(AttrCond(m.group("attr").lower(), op, value))
        pos = m.end()
    if tag is None and not conds:
        raise ValueError(f"CSS selector {source!r}: selects every element")
    return Compound(tag, tuple(conds))

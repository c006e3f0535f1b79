"""The compiled PII policy: what to select in a page, and what to do with it.

Plain frozen dataclasses, validated once when built (``ValueError`` naming the
bad value), so request-time code only matches.  The configuration layer maps
its YAML onto these; nothing here reads files.

Selection, per candidate value (an input's ``value``, a ``data-*`` attribute, a
CSS-selected attribute): the selectors are tried in order and the **first** that
applies decides, like firewall rules.  A selector applies when every condition
it has holds:

* ``css``: the element matches (then ``scopes`` is not consulted);
  otherwise the value's scope is in ``scopes`` (``hidden`` inputs by default);
* ``names``: the field name matches (an input's ``name``; for a ``data-*``
  attribute, the attribute's own name);
* ``kinds``: a value detector of one of these kinds finds something.

A selector with no conditions takes every non-empty value in its scopes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from guard.pii import charset
from guard.pii.css import CSSSelector
from guard.pii.detect import EMAIL, PHONE, USER_ID, Detector, NameMatcher, builtin_detectors
from guard.pii.lexer import Interest
from guard.pii.mask import Mask


class Mode(StrEnum):
    REMOVE = "remove"        # the input element (or the data-* attribute) is dropped
    MASK = "mask"            # the value becomes the mask text
    TOKENIZE = "tokenize"    # the value becomes an opaque token, swapped back on submit
    DETECT = "detect"        # nothing changes; the kinds found are counted (the PII audit)


class Scope(StrEnum):
    HIDDEN = "hidden"        # value of <input type=hidden>
    INPUTS = "inputs"        # value of every other <input>
    DATA = "data"            # data-* attributes of any element


DEFAULT_KIND = "field"
"""The kind reported for a value selected by name or CSS that no detector recognises."""


@dataclass(frozen=True, slots=True)
class Selector:
    """One rule: conditions, and the mode applied to what they select."""

    mode: Mode
    names: NameMatcher | None = None
    kinds: frozenset[str] | None = None
    css: CSSSelector | None = None
    scopes: frozenset[Scope] = frozenset({Scope.HIDDEN})
    mask: Mask = field(default_factory=Mask)
    kind: str = DEFAULT_KIND
    attr: str | None = None
    """With ``css``, the attribute treated on elements other than ``input`` (default: the
    ``data-*`` attributes the selector names)."""

    def __post_init__(self) -> None:
        if self.attr is not None:
            object.__setattr__(self, "attr", self.attr.lower())
        if self.css is not None and self.attr is None:
            for c in self.css.compounds:
                if c.tag != "input" and not c.data_attrs:
                    raise ValueError(
                        f"CSS selector {self.css.source!r}: selects no attribute to rewrite on "
                        "elements other than input; name a data-* attribute in it or set attr"
                    )
        if self.kinds is not None and not self.kinds:
            raise ValueError("selector kinds: empty list (omit it to select any value)")

    def targets(self, tag: str, attrs: dict[str, str]) -> tuple[str, ...]:
        """Attributes of this element the CSS selector hands to the mode (empty: no match)."""
        if self.css is None:
            return ()
        compound = self.css.matching(tag, attrs)
        if compound is None:
            return ()
        if tag == "input" and self.attr is None:
            return ("value",)
        return (self.attr,) if self.attr is not None else compound.data_attrs


@dataclass(frozen=True, slots=True)
class JSONRule:
    """A JSON response field by RFC 6901 pointer; ``*`` as a reference token matches every member."""

    pointer: str
    mode: Mode
    kind: str = DEFAULT_KIND
    mask: Mask = field(default_factory=Mask)
    kinds: frozenset[str] | None = None
    tokens: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tokens", parse_pointer(self.pointer))


def parse_pointer(pointer: str) -> tuple[str, ...]:
    """RFC 6901 reference tokens (``~1`` is ``/``, ``~0`` is ``~``); raises ``ValueError`` when malformed."""
    if pointer == "":
        raise ValueError("JSON pointer '': the whole document cannot be a PII field")
    if not pointer.startswith("/"):
        raise ValueError(f"JSON pointer {pointer!r}: must start with '/'")
    out = []
    for raw in pointer[1:].split("/"):
        if "~" in raw.replace("~0", "").replace("~1", ""):
            raise ValueError(f"JSON pointer {pointer!r}: '~' must be followed by 0 or 1")
        out.append(raw.replace("~1", "/").replace("~0", "~"))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Policy:
    """Everything the rewriters need, validated and precompiled."""

    selectors: tuple[Selector, ...] = ()
    detectors: tuple[Detector, ...] = field(default_factory=builtin_detectors)
    json_rules: tuple[JSONRule, ...] = ()
    max_tag_bytes: int = 65_536
    """A start tag longer than this is passed through unchanged (and counted)."""
    fallback_charset: str = "cp1252"
    """For values of pages that declare no charset and are not valid UTF-8."""
    interest: Interest = field(init=False)
    fallback_codec: str = field(init=False)

    def __post_init__(self) -> None:
        kinds = [d.kind for d in self.detectors]
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"detector kinds must be unique (got {kinds})")
        for i, sel in enumerate(self.selectors):
            unknown = sorted((sel.kinds or frozenset()) - set(kinds))
            if unknown:
                raise ValueError(f"selectors[{i}].kinds: unknown detector kind(s) {unknown} (known: {kinds})")
        for rule in self.json_rules:
            unknown = sorted((rule.kinds or frozenset()) - set(kinds))
            if unknown:
                raise ValueError(f"json rule {rule.pointer!r}: unknown detector kind(s) {unknown}")
        if self.max_tag_bytes < 1024:
            raise ValueError(f"max_tag_bytes must be >= 1024 (got {self.max_tag_bytes})")
        codec = charset.resolve(self.fallback_charset)
        if codec is None or codec == charset.UNSAFE:
            raise ValueError(f"fallback_charset {self.fallback_charset!r}: not an ASCII-compatible encoding")
        object.__setattr__(self, "fallback_codec", codec)
        object.__setattr__(self, "interest", _interest(self.selectors))

    @property
    def tokenizes(self) -> bool:
        """Whether any rule may put tokens in a response (so it must not be cached as-is)."""
        return any(s.mode is Mode.TOKENIZE for s in self.selectors) or any(
            r.mode is Mode.TOKENIZE for r in self.json_rules
        )


def _interest(selectors: tuple[Selector, ...]) -> Interest:
    elements: set[bytes] = set()
    prefixes: set[bytes] = set()
    names: set[bytes] = set()
    for sel in selectors:
        if sel.css is None:
            if sel.scopes & {Scope.HIDDEN, Scope.INPUTS}:
                elements.add(b"input")
            if Scope.DATA in sel.scopes:
                prefixes.add(b"data-")
            continue
        for c in sel.css.compounds:
            if c.tag is not None:
                elements.add(c.tag.encode("ascii"))
            else:
                # Every condition must hold, so one attribute's presence is necessary:
                # prefer a data-* one (rarer than class or id).
                chosen = (c.data_attrs or tuple(x.name for x in c.conds))[0]
                names.add(chosen.encode("ascii"))
    return Interest(frozenset(elements), frozenset(prefixes), frozenset(names))


def default_policy() -> Policy:
    """What an operator who changes nothing gets: detected PII in hidden fields is tokenized."""
    return Policy(selectors=(Selector(Mode.TOKENIZE, kinds=frozenset({EMAIL, PHONE, USER_ID})),))

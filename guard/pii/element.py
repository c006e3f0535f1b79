"""Decide and apply the policy to one start tag: the only place page bytes are ever changed.

Input is the tag's bytes exactly as they arrived; output is either the same
object (nothing to do), new bytes, or ``b""`` (the element is removed).  Only
the attributes being changed are re-encoded; the rest of the tag, including
the case and quoting of other attributes, is copied byte for byte.

**Duplicated attributes.**  Browsers use the first ``value=`` and ignore the
rest, but every copy is visible in the page source.  So all copies are
inspected (a PII value in a dead duplicate still selects the element), the
first is replaced, and the later copies are dropped: no copy of the value
survives.

**Entities.**  Values are decoded (``&#64;``, ``&commat;``) before detection, so an
encoded address is still an address.  The decoded text exists only in memory
for the detectors and the vault; it is never logged.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass

from guard.pii.detect import Detector, kinds_in
from guard.pii.lexer import ATTR_RE, TAG_NAME_RE
from guard.pii.policy import Mode, Policy, Scope, Selector
from guard.pii.report import Report, Skip
from guard.pii.token import TOKEN_RE

Tokenizer = Callable[[str, str], str]
"""``tokenizer(kind, value) -> token``: the caller's vault."""


@dataclass(frozen=True, slots=True)
class Where:
    """Where a value being tokenized sits in the page.

    A vault binds a token to the form field it was issued for, so a token moved
    into another field is refused on submit; an audit reports it per field.
    """

    tag: str          # the element's name, lower case
    attr: str         # the attribute holding the value ("value" for an input)
    field: str        # the input's name (what the browser submits the value as), else the attribute's name
    scope: str        # "hidden", "inputs", "data", or "css" (selected by a CSS selector)
    submitted: bool   # the value of an <input>: it comes back in the form as ``field``


FieldTokenizer = Callable[[str, str, Where], str]
"""``tokenizer(kind, value, where) -> token``: a vault that binds tokens to their field."""


@dataclass(slots=True)
class _Attr:
    name: str                 # lower-case, as HTML compares names
    raw_name: bytes           # as written
    start: int                # of the whole match (leading separators included)
    name_start: int
    end: int
    value: bytes | None       # None: no '='


@dataclass(slots=True)
class _Target:
    attr: str
    scope: Scope | None       # None: selected by a CSS selector
    field: str
    input_value: bool = False  # the value of an <input>: "remove" drops the element


class TagPolicy:
    """Applies a ``Policy`` to start tags of one document (one charset, one report)."""

    __slots__ = (
        "_css", "_data", "_inputs", "_scopes", "codec", "field_tokenizer", "policy", "report", "tokenizer",
    )

    def __init__(
        self, policy: Policy, tokenizer: Tokenizer | None, report: Report,
        field_tokenizer: FieldTokenizer | None = None,
    ) -> None:
        self.policy = policy
        self.tokenizer = tokenizer
        self.field_tokenizer = field_tokenizer
        self.report = report
        self.codec: str | None = None   # None: UTF-8 when valid, else the policy's fallback
        self._inputs = b"input" in policy.interest.elements
        self._data = bool(policy.interest.attr_prefixes)
        self._css = tuple(s for s in policy.selectors if s.css is not None)
        self._scopes = frozenset().union(*(s.scopes for s in policy.selectors if s.css is None))

    # -- decoding -------------------------------------------------------------

    def _text(self, raw: bytes) -> str:
        if self.codec is not None:
            return raw.decode(self.codec, "replace")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode(self.policy.fallback_codec, "replace")

    def _value(self, raw: bytes | None) -> str:
        if not raw:
            return ""
        text = self._text(raw)
        return html.unescape(text) if "&" in text else text

    def _encode(self, text: str) -> bytes:
        escaped = text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")
        return escaped.encode(self.codec or "utf-8", "xmlcharrefreplace")

    # -- the decision ----------------------------------------------------------

    def rewrite(self, tag: bytes, complete: bool = True) -> bytes:
        """``tag`` rewritten per the policy (the same object when nothing changes)."""
        name_m = TAG_NAME_RE.match(tag)
        if name_m is None:
            return tag
        tag_name = name_m.group(1).lower().decode("latin-1")
        end = len(tag) - 1 if complete else len(tag)
        screened: tuple[Selector, list[str]] | None = None
        if tag_name == "input" and not self._css and not self._data:
            screened = self._input_screen(tag, name_m.end(), end)
            if screened is None:
                return tag
        attrs = _parse(tag, name_m.end(), end)
        first: dict[str, _Attr] = {}
        for a in attrs:
            first.setdefault(a.name, a)
        scope: Scope | None = None
        if tag_name == "input" and "value" in first and (self._inputs or self._css):
            type_attr = first.get("type")
            # ``type=hidden/>`` makes the type "hidden/" (a text input) to a browser; the author
            # meant hidden, and treating it so can only hide more.
            itype = self._value(type_attr.value).strip().lower().rstrip("/") if type_attr else ""
            scope = Scope.HIDDEN if itype == "hidden" else Scope.INPUTS
            if scope not in self._scopes and not self._css:
                scope = None
        maybe_data = self._data and any(n.startswith("data-") for n in first)
        if scope is None and not maybe_data and not self._css:
            return tag
        values = {n: self._value(a.value) for n, a in first.items()}
        edits: list[tuple[int, int, bytes]] = []
        for t in self._targets(tag_name, first, values, scope, maybe_data):
            copies = [a for a in attrs if a.name == t.attr]
            result = self._decide(tag_name, values, t, copies, screened if t.attr == "value" else None)
            if isinstance(result, _Remove):
                return b""
            if result:
                edits.extend(result)
        if not edits:
            return tag
        edits.sort()
        out = []
        pos = 0
        for start, end, repl in edits:
            out.append(tag[pos:start])
            out.append(repl)
            pos = end
        out.append(tag[pos:])
        return b"".join(out)

    def _targets(
        self, tag_name: str, first: dict[str, _Attr], values: dict[str, str], scope: Scope | None,
        maybe_data: bool,
    ) -> list[_Target]:
        targets: dict[str, _Target] = {}
        if scope is not None:
            targets["value"] = _Target("value", scope, values.get("name", ""), True)
        if maybe_data:
            for n in first:
                if n.startswith("data-"):
                    targets[n] = _Target(n, Scope.DATA, n)
        for sel in self._css:
            for attr in sel.targets(tag_name, values):
                if attr in first and attr not in targets:
                    is_value = tag_name == "input" and attr == "value"
                    field = values.get("name", "") if is_value else attr
                    targets[attr] = _Target(attr, None, field, is_value)
        return list(targets.values())

    def _decide(
        self, tag_name: str, values: dict[str, str], t: _Target, copies: list[_Attr],
        chosen: tuple[Selector, list[str]] | None = None,
    ) -> list[tuple[int, int, bytes]] | _Remove | None:
        texts = [values[t.attr]] + [self._value(c.value) for c in copies[1:]]
        if chosen is None:
            chosen = self._selector(tag_name, values, t, texts)
        if chosen is None:
            return None
        sel, found = chosen
        return self._apply(sel, t, copies, texts[0], found, tag_name)

    def _selector(
        self, tag_name: str, values: dict[str, str], t: _Target, texts: list[str]
    ) -> tuple[Selector, list[str]] | None:
        """The first selector that takes these values (with the kinds found in them), or None."""
        if not any(texts):
            return None
        found: list[str] | None = None
        for sel in self.policy.selectors:
            if sel.css is not None:
                if t.attr not in sel.targets(tag_name, values):
                    continue
            elif t.scope is None or t.scope not in sel.scopes:
                continue
            if sel.names is not None and not sel.names.matches(t.field):
                continue
            if sel.kinds is not None:
                if found is None:
                    found = _kinds(texts, self.policy.detectors)
                if not sel.kinds.intersection(found):
                    continue
            if found is None:
                found = _kinds(texts, self.policy.detectors)
            return sel, found
        return None

    def _input_screen(self, tag: bytes, start: int, end: int) -> tuple[Selector, list[str]] | None:
        """An ``<input>`` under a policy of scopes only (no CSS selector, no ``data-*``): the
        selector that takes its value and the kinds found, or None when none does.

        It decides as the full path does (the first ``type``, the first ``name``, every copy
        of ``value``) from ``findall``'s tuples, without the positions that only a change
        needs.  Most hidden inputs of a page (state, CSRF tokens, flags) hold no PII: for
        them this is the whole cost, 40 % fewer instructions than the full parse (callgrind);
        the ones that change hand their decision on, so their detectors run once.
        """
        if not self._inputs:
            return None
        first: dict[bytes, bytes] = {}
        copies: list[bytes] = []
        for raw_name, dq, sq, uq in ATTR_RE.findall(tag, start, end):
            name = raw_name.lower()
            value = dq or sq or uq
            first.setdefault(name, value)
            if name == b"value":
                copies.append(value)
        if not copies:
            return None
        itype = self._value(first.get(b"type")).strip().lower().rstrip("/")
        scope = Scope.HIDDEN if itype == "hidden" else Scope.INPUTS
        if scope not in self._scopes:
            return None
        target = _Target("value", scope, self._value(first.get(b"name")), True)
        return self._selector("input", {}, target, [self._value(v) for v in copies])

    def _apply(
        self, sel: Selector, t: _Target, copies: list[_Attr], value: str, found: list[str], tag_name: str
    ) -> list[tuple[int, int, bytes]] | _Remove | None:
        relevant = [k for k in found if sel.kinds is None or k in sel.kinds]
        kind = relevant[0] if relevant else sel.kind
        if sel.mode is Mode.DETECT:
            for k in relevant or [sel.kind]:
                self.report.found[k] += 1
            return None
        if sel.mode is Mode.REMOVE and t.input_value:
            self.report.actions[kind, sel.mode.value] += 1
            return _REMOVE
        edits = [(c.start, c.end, b"") for c in copies[1:]]   # dead duplicates go in every mode
        first = copies[0]
        if sel.mode is Mode.REMOVE:
            edits.append((first.start, first.end, b""))
        elif sel.mode is Mode.MASK:
            edits.append((first.name_start, first.end, self._assign(first, sel.mask.apply(value))))
        elif value and TOKEN_RE.fullmatch(value) is None:
            token = tokenize(self._tokenizer_for(t, tag_name), kind, value, self.report)
            edits.append((first.name_start, first.end, self._assign(first, token)))
        elif value:
            return edits or None       # already a token: only the duplicates go
        self.report.actions[kind, sel.mode.value] += 1
        return edits

    def _tokenizer_for(self, t: _Target, tag_name: str) -> Tokenizer | None:
        """The plain tokenizer, or the field-aware one told where this value sits."""
        field_tokenizer = self.field_tokenizer
        if field_tokenizer is None:
            return self.tokenizer
        scope = t.scope.value if t.scope is not None else "css"
        where = Where(tag_name, t.attr, t.field, scope, t.input_value)
        return lambda kind, value: field_tokenizer(kind, value, where)

    def _assign(self, attr: _Attr, text: str) -> bytes:
        return attr.raw_name + b'="' + self._encode(text) + b'"'


def tokenize(tokenizer: Tokenizer | None, kind: str, value: str, report: Report) -> str:
    """The vault's token for ``value``, or "" when it fails: fail closed, never the value itself."""
    if tokenizer is not None:
        try:
            token = tokenizer(kind, value)
        except Exception:
            token = None
        if isinstance(token, str):
            return token
    report.skipped[Skip.TOKENIZER_ERROR] += 1
    return ""


class _Remove:
    """The decision to drop the whole element."""


_REMOVE = _Remove()


def _kinds(texts: list[str], detectors: tuple[Detector, ...]) -> list[str]:
    out: list[str] = []
    for text in texts:
        if text:
            for k in kinds_in(text, detectors):
                if k not in out:
                    out.append(k)
    return out


def _parse(tag: bytes, start: int, end: int) -> list[_Attr]:
    attrs = []
    for m in ATTR_RE.finditer(tag, start, end):
        raw_name = m.group("name")
        value = m.group("dq")
        if value is None:
            value = m.group("sq")
        if value is None:
            value = m.group("uq")
        if value is None and m.group().find(b"=", m.end("name") - m.start()) >= 0:
            value = b""
        attrs.append(_Attr(raw_name.lower().decode("latin-1"), raw_name, m.start(), m.start("name"),
                           m.end(), value))
    return attrs

"""The ``pii:`` section of guard.yaml: validated once, frozen, unknown keys rejected, compiled to a Policy.

The default is the incident's fix with no configuration at all: every value in a
hidden field of every HTML response that a detector recognises (e-mail, phone
number, LINE-style user id), whatever the field is called, becomes a token that
the guard swaps back when the form is submitted.  An operator narrows or widens
that with ``fields`` (by name, by CSS selector, in other inputs or ``data-*``
attributes), ``paths`` and ``json``; ``detect: true`` turns everything into an
audit that changes nothing and only counts.

Each field's description says what it protects against, so whoever loosens it
knows the trade.  ``to_policy`` compiles the section into ``guard.pii.Policy``;
it runs in the validator too, so every mistake is reported at load time with
its location, never at request time.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from guard.pii import charset as charsets
from guard.pii.css import CSSSelector
from guard.pii.detect import NameMatcher, builtin_detectors, custom_detector
from guard.pii.json import MAX_JSON_BYTES
from guard.pii.mask import Mask
from guard.pii.policy import DEFAULT_KIND, JSONRule, Mode, Policy, Scope, Selector, parse_pointer
from guard.units import ByteSize, Duration

BUILTIN_KINDS: tuple[str, ...] = tuple(d.kind for d in builtin_detectors())


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {value!r}: {exc}") from None
    return value


def _css(value: str) -> str:
    CSSSelector.parse(value)   # raises ValueError naming the position
    return value


def _path_glob(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"a path pattern starts with '/' (got {value!r})")
    return value


def _charset(value: str) -> str:
    codec = charsets.resolve(value)
    if codec is None or codec == charsets.UNSAFE:
        raise ValueError(f"{value!r} is not an ASCII-compatible encoding (cp1252, shift_jis, euc-jp, ...)")
    return value


def _pointer(value: str) -> str:
    parse_pointer(value)
    return value


Regex = Annotated[str, AfterValidator(_regex)]
CSS = Annotated[str, AfterValidator(_css)]
PathGlob = Annotated[str, AfterValidator(_path_glob)]
Charset = Annotated[str, AfterValidator(_charset)]
Pointer = Annotated[str, AfterValidator(_pointer)]


class MaskConfig(_Model):
    """What ``mode: mask`` writes instead of the value."""

    text: str = Field("", description="the replacement (empty: the field stays, with no value)")
    keep_last: int = Field(
        0, ge=0, le=8,
        description="keep this many last digits of a value with digits (+81 **-****-5678), for support "
        "staff who must recognise a number; never leaves fewer than 4 digits hidden",
    )

    def compile(self) -> Mask:
        return Mask(text=self.text, keep_last=self.keep_last)


class DetectorConfig(_Model):
    """A custom value detector: a regular expression searched in every candidate value."""

    kind: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$", description="the name reported in metrics and audits")
    pattern: Regex = Field(description="searched (not anchored) in the value, e.g. 'M\\d{8}'")
    ignore_case: bool = False

    @model_validator(mode="after")
    def _compiles(self) -> DetectorConfig:
        if self.kind in BUILTIN_KINDS:
            raise ValueError(f"kind {self.kind!r} is a built-in detector; choose another name")
        custom_detector(self.kind, self.pattern, ignore_case=self.ignore_case)
        return self


class FieldRule(_Model):
    """A rule tried before the default one; the first rule whose conditions all hold decides.

    Conditions: ``names``/``name_regex`` (the input's name, or a ``data-*``
    attribute's own name), ``kinds`` (a detector recognises the value), ``css``.
    A rule with no condition takes every non-empty value in its scopes.
    """

    mode: Mode = Field(description="remove | mask | tokenize | detect")
    names: tuple[str, ...] = Field((), description="globs on the field name, case-insensitive: tel*, mid")
    name_regex: tuple[Regex, ...] = Field((), description="regular expressions searched in the field name")
    kinds: tuple[str, ...] | None = Field(
        None, description="only values a detector of these kinds recognises (default: any value)"
    )
    css: CSS | None = Field(
        None, description="a CSS selector (type, #id, .class, [attr op value]); then scopes are not used"
    )
    attr: str | None = Field(
        None, pattern=r"^[A-Za-z_:][-A-Za-z0-9_:.]*$",
        description="with css: the attribute to treat on elements other than input",
    )
    scopes: tuple[Scope, ...] = Field(
        (Scope.HIDDEN,), min_length=1,
        description="hidden | inputs (other inputs' value) | data (data-* attributes)",
    )
    kind: str = Field(DEFAULT_KIND, description="reported for a value no detector recognises")
    mask: MaskConfig = MaskConfig()

    def compile(self) -> Selector:
        matcher = NameMatcher.compile(self.names, self.name_regex) if self.names or self.name_regex else None
        return Selector(
            self.mode,
            names=matcher,
            kinds=frozenset(self.kinds) if self.kinds is not None else None,
            css=CSSSelector.parse(self.css) if self.css is not None else None,
            scopes=frozenset(self.scopes),
            mask=self.mask.compile(),
            kind=self.kind,
            attr=self.attr,
        )

    @model_validator(mode="after")
    def _compiles(self) -> FieldRule:
        self.compile()   # NameMatcher, CSS and Selector checks raise ValueError with the bad value
        return self


class JSONField(_Model):
    """A field of JSON responses, by RFC 6901 pointer (``*`` matches every member: /users/*/phone)."""

    pointer: Pointer
    mode: Mode = Mode.TOKENIZE
    kinds: tuple[str, ...] | None = Field(
        None, description="only values a detector of these kinds recognises"
    )
    kind: str = DEFAULT_KIND
    mask: MaskConfig = MaskConfig()

    def compile(self) -> JSONRule:
        kinds = frozenset(self.kinds) if self.kinds is not None else None
        return JSONRule(self.pointer, self.mode, self.kind, self.mask.compile(), kinds)


class PathsConfig(_Model):
    """Which responses are rewritten, by path glob (``*`` crosses ``/``), matched on the normalised path."""

    include: tuple[PathGlob, ...] = Field(
        (), description="only these paths (empty: every HTML response, and every JSON one with json rules)"
    )
    exclude: tuple[PathGlob, ...] = Field(
        (),
        description="never these paths (wins over include); requests elsewhere lose Range/If-Range, "
        "since a byte range of a page cannot be rewritten",
    )
    submit_exclude: tuple[PathGlob, ...] = Field(
        (),
        description="submissions to these paths are never buffered for token swap-back (large uploads): "
        "tokens in them reach the upstream as tokens",
    )


def glob_matcher(globs: tuple[str, ...]) -> re.Pattern[str] | None:
    """One compiled pattern for a list of path globs (None: the list is empty)."""
    if not globs:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in globs))


class PIIConfig(_Model):
    """PII in responses: hide it in hidden fields (and wherever configured), swap tokens back on submit."""

    enabled: bool = Field(
        True, description="false: responses and submissions pass untouched (the incident's exposure stays)"
    )
    mode: Mode = Field(
        Mode.TOKENIZE,
        description="the default rule, for detected PII in hidden fields: tokenize keeps the form working; "
        "remove and mask break forms that need the value back; detect only counts",
    )
    kinds: tuple[str, ...] | None = Field(
        None,
        description="the detectors the default rule uses (default: all, built-in and custom; [] turns the "
        "default rule off)",
    )
    scopes: tuple[Scope, ...] = Field(
        (Scope.HIDDEN,), min_length=1,
        description="where the default rule looks: hidden, inputs (other inputs' value), data (data-*)",
    )
    mask: MaskConfig = Field(MaskConfig(), description="the default rule's mask, with mode: mask")
    fields: tuple[FieldRule, ...] = Field((), description="rules tried in order before the default rule")
    detectors: tuple[DetectorConfig, ...] = Field(
        (), description="custom value detectors, besides the built-ins"
    )
    paths: PathsConfig = PathsConfig()
    json_fields: tuple[JSONField, ...] = Field(
        (), alias="json", description="fields of JSON responses to treat, by JSON pointer"
    )
    max_json_size: ByteSize = Field(
        1024 * 1024, ge=1024, le=MAX_JSON_BYTES,
        description="JSON responses are buffered to be rewritten; larger ones pass unchanged (counted)",
    )
    token_ttl: Duration = Field(
        3600.0, ge=60, le=7 * 86400,
        description="how long a token can be swapped back: a form left open longer submits empty fields",
    )
    max_tokens_per_page: int = Field(
        500, ge=1, le=100_000,
        description="tokens one response may create (store writes); values past it are emptied, never shown",
    )
    fallback_charset: Charset = Field(
        "cp1252", description="for pages that declare no charset and are not valid UTF-8"
    )
    reencode: bool = Field(
        True, description="re-compress rewritten gzip/deflate/br bodies (false: send identity, less CPU)"
    )
    detect: bool = Field(
        False,
        description="audit mode: nothing is rewritten; the kinds found are counted per path in metrics and "
        "the decision log",
    )

    @model_validator(mode="after")
    def _compiles(self) -> PIIConfig:
        kinds = {*BUILTIN_KINDS, *(d.kind for d in self.detectors)}
        if len(kinds) != len(BUILTIN_KINDS) + len(self.detectors):
            raise ValueError("detectors: the same kind is defined twice")
        for where, wanted in (
            ("kinds", self.kinds),
            *((f"fields[{i}].kinds", f.kinds) for i, f in enumerate(self.fields)),
            *((f"json[{i}].kinds", j.kinds) for i, j in enumerate(self.json_fields)),
        ):
            unknown = sorted(set(wanted or ()) - kinds)
            if unknown:
                raise ValueError(f"{where}: unknown detector kind(s) {unknown} (known: {sorted(kinds)})")
        if self.kinds == () and not self.fields and not self.json_fields and self.enabled:
            raise ValueError("kinds: [] turns the default rule off, and no fields or json rules are left")
        self.to_policy()   # Policy's own checks (fallback charset...) at load time
        return self

    def to_policy(self) -> Policy:
        """The compiled policy: ``fields``, then the default rule; every mode becomes detect in audit mode."""

        def mode(m: Mode) -> Mode:
            return Mode.DETECT if self.detect else m

        detectors = (
            *builtin_detectors(),
            *(custom_detector(d.kind, d.pattern, ignore_case=d.ignore_case) for d in self.detectors),
        )
        selectors = [_with_mode(f.compile(), mode(f.mode)) for f in self.fields]
        kinds = self.kinds if self.kinds is not None else tuple(d.kind for d in detectors)
        if kinds:
            default = Selector(
                mode(self.mode), kinds=frozenset(kinds), scopes=frozenset(self.scopes),
                mask=self.mask.compile(),
            )
            selectors.append(default)
        rules = tuple(_with_json_mode(j.compile(), mode(j.mode)) for j in self.json_fields)
        return Policy(
            selectors=tuple(selectors), detectors=detectors, json_rules=rules,
            fallback_charset=self.fallback_charset,
        )


def _with_mode(sel: Selector, mode: Mode) -> Selector:
    if sel.mode is mode:
        return sel
    return Selector(mode, sel.names, sel.kinds, sel.css, sel.scopes, sel.mask, sel.kind, sel.attr)


def _with_json_mode(rule: JSONRule, mode: Mode) -> JSONRule:
    if rule.mode is mode:
        return rule
    return JSONRule(rule.pointer, mode, rule.kind, rule.mask, rule.kinds)


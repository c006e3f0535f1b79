"""Value detectors (is this an e-mail, a phone number, a LINE user id?) and field-name matchers.

Detectors decide on *values*, whatever the field is called: the incident's form
named its fields after the service's internals, and a default that relied on
names would have missed them.  So the built-in detectors must be precise.  The
false positives that matter in hidden fields are dates, times, prices, order
and invoice numbers, postal codes, timestamps and version strings; every
phone pattern therefore needs either a ``+`` country code, a leading trunk ``0``
with a plausible digit count and grouping, or the North American shape, and a
number glued to other digits, dots or letters is not a phone number.

Values are normalised before matching (NFKC, so full-width digits, hyphen and
at sign, U+FF10-FF19, U+FF0D and U+FF20, match; dash look-alikes such as U+2010
HYPHEN, U+2212 MINUS and U+30FC KATAKANA PROLONGED SOUND MARK become ``-``;
other scripts' decimal digits become ASCII) and only the first ``MAX_SCAN``
characters are read, which bounds the work per value for built-in and custom
patterns alike.
"""

from __future__ import annotations

import fnmatch
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

EMAIL = "email"
PHONE = "phone"
USER_ID = "user_id"
MAX_SCAN = 16_384
"""Characters of a value the detectors read (a 100 KB ``__VIEWSTATE`` is not scanned whole)."""

_DASHES = "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\u30fc\u2500\uff70"


def _translation() -> dict[int, int]:
    table = {ord(c): ord("-") for c in _DASHES}
    for cp in range(0x80, 0x10000):
        d = unicodedata.decimal(chr(cp), None)
        if d is not None:
            table[cp] = ord("0") + d
    return table


_TABLE = _translation()


def normalize(value: str) -> str:
    """The form detectors read: bounded, NFKC, ASCII digits and dashes."""
    value = value[:MAX_SCAN]
    if value.isascii():
        return value
    return unicodedata.normalize("NFKC", value).translate(_TABLE)


class Detector(Protocol):
    """Tells whether a normalised value contains one kind of PII."""

    @property
    def kind(self) -> str: ...

    def search(self, text: str) -> bool: ...


SCREEN_ANY = rb"[&\x80-\xff]"
"""Raw bytes that defeat every screen: a character reference or a non-ASCII byte may decode
or normalise (NFKC) to anything a detector reads, in any charset the rewriter accepts."""


def raw_screen(detectors: Iterable[Detector]) -> RawScreen | None:
    """What the raw markup of every value in which one of ``detectors`` finds something
    holds; None when a detector has no ``screen`` (custom patterns: anything may match).

    Why.  Most hidden fields of a page (CSRF tokens, view state, return URLs) hold no PII, and
    decoding and detecting each one costs more than the rest of the page's scan.  A value
    that is pure ASCII with no ``&`` reaches the detectors unchanged (no entity, and NFKC and
    the digit table leave ASCII alone), so the detectors' own necessary conditions, read on
    the bytes, rule it out at the cost of one search.  Searching a whole tag is safe: it holds
    every value it carries, and the extra bytes can only add matches.
    """
    parts = [SCREEN_ANY]
    for d in detectors:
        screen: bytes | None = getattr(d, "screen", None)
        if screen is None:
            return None
        parts.append(screen)
    return RawScreen(parts)


class RawScreen:
    """The screens of some detectors, and ``SCREEN_ANY``: ``may_hold(raw)`` is True when any matches.

    Each screen is a regex (``pattern`` is their alternation, the documented contract), but
    ``re`` tests a byte class at some 60 instructions a byte: on the bench page's three hidden
    fields the alternation cost 78,000 instructions, a third of what deciding the whole page
    cost.  So the built-in screens are tested with what CPython does at memchr speed
    (``FAST_SCREENS``: ``in``, ``isascii``, one ``translate``), each true wherever its regex
    matches, and sometimes where it does not (which only sends a field to the full scan).
    Any other screen is searched as a regex.
    """

    __slots__ = ("_tests", "pattern")

    def __init__(self, parts: list[bytes]) -> None:
        self.pattern = re.compile(b"|".join(parts))
        tests: list[Callable[[bytes], bool]] = []
        for part in dict.fromkeys(parts):   # in order, once each
            fast = FAST_SCREENS.get(part)
            tests.append(fast if fast is not None else _regex_test(re.compile(part)))
        self._tests = tuple(tests)

    def may_hold(self, raw: bytes) -> bool:
        """Whether ``raw`` (a tag, with every value in it) may hold a value a detector flags."""
        for test in self._tests:
            if test(raw):
                return True
        return False


def _regex_test(pattern: re.Pattern[bytes]) -> Callable[[bytes], bool]:
    return lambda raw: pattern.search(raw) is not None


PHONE_SCREEN = rb"[0-9](?:[-. /()]{0,3}[0-9]){7}"
"""Eight digits with only separators between them (``PhoneDetector.screen``)."""
USER_ID_SCREEN = rb"U[0-9a-fA-F]{32}"

# Digits become "0", every other byte "x", and the phone separators are deleted: where
# ``PHONE_SCREEN`` matches, eight zeros follow each other (it is looser only for digits
# four or more separators apart).
_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= b <= 0x39 else 0x78 for b in range(256))
_PHONE_SEPARATORS = b"-. /()"
_USER_ID = re.compile(USER_ID_SCREEN)

# A byte is looked for as an int (``0x40 in raw``): CPython 3.11 reads ``b"@" in raw`` as an
# integer first and pays for the TypeError (2,300 instructions on a 100-byte tag, against 400).
FAST_SCREENS: dict[bytes, Callable[[bytes], bool]] = {
    SCREEN_ANY: lambda raw: 0x26 in raw or not raw.isascii(),   # '&'
    b"@": lambda raw: 0x40 in raw,
    PHONE_SCREEN: lambda raw: raw.translate(_DIGITS_AS_ZERO, _PHONE_SEPARATORS).find(b"00000000") >= 0,
    USER_ID_SCREEN: lambda raw: 0x55 in raw and _USER_ID.search(raw) is not None,   # 'U'
}
"""A test per built-in screen, true wherever the screen's regex matches (tests hold them to it)."""


@dataclass(frozen=True, slots=True)
class RegexDetector:
    """A detector that is one regular expression (the e-mail, user-id and custom detectors)."""

    kind: str
    pattern: re.Pattern[str]
    needle: str = ""   # a substring every match contains: a cheap pre-check
    screen: bytes | None = None   # see ``raw_screen``; None: any value may match

    def search(self, text: str) -> bool:
        if self.needle and self.needle not in text:
            return False
        return self.pattern.search(text) is not None


_FILE_EXTENSIONS = frozenset(
    "png jpg jpeg gif svg webp avif bmp ico css js mjs map json html htm php asp aspx jsp txt pdf".split()
)
_EMAIL_RE = re.compile(
    r"[\w.!#$%&'*+/=?^`{|}~-]{1,64}+@(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.){1,8}"
    r"(?P<tld>[^\W\d_]{2,63}|xn--[a-z0-9-]{1,59})(?![\w-])"
)


@dataclass(frozen=True, slots=True)
class EmailDetector:
    """``local@domain.tld``; ``logo@2x.png`` is an image name, not an address."""

    kind: str = EMAIL
    screen: bytes = b"@"

    def search(self, text: str) -> bool:
        if "@" not in text:
            return False
        return any(m.group("tld").lower() not in _FILE_EXTENSIONS for m in _EMAIL_RE.finditer(text))


_B = r"(?<![0-9A-Za-z_+\-./])"           # not glued to a word, another number or a decimal
_E = r"(?![0-9A-Za-z_]|[-./]\d)"
_INTL = re.compile(_B + r"\+[1-9]\d{0,3}+(?:[-. ]?(?:\(\d{1,4}+\)|\d{1,6}+)){1,7}+" + _E, re.ASCII)
_NATIONAL = re.compile(
    _B + r"(?:(?P<sep>0\d{1,4}+(?:[-. /]\d{1,8}+){1,5}+)"
    r"|\(0\d{1,4}+\)[-. ]?\d{1,4}+[-. ]?\d{3,4}+"
    r"|0\d{1,4}+\(\d{1,4}+\)\d{3,4}+"
    r"|0[1-9]\d{8,9}+)" + _E,
    re.ASCII,
)
_NANP = re.compile(
    _B + r"(?:\+?1[-. ]?)?(?:\([2-9]\d\d\)[-. ]?\d{3}[-. ]|[2-9]\d\d(?P<s>[-. ])\d{3}(?P=s))\d{4}" + _E,
    re.ASCII,
)
_GROUPS = re.compile(r"\d+|[-. /]")


def _national_ok(digits: int) -> bool:
    return 9 <= digits <= 12


def _grouped_ok(groups: list[str], seps: list[str]) -> bool:
    """A trunk-0 number written in groups: ``03-1234-5678``, ``0120 123 456``, ``030/1234567``."""
    first, rest = groups[0], groups[1:]
    if not (2 <= len(first) <= 5) or first[1] == "0" or not rest:
        return False
    if not _national_ok(sum(map(len, groups))) or "/" in seps[1:]:
        return False
    if len(rest) == 1:
        return len(rest[0]) >= 5                      # 030 12345678, 07700 900123
    if all(len(g) == 2 for g in rest) and len(rest) >= 4:
        return True                                   # 01 23 45 67 89
    # 03-1234-5678, 0120-123-456: the last group has 3 or 4 digits, 11 digits at most
    return 3 <= len(rest[-1]) <= 4 and all(len(g) >= 2 for g in rest[:-1]) and sum(map(len, groups)) <= 11


def _split(text: str) -> tuple[list[str], list[str]]:
    groups: list[str] = []
    seps: list[str] = []
    for tok in _GROUPS.findall(text):
        (groups if tok[0].isdigit() else seps).append(tok)
    return groups, seps


def _national(m: re.Match[str]) -> bool:
    span = m.group("sep")
    if span is None:
        return _national_ok(sum(c.isdigit() for c in m.group()))
    groups, seps = _split(span)
    # A phone number followed by more digits after a space ("090-1234-5678 10:30")
    # is matched with them; try the shorter readings that end at a space.
    for k in range(len(groups), 1, -1):
        if k < len(groups) and seps[k - 1] != " ":
            continue
        if _grouped_ok(groups[:k], seps[: k - 1]):
            return True
    return False


def _international(m: re.Match[str]) -> bool:
    text = m.group().replace("(0)", "")
    digits = sum(c.isdigit() for c in text)
    # Written without any separator, a short "+2021..." is more likely a number than a phone.
    return (8 if len(text) > digits + 1 else 10) <= digits <= 15


@dataclass(frozen=True, slots=True)
class PhoneDetector:
    """E.164 (``+81 90 1234 5678``), trunk-0 national numbers (Japan, Taiwan, Thailand, UK,
    Germany, France...) and North American ``(555) 123-4567``."""

    kind: str = PHONE
    # Eight digits with only separators between them: every pattern below allows nothing
    # else between two digits (a country code's "+" comes before the first), and each needs
    # eight digits at least.  Tighter than ``_DIGIT_RUN``, so a hex token is screened out.
    screen: bytes = PHONE_SCREEN

    def search(self, text: str) -> bool:
        if _DIGIT_RUN.search(text) is None:
            return False
        if "+" in text and any(_international(m) for m in _INTL.finditer(text)):
            return True
        if "0" in text and any(_national(m) for m in _NATIONAL.finditer(text)):
            return True
        return _NANP.search(text) is not None


_DIGIT_RUN = re.compile(r"\d(?:\D{0,3}\d){7}", re.ASCII)
"""Eight digits close together: every phone number has them, most values do not."""

USER_ID_RE = re.compile(r"(?<![0-9A-Za-z])U[0-9a-fA-F]{32}(?![0-9A-Za-z])")


def builtin_detectors() -> tuple[Detector, ...]:
    """The shipped detectors, in the order their kinds are reported."""
    return (EmailDetector(), PhoneDetector(), RegexDetector(USER_ID, USER_ID_RE, "U", USER_ID_SCREEN))


def custom_detector(kind: str, pattern: str, *, ignore_case: bool = False) -> RegexDetector:
    """A detector from configuration; raises ``ValueError`` naming the kind on a bad pattern."""
    if not kind or not kind.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"detector kind {kind!r}: use letters, digits, '_' or '-'")
    try:
        compiled = re.compile(pattern, re.IGNORECASE if ignore_case else 0)
    except re.error as exc:
        raise ValueError(f"detector {kind!r}: bad regular expression: {exc}") from None
    if compiled.search("") is not None:
        raise ValueError(f"detector {kind!r}: the pattern matches the empty string")
    return RegexDetector(kind, compiled)


def kinds_in(value: str, detectors: Iterable[Detector]) -> list[str]:
    """The kinds of PII found in ``value``, in detector order (``value`` is normalised here)."""
    text = normalize(value)
    return [d.kind for d in detectors if d.search(text)]


@dataclass(frozen=True, slots=True)
class NameMatcher:
    """Field names selected by globs (``tel*``, whole name) or regexes (searched), case-insensitively.

    Case-insensitive because legacy forms spell the same field ``TEL``, ``Tel``
    and ``tel``, and a miss leaks while an extra match only hides a field.
    """

    pattern: re.Pattern[str] | None

    @classmethod
    def compile(cls, globs: Iterable[str] = (), regexes: Iterable[str] = ()) -> NameMatcher:
        parts = [fnmatch.translate(g) for g in globs]
        for r in regexes:
            try:
                re.compile(r)
            except re.error as exc:
                raise ValueError(f"field-name regex {r!r}: {exc}") from None
            parts.append(f"(?:.*?(?:{r}))")
        if not parts:
            return cls(None)
        try:
            return cls(re.compile("|".join(f"(?:{p})" for p in parts), re.IGNORECASE | re.DOTALL))
        except re.error as exc:   # e.g. a global flag such as (?i) inside one of the regexes
            raise ValueError(f"field-name patterns: {exc}") from None

    def matches(self, name: str) -> bool:
        return self.pattern is not None and self.pattern.match(name) is not None

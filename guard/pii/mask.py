"""Mask text for the ``mask`` mode: a fixed text, or a phone number with only its last digits left.

A mask is for people (support staff reading a page), not for forms: unlike a
token it cannot be swapped back.  Keeping the country code and the last few
digits (``+81 **-****-5678``) lets a person recognise a number without the page
carrying it; when that would leave too few digits hidden, the fixed text is used.
"""

from __future__ import annotations

from dataclasses import dataclass

from guard.pii.detect import normalize

MIN_HIDDEN_DIGITS = 4
"""Fewer hidden digits than this and a partial mask would reveal the number: use the fixed text."""

_SEPARATORS = frozenset(" +-.()/")
_ONE_DIGIT = frozenset("17")
_TWO_DIGIT = frozenset(
    "20 27 30 31 32 33 34 36 39 40 41 43 44 45 46 47 48 49 51 52 53 54 55 56 57 58 "
    "60 61 62 63 64 65 66 81 82 84 86 90 91 92 93 94 95 98".split()
)


def country_code_length(digits: str) -> int:
    """Length of the E.164 country code at the start of ``digits`` (ITU-T E.164 assignment)."""
    if digits[:1] in _ONE_DIGIT:
        return 1
    return 2 if digits[:2] in _TWO_DIGIT else 3


@dataclass(frozen=True, slots=True)
class Mask:
    """``text`` replaces the value; with ``keep_last`` > 0, values with digits keep that many at the end."""

    text: str = ""
    keep_last: int = 0
    keep_country_code: bool = True
    char: str = "*"

    def __post_init__(self) -> None:
        if self.keep_last < 0:
            raise ValueError(f"mask keep_last must be >= 0 (got {self.keep_last})")
        if len(self.char) != 1:
            raise ValueError(f"mask char must be one character (got {self.char!r})")

    def apply(self, value: str) -> str:
        if self.keep_last == 0:
            return self.text
        text = normalize(value).strip()
        digits = "".join(c for c in text if c.isdigit())
        lead = country_code_length(digits) if self.keep_country_code and text.startswith("+") else 0
        if len(digits) - lead - self.keep_last < MIN_HIDDEN_DIGITS:
            return self.text
        out: list[str] = []
        i = 0
        for c in text:
            if c.isdigit():
                out.append(c if i < lead or i >= len(digits) - self.keep_last else self.char)
                i += 1
            else:
                out.append(c if c in _SEPARATORS else self.char)   # letters could be a name or an address
        return "".join(out)

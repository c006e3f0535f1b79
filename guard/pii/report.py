"""What a rewrite did, as counts: never a value, so every field is safe in metrics and logs."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum


class Skip(StrEnum):
    """Why something was passed through unchanged (or changed less than asked)."""

    OVERSIZED_TAG = "oversized-tag"              # a start tag longer than max_tag_bytes
    UNSUPPORTED_CHARSET = "unsupported-charset"  # the whole body: ISO-2022-JP, UTF-16...
    EOF_IN_TAG = "eof-in-tag"                    # the body ended inside a tag (it was still inspected)
    TOKENIZER_ERROR = "tokenizer-error"          # the vault failed: the value was emptied instead
    UNSUPPORTED_ENCODING = "unsupported-encoding"  # a Content-Encoding the guard cannot decode
    BAD_JSON = "bad-json"                        # a JSON body that does not parse (or is too big)


@dataclass(slots=True)
class Report:
    """Counters filled while a body streams through; read them after ``close()``.

    ``actions[(kind, mode)]``: values removed, masked or tokenized.  ``found[kind]``:
    values a ``detect`` rule recognised.  ``skipped[reason]``: see ``Skip``.
    """

    actions: Counter[tuple[str, str]] = field(default_factory=Counter)
    found: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def changed(self) -> bool:
        """Whether the body differs from the upstream's."""
        return sum(self.actions.values()) > 0

    def merge(self, other: Report) -> None:
        self.actions.update(other.actions)
        self.found.update(other.found)
        self.skipped.update(other.skipped)

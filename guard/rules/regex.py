"""Rule regexes on a linear-time engine (RE2), so no request can make a pattern backtrack for ever.

The strings rules match (path, headers, User-Agent, AS organisation) come from
the attacker, and so do the request paths ``match: regex`` login endpoints see and
the ``Location`` headers outcome patterns see (upstreams echo the path into them).
Python's ``re`` backtracks: a pattern such as ``(a+)+$`` takes time exponential in
the input, and no cut of the input saves it (40 characters already take minutes).
RE2 runs in time linear in the input for every pattern it accepts, so the work is
bounded by the input (rule conditions cut it at ``MAX_MATCH_INPUT``, 1 MiB; a login
path and a ``Location`` by the HTTP parsers' head limits) whatever the rule author wrote.

RE2 leaves out the features that need backtracking: backreferences (``\\1``),
lookahead and lookbehind, atomic groups and possessive quantifiers, and a few
spellings (``\\Z``: use ``\\z`` or ``$``; verbose mode ``(?x)``).  A pattern that
uses them is refused when the rule file loads, with a message that says why.
Two semantic differences are worth knowing: ``\\d``, ``\\w`` and ``\\b`` are ASCII
in RE2 (Unicode in ``re``), and RE2 refuses counted repetitions above 1000.
"""

from __future__ import annotations

import re
from typing import Protocol

import re2  # type: ignore[import-untyped]  # google-re2: no type information shipped


class Matcher(Protocol):
    """What a rule condition (``search``) or a login path (``fullmatch``) needs of a compiled pattern."""

    @property
    def pattern(self) -> str: ...

    def search(self, text: str) -> object | None: ...

    def fullmatch(self, text: str) -> object | None: ...


_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # RE2 would print every refused pattern to stderr; the problem list says it


def compile_regex(pattern: str) -> Matcher:
    """Compile for RE2, or raise ``ValueError`` with a message fit for a located rule problem."""
    try:
        rx: Matcher = re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        detail = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else exc
        try:
            re.compile(pattern)
        except re.error:
            raise ValueError(f"invalid regular expression {pattern!r}: {detail}") from None
        raise ValueError(
            f"invalid regular expression {pattern!r} for the linear-time engine (RE2): {detail}; "
            "backreferences, lookaround, atomic groups, possessive quantifiers, \\Z and (?x) "
            "are not supported, because they let a crafted request make matching take exponential time"
        ) from None
    return rx

"""Decisions are values: the engine returns them, the adapters translate them to HTTP."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class Action(StrEnum):
    PASS = "pass"  # noqa: S105 (nothing matched: forward)
    ALLOW = "allow"        # an allow rule matched: forward, stop evaluating
    LOG = "log"            # forward, but the decision log records why
    BLOCK = "block"        # 403 page
    BAN = "ban"            # block now and for a duration
    TARPIT = "tarpit"      # forward after a bounded delay
    CHALLENGE = "challenge"  # second factor (interstitial)
    UNAVAILABLE = "unavailable"  # the store is down and the policy is fail-closed: 503

    @property
    def blocks(self) -> bool:
        return self in _BLOCKING


_BLOCKING = frozenset({Action.BLOCK, Action.BAN, Action.CHALLENGE, Action.UNAVAILABLE})


@dataclass(frozen=True, slots=True)
class Reason:
    """Why: the rule (or built-in check) that fired, and the values that made it fire."""

    rule: str
    detail: str = ""
    score: float = 0.0
    values: Mapping[str, float | int | str] = field(default_factory=dict)
    shadow: bool = False       # a shadow-mode rule: reported, not enforced

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"rule": self.rule}
        if self.detail:
            out["detail"] = self.detail
        if self.score:
            out["score"] = self.score
        if self.values:
            out["values"] = dict(self.values)
        if self.shadow:
            out["shadow"] = True
        return out


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reasons: tuple[Reason, ...] = ()
    status: int = 0            # HTTP status the adapter sends when the action blocks
    shadow: bool = False       # would have blocked; forwarded because of shadow mode
    delay: float = 0.0         # tarpit seconds
    ban_seconds: float = 0.0   # for BAN: how long

    @property
    def forwards(self) -> bool:
        return not self.action.blocks or self.shadow

    def reason_ids(self) -> list[str]:
        return [r.rule for r in self.reasons]


# Shared instance: the common case allocates nothing.
PASS = Decision(Action.PASS)

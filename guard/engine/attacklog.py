"""Two log lines per login attack: one when the global failure spike starts, one when it ends.

The detector is looked at on every login request (and by the dashboard's poll every
second), so a warning written "while the state is on" repeats thousands of times in the
middle of exactly the flood an operator is trying to read.  This follows the state's
transitions instead: the start carries the figures that tripped it, the end carries the
whole episode's counts.  Each process follows its own view of the state (which it shares
through the store's ``atk:on`` entry), so N workers write at most N pairs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass


@dataclass(slots=True)
class _Episode:
    since: float
    logins: int = 0                 # login attempts this process evaluated while the state was on
    peak_failures: float = 0.0      # the most failures seen in one detector window
    peak_rate_per_min: float = 0.0
    baseline_per_min: float = 0.0


class AttackLog:
    """The attack state's transitions, written once each; between them, only counts are kept."""

    __slots__ = ("_episode", "_log")

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._episode: _Episode | None = None

    @property
    def active(self) -> bool:
        return self._episode is not None

    def follow(self, now: float, on: bool, *, login: bool = False, failures: float = 0.0,
               rate_per_min: float = 0.0, baseline_per_min: float = 0.0) -> None:
        """One look at the state: ``login`` for a login evaluation (counted), else a poll (figures unknown)."""
        ep = self._episode
        if not on:
            if ep is not None:
                self._episode = None
                self._log.warning(
                    "attack over: global login failure rate back under its baseline",
                    extra={"attack_since": round(ep.since, 3), "duration_s": round(max(0.0, now - ep.since), 1),
                           "logins": ep.logins, "peak_failures_window": ep.peak_failures,
                           "peak_rate_per_min": round(ep.peak_rate_per_min, 2),
                           "baseline_per_min": round(ep.baseline_per_min, 3)},
                )
            return
        if ep is None:
            ep = self._episode = _Episode(since=now, baseline_per_min=baseline_per_min)
            self._log.warning(
                "attack in progress: global login failure rate above baseline",
                extra={"failures_window": failures, "rate_per_min": round(rate_per_min, 2),
                       "baseline_per_min": round(baseline_per_min, 3)},
            )
        if login:
            ep.logins += 1
            ep.peak_failures = max(ep.peak_failures, failures)
            ep.peak_rate_per_min = max(ep.peak_rate_per_min, rate_per_min)
            ep.baseline_per_min = ep.baseline_per_min or baseline_per_min

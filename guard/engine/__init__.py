"""The decision engine: facts in, decisions out.  Knows nothing of aiohttp or mitmproxy.

``Engine`` is imported on first use (PEP 562), not here: the rule loader needs the leaf
``guard.engine.decision`` while ``guard.engine.core`` needs the rule loader, and an eager
import of the core from this package breaks ``import guard.rules.loader`` run first with a
circular import.  The light leaf modules (clock, decision, facts) import nothing of the rules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from guard.engine.clock import Clock, SystemClock, VirtualClock
from guard.engine.decision import PASS, Action, Decision, Reason
from guard.engine.facts import RequestFacts, ResponseFacts

if TYPE_CHECKING:
    from guard.engine.core import Engine

__all__ = [
    "PASS", "Action", "Clock", "Decision", "Engine", "Reason", "RequestFacts", "ResponseFacts",
    "SystemClock", "VirtualClock",
]


def __getattr__(name: str) -> object:
    """Resolve ``Engine`` lazily, keeping this package importable from inside the rules."""
    if name == "Engine":
        from guard.engine.core import Engine  # here, not at the top: the seam of the rules <-> core cycle

        return Engine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

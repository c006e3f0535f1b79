"""The decision engine: facts in, decisions out.  Knows nothing of aiohttp or mitmproxy."""

from guard.engine.clock import Clock, SystemClock, VirtualClock
from guard.engine.core import Engine
from guard.engine.decision import PASS, Action, Decision, Reason
from guard.engine.facts import RequestFacts, ResponseFacts

__all__ = [
    "PASS", "Action", "Clock", "Decision", "Engine", "Reason", "RequestFacts", "ResponseFacts",
    "SystemClock", "VirtualClock",
]

"""The proxy's one call per finished request, turned into a ``RequestEvent`` for the observers.

The proxy and the WebSocket relay call ``record`` wherever a request ends (a
page, a forwarded response, a failure).  This adapter adds what only the engine
knows about a login (the username's keyed hash, country, ASN, score) and hands
one event to the observers: metrics, the decision log, the live view.  What a
log line may contain is decided by the decision log (``guard.observe``), never
here.
"""

from __future__ import annotations

import time
from typing import Any

from guard.engine.decision import Decision
from guard.engine.facts import RequestFacts
from guard.observe.events import Observer, RequestEvent


class RequestLog:
    __slots__ = ("_engine", "observer")

    def __init__(self, observer: Observer, engine: Any) -> None:
        self.observer = observer
        self._engine = engine

    def record(
        self,
        req: RequestFacts,
        decision: Decision,
        status: int,
        upstream_s: float | None,
        overhead_s: float,
    ) -> None:
        if req.login is not None:
            user_key, country, asn, score = self._engine.describe(req)
            event = RequestEvent(
                time.time(), req, decision, status, upstream_s, overhead_s, user_key, country, asn, score
            )
        else:
            event = RequestEvent(time.time(), req, decision, status, upstream_s, overhead_s)
        self.observer.request(event)

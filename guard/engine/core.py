"""The engine: one method per phase of a request, each returning a decision value.

Adapters (the aiohttp proxy, the mitmproxy addon) call, in order:
``on_request`` when headers are in, ``on_login`` when a login body has been
buffered, and ``on_response`` with the upstream's answer.  The engine reads and
writes shared state only through the ``Store`` and applies the store failure
policy (``store.fail_open``) itself, so every adapter behaves the same when
Redis is down.  Later stages (rules, challenge, PII) plug in here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from guard.config import Config
from guard.engine.bancache import BanCache, ip_subjects
from guard.engine.clock import Clock, SystemClock
from guard.engine.decision import PASS, Action, Decision, Reason
from guard.engine.facts import RequestFacts, ResponseFacts
from guard.engine.logins import LoginMatcher
from guard.store.base import Ban, GetBans, Hit, Store, StoreError

log = logging.getLogger("guard.engine")

LOGIN_WINDOW = 600.0

STORE_DOWN_OPEN = Reason("store-unavailable", "state store unreachable; fail_open lets the request through")
STORE_DOWN_CLOSED = Reason("store-unavailable", "state store unreachable; fail_open is false")


@dataclass(slots=True)
class EngineStatus:
    store_ok: bool
    bans_cached: int


class Engine:
    def __init__(self, config: Config, store: Store, clock: Clock | None = None) -> None:
        self.config = config
        self.store = store
        self.clock: Clock = clock or SystemClock()
        self.logins = LoginMatcher(config.logins)
        self.bans = BanCache(store, self.clock)
        self.shadow = config.shadow
        self._store_ok = True

    async def start(self) -> None:
        await self.store.start()
        await self.bans.refresh(force=True)
        self.bans.start()

    async def close(self) -> None:
        await self.bans.stop()
        await self.store.close()

    # ---- phases ---------------------------------------------------------------------------------

    def match_login(self, method: str, path: str) -> str | None:
        if not self.logins:
            return None
        ep = self.logins.match(method, path)
        return ep.id if ep is not None else None

    async def on_request(self, req: RequestFacts) -> Decision:
        """Headers are in.  Non-login requests are decided from memory only."""
        ban = self.bans.lookup(req.client_ip)
        if ban is not None:
            return self._finish(_banned(ban))
        if req.login is None:
            return PASS
        return await self._login_state(req)

    async def on_login(self, req: RequestFacts) -> Decision:
        """The login body is buffered (``req.body``).  Rules on usernames come with the rules engine."""
        return PASS

    async def on_response(self, req: RequestFacts, resp: ResponseFacts) -> None:
        """The upstream answered a login.  Outcome counters come with the rules engine."""

    # ---- helpers --------------------------------------------------------------------------------

    async def _login_state(self, req: RequestFacts) -> Decision:
        now = self.clock.now()
        subjects = ip_subjects(req.client_ip)
        try:
            bans, _ = await self.store.execute(
                [GetBans(subjects), Hit(f"login:ip:{req.client_ip}", LOGIN_WINDOW)], now
            )
        except StoreError:
            self._store_ok = False
            if self.config.store.fail_open:
                return Decision(Action.LOG, (STORE_DOWN_OPEN,))
            return Decision(Action.UNAVAILABLE, (STORE_DOWN_CLOSED,), status=503)
        self._store_ok = True
        for ban in bans:
            if ban is not None:
                self.bans.put(ban)
                return self._finish(_banned(ban))
        return PASS

    def _finish(self, decision: Decision) -> Decision:
        if self.shadow and decision.action.blocks:
            return Decision(decision.action, decision.reasons, decision.status, shadow=True)
        return decision

    async def status(self) -> EngineStatus:
        ok = await self.store.ping()
        self._store_ok = ok
        return EngineStatus(store_ok=ok, bans_cached=len(self.bans))


def _banned(ban: Ban) -> Decision:
    return Decision(
        Action.BLOCK,
        (Reason("banned", f"{ban.subject} banned ({ban.reason or 'manual'})", values={"until": int(ban.until)}),),
        status=403,
    )

"""The admin listener: health and readiness now; metrics, API and dashboard join it later.

It is a separate port so that it can be firewalled apart from the public one,
and a routed ``web.Application`` (unlike the public hot path) because its
endpoints are many, small and not performance-critical.

* ``/healthz``: the process serves HTTP.  Always 200 while it does.
* ``/readyz``: send traffic here.  503 while draining for shutdown or when the
  state store does not answer a ping, so a load balancer moves traffic to
  instances that can enforce bans and counters.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web

from guard.store.base import Store
from guard.units import HostPort

PING_TIMEOUT = 1.0  # a readiness probe must answer quickly even when the store hangs


@dataclass(slots=True)
class Health:
    """What the probes report; the server flips ``draining`` on shutdown."""

    store: Store
    draining: bool = False
    fail_open: bool = False  # store down + fail_open: still ready (logins pass, logged), say so

    async def store_ok(self) -> bool:
        try:
            async with asyncio.timeout(PING_TIMEOUT):
                return bool(await self.store.ping())
        except Exception:
            # a broken store backend is "down" to the probe, never a 500
            return False


HEALTH = web.AppKey("health", Health)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    health = request.app[HEALTH]
    if health.draining:
        return web.json_response({"status": "draining"}, status=503)
    if not await health.store_ok():
        if health.fail_open:
            # Every instance shares one store: taking them all out of the balancer when it
            # fails would turn fail_open into fail-closed for the whole site.
            return web.json_response({"status": "degraded", "store": "down", "policy": "fail_open"})
        return web.json_response({"status": "unavailable", "store": "down"}, status=503)
    return web.json_response({"status": "ok", "store": "up"})


def make_app(health: Health) -> web.Application:
    app = web.Application()
    app[HEALTH] = health
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


class AdminServer:
    def __init__(self, app: web.Application, address: HostPort, *, reuse_port: bool) -> None:
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self._address = address
        self._reuse_port = reuse_port
        self.port = 0

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self._address.host, self._address.port, reuse_port=self._reuse_port or None
        )
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        await self._runner.cleanup()

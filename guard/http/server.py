"""One guard worker: the public proxy listener and the admin listener, built from a ``Config``.

``GuardServer`` owns the lifecycle and nothing else: ``start`` binds and
returns, ``reload`` swaps what can change live, ``stop`` drains.  Signals,
worker processes and the event loop policy belong to ``guard.supervisor``.

Shutdown order matters: readiness goes 503 and the listeners stop accepting
first, then in-flight requests get ``grace`` seconds (idle keep-alive
connections are closed at once), and only then are the upstream pool, the
engine (and its store) and the request log closed, so no request in flight
loses its upstream or its log line.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import IO, Any

from guard import __version__
from guard.accesslog import RequestLog
from guard.config import Config
from guard.engine import Clock, Engine
from guard.engine.runtime import build_runtime
from guard.http.admin import AdminServer, Health, make_app
from guard.http.adminapi import AdminDeps, install
from guard.http.listener import Listener, bind
from guard.http.protocol import GuardWebServer
from guard.http.proxy import ProxyHandler
from guard.http.settings import Settings, build_settings, restart_needed
from guard.http.tls import server_context
from guard.http.upstream import Upstream
from guard.observe.hub import Observability, decision_log_settings
from guard.pii.vault import Vault
from guard.store.base import Store

log = logging.getLogger("guard.http")


class GuardServer:
    def __init__(
        self,
        config: Config,
        *,
        store: Store | None = None,
        clock: Clock | None = None,
        reuse_port: bool = False,
        log_stream: IO[str] | None = None,
    ) -> None:
        """``store``, ``clock`` and ``log_stream`` are for tests; by default they come from the config."""
        self._config = config
        self._store = store
        self._clock = clock
        self._reuse_port = reuse_port
        self._log_stream = log_stream
        self._engine: Engine | None = None
        self._request_log: RequestLog | None = None
        self._upstream: Upstream | None = None
        self._web: GuardWebServer | None = None
        self._handler: ProxyHandler | None = None
        self._listener: Listener | None = None
        self._admin: AdminServer | None = None
        self._health: Health | None = None
        self.public_port = 0
        self.admin_port = 0
        self._challenges: Any = None
        self._obs: Observability | None = None
        self.config_path: Path | None = None  # set by the supervisor: what POST /api/reload reads
        self._flow: Any = None
        self._vault: Vault | None = None

    @property
    def config(self) -> Config:
        return self._config

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("GuardServer.start() was not called")
        return self._engine

    @property
    def open_connections(self) -> int:
        return self._web.open_connections if self._web is not None else 0

    @property
    def in_flight(self) -> int:
        return self._handler.in_flight if self._handler is not None else 0

    async def start(self) -> None:
        """Build everything, bind both listeners, return.  Raises ``OSError`` when a port is taken."""
        try:
            await self._start()
        except BaseException:
            await self.stop(0)  # release whatever was already built
            raise

    async def _start(self) -> None:
        config = self._config
        store = self._store
        if store is None:
            from guard.store import make_store

            store = make_store(config.store)
        # rules, lists and GeoIP are compiled from files: off the event loop
        engine_rt = await asyncio.to_thread(build_runtime, config)
        engine = self._engine = Engine(config, store, self._clock, runtime=engine_rt)
        await engine.start()
        obs = self._obs = Observability.from_config(
            config, log_stream=self._log_stream, decision_log=decision_log_settings(config)
        )
        await obs.start(engine)  # the engine reports bans, attacks and exposures to it
        request_log = self._request_log = RequestLog(obs.fanout, engine)
        upstream = self._upstream = Upstream(config)
        await upstream.start()
        if config.challenge is not None:
            from guard.challenge import Challenges
            from guard.http.challengeflow import ChallengeFlow

            svc = self._challenges = Challenges(config.challenge, store, clock=self._clock)
            await svc.start()
            engine.challenges = svc
            svc.observer = obs.fanout
            self._flow = ChallengeFlow(svc, upstream)
        # PII tokens are sealed under a key from the engine's secret (shared through the store, so
        # every instance agrees); the engine has no public accessor for it yet.
        self._vault = Vault(engine._secret, store, engine.clock)
        settings = build_settings(config, engine, self._flow, self._vault)
        handler = self._handler = ProxyHandler(settings, upstream, request_log)
        handler.follow_lag()
        web_server = self._web = GuardWebServer(handler, settings=settings)
        ssl_context = server_context(config.tls) if config.tls is not None else None
        sock = await bind(config.listen, reuse_port=self._reuse_port)
        self._listener = Listener(web_server, sock, ssl_context, config.proxy_protocol, lag=handler.lag)
        await self._listener.start()
        obs.follow_overload(self._overload)
        self.public_port = self._listener.port
        self._health = Health(store, fail_open=config.store.fail_open)
        app = make_app(self._health)
        install(app, AdminDeps.from_hub(obs, engine, config.admin.token, self._reload_from_disk, __version__))
        self._admin = AdminServer(app, config.admin.listen, reuse_port=self._reuse_port)
        await self._admin.start()
        self.admin_port = self._admin.port

    def _overload(self) -> tuple[dict[tuple[str, str], int], float]:
        """What was refused to shed load since start, by (stage, reason), and the loop's lag peak."""
        h, lsn = self._handler, self._listener
        if h is None:
            return {}, 0.0
        totals = {
            ("request", "queue_time"): h.shed, ("request", "loop_lag"): h.busy,
            ("request", "pending_upstream"): h.full, ("upstream_queue", "queue_time"): h.queued_out,
        }
        if lsn is not None:
            totals[("accept", "connections")] = lsn.refused_full
            totals[("accept", "loop_lag")] = lsn.refused_busy
        return totals, h.lag.take_peak()

    async def _reload_from_disk(self) -> None:
        """POST /api/reload: read the config file again; a ``SourceError`` becomes the API's 422."""
        if self.config_path is None:
            new = self._config
        else:
            from guard.config import load_config

            new = await asyncio.to_thread(load_config, self.config_path)
        await self.reload(new)

    @property
    def observability(self) -> Observability | None:
        return self._obs

    async def reload(self, new: Config) -> None:
        """Apply ``new`` live: rules, logins, lists, trusted proxies, limits, timeouts, brand.

        Raises ``SourceError`` (old config stays) when rule or list files are bad.
        Changes to listeners, TLS, the upstream, the store or the log file need a
        restart; they are logged and otherwise ignored.
        """
        engine = self.engine
        later = restart_needed(self._config, new)
        await engine.reload(new)
        settings = build_settings(new, engine, self._flow, self._vault)
        self._apply(settings)
        self._config = new
        if later:
            log.warning("reload: these changes take effect only after a restart: %s", ", ".join(later))

    def _apply(self, settings: Settings) -> None:
        if self._handler is not None:
            self._handler.rt = settings
            self._handler.follow_lag()
        if self._web is not None:
            self._web.set_settings(settings)

    async def stop(self, grace: float) -> None:
        """Stop accepting, let in-flight requests finish for up to ``grace`` seconds, close everything."""
        if self._health is not None:
            self._health.draining = True
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        if self._handler is not None:
            self._handler.lag.stop()
            await self._handler.websockets.close_all()  # long-lived: no point waiting for them
        if self._web is not None:
            self._web.pre_shutdown()  # keep-alive connections close after their current response
            await self._web.shutdown(grace)
            self._web = None
        if self._challenges is not None:
            await self._challenges.aclose()
            self._challenges = None
        if self._upstream is not None:
            await self._upstream.close()
            self._upstream = None
        if self._obs is not None:
            await self._obs.close()  # flush the decision log and the ledger before the store goes
            self._obs = None
        self._request_log = None
        if self._engine is not None:
            await self._engine.close()
            self._engine = None
        if self._admin is not None:
            await self._admin.close()
            self._admin = None

"""The addon's lifecycle: the ``guard_config`` option, start, stop and reload of what lives as long as it.

``load`` registers the option; ``configure`` validates and compiles the config;
``running`` starts the engine, the store, the observers, the challenge service
and the admin listener; ``done`` closes them; a new ``guard_config`` (or
``POST /api/reload``) swaps rules, lists and logins while running.  The hooks
that see flows are ``guard.mitm.addon``'s, which builds on this class.

An ordinary module, imported once per process: unlike the addon file, which
mitmproxy executes as a script, it may use ``from __future__ import
annotations`` and any name, hook-like or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from mitmproxy import ctx, exceptions
from mitmproxy.addonmanager import Loader

import guard.mitm as _package
from guard import __version__
from guard.accesslog import RequestLog
from guard.challenge.service import Challenges
from guard.clientip import TrustedProxies
from guard.config import Config, load_config
from guard.engine import Engine
from guard.engine.runtime import Runtime, build_runtime
from guard.http.admin import AdminServer, Health, make_app
from guard.http.adminapi import AdminDeps, install
from guard.http.pages import Pages
from guard.mitm.challenge import ChallengeHooks
from guard.observe.hub import Observability, decision_log_settings
from guard.pii.flow import PIIRuntime
from guard.pii.vault import Vault
from guard.store import make_store
from guard.yamlsource import SourceError

log = logging.getLogger("guard.mitm")

# Config keys whose change needs a restart of mitmdump: they shape the store
# connection, the admin socket, the log file and the challenge service (its keys,
# channels and health probes), which live as long as the addon.
RESTART_KEYS = ("store", "admin", "log", "challenge")


@dataclass(frozen=True, slots=True)
class Settings:
    """What the hooks read from the config, compiled once and swapped as one reference on reload."""

    config: Config
    trusted: TrustedProxies
    pages: Pages
    max_body: int
    pii: PIIRuntime | None = None     # None: PII off, or the engine (and its vault) not started yet

    @classmethod
    def build(cls, config: Config, engine: Engine | None = None, vault: Vault | None = None) -> Settings:
        pii = PIIRuntime(config.pii, engine, vault) if engine is not None and config.pii.enabled else None
        return cls(config, TrustedProxies(config.trusted_proxies), Pages(config.brand),
                   config.limits.max_body_size, pii)


class Lifecycle:
    """One guard per mitmproxy process: engine, store, request log and admin listener.

    ``engine`` and ``settings`` are None until ``running`` has started the engine
    and again from the moment ``done`` begins: the hooks answer 503 meanwhile.
    """

    def __init__(self) -> None:
        self.settings: Settings | None = None
        self.engine: Engine | None = None
        self.request_log: RequestLog | None = None
        self.admin_port = 0
        self._runtime: Runtime | None = None     # compiled by configure, handed to the engine by running
        self._admin: AdminServer | None = None
        self._obs: Observability | None = None
        self._health: Health | None = None
        self._challenge: ChallengeHooks | None = None
        self._vault: Vault | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "guard_config", str, "",
            "loginguard: path to guard.yaml (required: without it, mitmdump refuses to start and "
            "requests get 503 until it is set).",
        )

    def configure(self, updated: set[str]) -> None:
        """Validate and compile the config here, so a bad file is refused with file:line at once.

        At startup mitmdump exits on the refusal; later (``set guard_config`` in
        mitmweb or the console) the option is rolled back and the running
        config stays.  Compiling reads rule and list files on the event loop: a
        start-up and reload cost, never a per-request one.
        """
        if "guard_config" not in updated:
            return
        path: str = ctx.options.guard_config
        if not path:
            return
        try:
            config = load_config(path)
            runtime = build_runtime(config)
        except SourceError as exc:
            # (mitmproxy's exception classes have untyped constructors)
            raise exceptions.OptionsError(f"guard_config: {exc}") from None  # type: ignore[no-untyped-call]
        if self.engine is None:
            if self._runtime is not None:
                self._runtime.close()
            self._runtime = runtime
            self.settings = Settings.build(config)
            return
        runtime.close()  # Engine.reload compiles again off the event loop, and restarts list fetchers
        self._spawn(self._reload(config))

    def running(self) -> asyncio.Task[None]:
        """Start the engine and the admin listener.

        A plain function returning a task, not a coroutine function: mitmproxy
        awaits what a hook returns at start-up, but calls ``running`` (and
        ``done``) synchronously on a script it reloads, and refuses coroutine
        functions there.
        """
        return self._spawn(self._start())

    def done(self) -> asyncio.Task[None]:
        """Drain readiness, then close the admin listener, the engine (and store) and the log."""
        task = asyncio.get_running_loop().create_task(self._stop(), name="loginguard-stop")
        _package.stopping = task
        return task

    async def _start(self) -> None:
        previous = _package.stopping
        if previous is not None:
            with contextlib.suppress(Exception):
                await previous  # a reloaded script: the old instance must let go of ports first
            if _package.stopping is previous:
                _package.stopping = None
        settings = self.settings
        if settings is None or self.engine is not None:
            if settings is None:
                log.error("loginguard: guard_config is not set (--set guard_config=guard.yaml); "
                          "requests are answered 503 until it is")
            return
        config = settings.config
        runtime, self._runtime = self._runtime, None
        try:
            store = make_store(config.store)
            engine = Engine(config, store, runtime=runtime)
            await engine.start()
            self.engine = engine
            # PII tokens are sealed under a key from the engine's secret, shared through the store so
            # every instance (``guard run`` too) agrees; the engine has no public accessor for it yet.
            self._vault = Vault(engine._secret, store, engine.clock)
            self.settings = Settings.build(config, engine, self._vault)
            # the same observers as ``guard run``: decision log, metrics, live view, ledger, webhook
            obs = self._obs = Observability.from_config(config, decision_log=decision_log_settings(config))
            await obs.start(engine)
            self.request_log = RequestLog(obs.fanout, engine)
            if config.challenge is not None:
                svc = Challenges(config.challenge, store, clock=engine.clock)
                self._challenge = ChallengeHooks(svc, engine)
                await svc.start()
                svc.observer = obs.fanout   # send failures are metrics
                engine.challenges = svc     # trusted devices and login notifications, from the engine
            self._health = Health(store)
            app = make_app(self._health)
            deps = AdminDeps.from_hub(obs, engine, config.admin.token, self._reload_from_disk, __version__)
            install(app, deps)  # /metrics, the admin API and the dashboard
            self._admin = AdminServer(app, config.admin.listen, reuse_port=False)
            await self._admin.start()
            self.admin_port = self._admin.port
        except BaseException:
            await self._stop()
            raise
        log.info("loginguard: guarding with %s (admin on %s)", ctx.options.guard_config, self.admin_port)

    async def _stop(self) -> None:
        """Close in dependency order; one failing step (a store that will not close) skips no other."""
        if self._health is not None:
            self._health.draining = True
        admin, challenge, obs, engine = self._admin, self._challenge, self._obs, self.engine
        self._admin = self._obs = self.engine = self.request_log = None  # from here on, requests get 503
        self._challenge = None
        # pending code deliveries end, and observers flush (decision log, ledger), before the store goes
        for resource in (admin, challenge, obs, engine):
            if resource is not None:
                try:
                    await resource.close()
                except Exception:
                    log.exception("loginguard: closing %s failed", type(resource).__name__)
        if self._runtime is not None:
            self._runtime.close()
            self._runtime = None

    async def _reload(self, config: Config) -> None:
        """``set guard_config`` while running: the file was validated already; only a race can fail."""
        try:
            await self._apply(config)
        except SourceError as exc:
            log.error("loginguard: reload refused, the running rules stay: %s", exc)

    async def _reload_from_disk(self) -> None:
        """``POST /api/reload``: read ``guard_config`` again; a ``SourceError`` becomes the API's 422."""
        path: str = ctx.options.guard_config
        await self._apply(await asyncio.to_thread(load_config, path))

    async def _apply(self, config: Config) -> None:
        """Swap rules, lists and logins (the engine compiles off the loop), then the hooks' settings."""
        engine, old = self.engine, self.settings
        if engine is None or old is None:
            return
        await engine.reload(config)
        self.settings = Settings.build(config, engine, self._vault)
        later = [k for k in RESTART_KEYS if getattr(old.config, k) != getattr(config, k)]
        if later:
            log.warning("loginguard: changes to %s take effect only after a restart", ", ".join(later))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task kept referenced until it ends (the loop holds tasks only weakly)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

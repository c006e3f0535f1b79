"""Build every observer from the config and hand the engine and the proxy one ``Fanout``.

Order inside the fanout is cheapest-first (metrics, live view, decision log,
ledger, webhook); the fanout isolates an observer that raises.  ``start`` runs
the flush timers and a small poll that keeps the state gauges right (active bans,
store keys, the attack flag, and the HTTP layer's shedding counts and loop lag);
``close`` flushes everything (call it after the listeners stopped, so the last
requests' lines are written).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from guard.config import Config, StoreConfig
from guard.observe.decisionlog import DecisionLog
from guard.observe.events import Fanout, NullObserver, Observer, RequestEvent
from guard.observe.ledger import Ledger, LedgerBackend, make_backend
from guard.observe.live import LiveView
from guard.observe.metrics import Metrics
from guard.observe.settings import DecisionLogSettings, ObserveConfig, observe_settings
from guard.observe.share import LiveShare
from guard.observe.webhook import AttackNotifier

log = logging.getLogger("guard.observe")

# () -> (refusals since start by (stage, reason), the loop's largest lag since the last call)
OverloadProbe = Callable[[], tuple[Mapping[tuple[str, str], int], float]]

TICK = 1.0         # seconds between looks at the engine's attack flag (a property: free)
BANS_EVERY = 10    # ticks between refreshes of guard_bans_active from the store (a store read)


def _overrides(observer: Observer, name: str) -> bool:
    return getattr(type(observer), name, None) is not getattr(NullObserver, name)


class _Fanout(Fanout):
    """``Fanout`` with a faster ``request``: bound methods resolved once, not looked up per call per observer.

    ``request`` runs on every proxied request; the generic path's ``getattr``
    and argument packing cost more than most observers' own work.
    """

    def __init__(self, *observers: Observer) -> None:
        super().__init__(*observers)
        # only the observers that do something with it (NullObserver's methods are no-ops)
        self._request = [o.request for o in observers if _overrides(o, "request")]
        self._pii_page = [o.pii_page for o in observers if _overrides(o, "pii_page")]

    def request(self, event: RequestEvent) -> None:
        for call in self._request:
            try:
                call(event)
            except Exception:  # an observer bug must never fail a request
                log.exception("observer %s failed", type(getattr(call, "__self__", call)).__name__)

    def pii_page(self, path: str, scanned: bool) -> None:
        for call in self._pii_page:
            try:
                call(path, scanned)
            except Exception:  # as for ``request``
                log.exception("observer %s failed", type(getattr(call, "__self__", call)).__name__)


class Observability:
    def __init__(
        self,
        settings: ObserveConfig,
        store: StoreConfig | None = None,
        *,
        log_stream: IO[str] | None = None,
        ledger_backend: LedgerBackend | None = None,
        name: str = "loginguard",
        multiproc: Path | bool | None = True,
        state_dir: Path = Path("var"),
    ) -> None:
        """``log_stream`` and ``ledger_backend`` are for tests; by default they follow the settings."""
        self.settings = settings
        self.metrics = Metrics(multiproc=multiproc)
        d = settings.dashboard
        self.live = LiveView(recent=d.recent, seconds=d.series, top_capacity=d.top_capacity,
                             top_window=d.top_window)
        share_dir = settings.multiproc_dir or self.metrics.multiproc
        self.share = LiveShare(self.live, share_dir / "live" if share_dir is not None else None, d.refresh)
        self.decision_log: DecisionLog | None = None
        observers: list[Observer] = [self.metrics, self.live]
        if settings.decision_log.enabled:
            self.decision_log = DecisionLog(settings.decision_log, stream=log_stream,
                                            on_drop=self.metrics.drop_counter("decision_log"))
            observers.append(self.decision_log)
        backend = ledger_backend or make_backend(settings.ledger, store or StoreConfig(), state_dir)
        self.ledger = Ledger(backend, settings.ledger.flush_interval,
                             on_drop=self.metrics.drop_counter("ledger"))
        observers.append(self.ledger)
        self.webhook: AttackNotifier | None = None
        w = settings.webhook
        if w.url:
            self.webhook = AttackNotifier(w.url, w.timeout, w.min_interval, name,
                                          on_fail=self.metrics.drop_counter("webhook"))
            observers.append(self.webhook)
        self.fanout: Fanout = _Fanout(*observers)
        self._engine: Any = None
        self._poll: asyncio.Task[None] | None = None
        self._overload: OverloadProbe | None = None

    @classmethod
    def from_config(
        cls, config: Config, decision_log: DecisionLogSettings | None = None, **kw: Any
    ) -> Observability:
        """The usual constructor: ``observe:``, the store, the state folder and the brand from guard.yaml."""
        settings = observe_settings(config)
        if decision_log is not None:
            settings = settings.model_copy(update={"decision_log": decision_log})
        return cls(settings, config.store, name=config.brand.name, state_dir=config.state_dir, **kw)

    @property
    def observer(self) -> Observer:
        """What the engine and the proxy call."""
        return self.fanout

    async def start(self, engine: Any = None) -> None:
        """Start the flush timers; with ``engine``, also keep ban and attack gauges in step with it."""
        if self.decision_log is not None:
            self.decision_log.start()
        self.ledger.start()
        self.share.start()
        if engine is not None:
            self.bind(engine)

    def bind(self, engine: Any) -> None:
        """Become the engine's observer (bans, attack, exposures) and follow its state gauges."""
        self._engine = engine
        engine.observer = self.fanout
        self.metrics.known_rules = frozenset(r.id for r in engine.rt.rules.rules)
        if self._poll is None:
            self._poll = asyncio.get_running_loop().create_task(self._poll_engine(), name="observe-poll")

    def follow_overload(self, probe: OverloadProbe) -> None:
        """Read the HTTP layer's shedding counts and loop lag on every poll (``Metrics.overload``)."""
        self._overload = probe

    async def _poll_engine(self) -> None:
        """Gauges that are state, not events: active bans, the rule set, the attack flag.

        The attack flag is also followed here, so the banner, the gauge and the
        webhook work even where no adapter reports ``attack()`` transitions; an
        adapter that does report them simply gets there first.
        """
        tick = 0
        while True:
            engine = self._engine
            if tick % BANS_EVERY == 0:
                try:
                    bans = await engine.store.bans(engine.clock.now())
                    self.metrics.set_bans_active(len(bans))
                except Exception as exc:  # store down: keep the last value (store errors are counted apart)
                    log.debug("bans gauge not refreshed: %s", type(exc).__name__)
                self.metrics.known_rules = frozenset(r.id for r in engine.rt.rules.rules)
            self.metrics.flush()   # the request path's counts (``Metrics.flush``)
            if self._overload is not None:
                self.metrics.overload(*self._overload())
            size = getattr(engine.store, "__len__", None)
            if size is not None:   # the memory store; Redis reports its own memory
                self.metrics.set_store_keys(size())
            now_on = bool(engine.attack_in_progress)
            if now_on != bool(self.live.attack_state.get("active")):   # the engine is the source of truth
                self.fanout.attack(now_on, 0.0, 0.0, 0.0)
            tick += 1
            await asyncio.sleep(TICK)

    async def close(self) -> None:
        if self._poll is not None:
            self._poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll
            self._poll = None
        self.metrics.flush()
        await self.share.close()
        if self.decision_log is not None:
            await self.decision_log.close()
        await self.ledger.close()
        if self.webhook is not None:
            await self.webhook.close()


def decision_log_settings(config: Config) -> DecisionLogSettings:
    """``observe.decision_log``, with the older ``log.requests`` / ``log.file`` keys honoured.

    ``log.requests: false`` turns the per-request lines off; ``log.file`` is where they
    go when ``observe.decision_log.path`` is not set.
    """
    dl = observe_settings(config).decision_log
    update: dict[str, Any] = {}
    if not config.log.requests:
        update["enabled"] = False
    if dl.path is None and config.log.file is not None:
        update["path"] = config.log.file
    return dl.model_copy(update=update) if update else dl

"""The hub: observers built from the config, wired to the engine, following its attack flag and bans."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from guard.engine.decision import Action
from guard.observe.hub import Observability
from guard.store.base import Hit, Put
from tests.observe_fixtures import event, make_engine


async def until(predicate: Callable[[], bool]) -> None:
    """Wait for state another task changes on its own timer (the hub polls the engine once a second)."""
    async with asyncio.timeout(5):
        while not predicate():  # noqa: ASYNC110 (nothing to wait on: the state is a property)
            await asyncio.sleep(0.05)


async def test_from_config_wires_the_engine_and_follows_its_state(tmp_path: Path) -> None:
    engine = make_engine(tmp_path)
    await engine.start()
    obs = Observability.from_config(engine.config, multiproc=False)
    try:
        await obs.start(engine)
        assert engine.observer is obs.fanout
        assert obs.decision_log is not None and obs.webhook is None
        await engine.ban("ip:203.0.113.5", 60, "many-users")         # the engine reports to the fanout
        obs.fanout.request(event(ip="203.0.113.5", action=Action.BLOCK, rules=("banned",), status=403))
        text = obs.metrics.render().decode()
        assert 'guard_bans_total{reason="many-users"} 1.0' in text
        assert obs.live.snapshot()["top"]["ip"] == [["203.0.113.5", 1]]
        engine._attack_until = engine.clock.now() + 1.5               # the detector trips, then calms down
        await until(lambda: bool(obs.live.attack_state.get("active")))
        assert "guard_attack_in_progress 1.0" in obs.metrics.render().decode()
        await until(lambda: not obs.live.attack_state.get("active"))
        assert "guard_attack_in_progress 0.0" in obs.metrics.render().decode()
        assert "guard_bans_active 1.0" in obs.metrics.render().decode()
        # the memory store's size, so an SRE sees state grow toward store.max_keys
        await engine.store.execute([Put("a", b"1", 60), Put("b", b"2", 60), Hit("c", 60)], engine.clock.now())
        await until(lambda: "guard_store_keys 3.0" in obs.metrics.render().decode())
    finally:
        await obs.close()
        await engine.close()


def test_pages_reach_only_the_observers_that_count_them(caplog: Any) -> None:
    from guard.observe.events import NullObserver
    from guard.observe.hub import _Fanout

    class Broken(NullObserver):
        def pii_page(self, path: str, scanned: bool) -> None:
            raise RuntimeError("observer bug")

    class Counting(NullObserver):
        def __init__(self) -> None:
            self.pages: list[tuple[str, bool]] = []

        def pii_page(self, path: str, scanned: bool) -> None:
            self.pages.append((path, scanned))

    counting, quiet = Counting(), NullObserver()
    fan = _Fanout(quiet, Broken(), counting)
    assert len(fan._pii_page) == 2            # the no-op is not called once per page
    fan.pii_page("/help", False)               # a failing observer is logged, the next still counts
    assert counting.pages == [("/help", False)]
    assert "observer Broken failed" in caplog.text
    assert fan._request == []                 # none of them reads requests: none is called per request


def test_requests_reach_only_the_observers_that_read_them() -> None:
    from guard.observe.events import NullObserver
    from guard.observe.hub import _Fanout
    from tests.observe_fixtures import event

    class Reading(NullObserver):
        def __init__(self) -> None:
            self.seen = 0

        def request(self, ev: Any) -> None:
            self.seen += 1

    reading = Reading()
    fan = _Fanout(NullObserver(), reading, NullObserver())
    assert fan._request == [reading.request]
    fan.request(event())
    assert reading.seen == 1

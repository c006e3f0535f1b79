"""The attack warning is written when the state starts and when it ends, never on every evaluation.

A real engine on a virtual clock is driven through a ten-minute credential-stuffing spike (a
failed login every two seconds from rotating subnets), looked at by the dashboard's poll after
every request, then through the calm after it.  Before the fix the warning came back every
``attack.hold`` while the spike went on, and the end was never logged.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlencode

import pytest

from guard.config import Config, load_config_text
from guard.engine import Engine, RequestFacts, ResponseFacts, VirtualClock
from guard.engine.attacklog import AttackLog
from guard.store.memory import MemoryStore

HOLD = 120.0
STARTED = "attack in progress: global login failure rate above baseline"
ENDED = "attack over: global login failure rate back under its baseline"


def make_config(tmp_path: Path, hold: float = HOLD) -> Config:
    text = (
        "upstream: http://127.0.0.1:9\n"
        "logins:\n  - {id: login, path: /login}\n"
        f"state_dir: {tmp_path / 'state'}\n"
        "attack: {enabled: true, window: 60s, baseline: 6h, factor: 3, min_failures: 5, min_sources: 2, "
        f"floor_per_hour: 12, hold: {hold}s}}\n"
    )
    return load_config_text(text, env={})


async def failed_login(engine: Engine, i: int) -> bool:
    req = RequestFacts(
        client_ip=f"203.0.{i % 200}.7", method="POST", path="/login", headers={"User-Agent": "Mozilla/5.0"},
        login=engine.match_login("POST", "/login"),
        body=urlencode({"username": f"user{i}", "password": "guess"}).encode(),
        content_type="application/x-www-form-urlencoded",
    )
    d = await engine.on_request(req)
    if d.forwards:
        d = await engine.on_login(req)
    if d.forwards:
        await engine.on_response(req, ResponseFacts(200, {}))
    state = req.scratch
    return bool(state.ctx.attack)


def lines(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "guard.engine" and r.getMessage() == message]


async def test_a_ten_minute_attack_is_one_start_and_one_end_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="guard.engine")
    clock = VirtualClock()
    engine = Engine(make_config(tmp_path), MemoryStore("t:", 10_000, 1000), clock, secret=b"k" * 32)
    await engine.start()
    try:
        on_evaluations = 0
        for i in range(300):                           # 10 minutes: five times the hold
            on = await failed_login(engine, i)
            on_evaluations += on
            assert engine.attack_in_progress is on     # the dashboard's poll looks every second
            clock.advance(2)
        assert on_evaluations > 250                    # the detector did trip, and stayed on
        assert len(lines(caplog, STARTED)) == 1
        assert lines(caplog, ENDED) == []
        start = lines(caplog, STARTED)[0]
        assert start.levelno == logging.WARNING
        assert start.failures_window >= 5 and start.rate_per_min > start.baseline_per_min  # type: ignore[attr-defined]

        # calm: no more failures; the poll alone notices the end once the hold has run out
        calm = 0.0
        while engine.attack_in_progress:
            clock.advance(1)
            calm += 1
            assert calm <= HOLD + 1
        assert not engine.attack_in_progress
        (end,) = lines(caplog, ENDED)
        assert end.levelno == logging.WARNING
        assert end.logins == on_evaluations  # type: ignore[attr-defined]
        assert end.peak_failures_window >= start.failures_window  # type: ignore[attr-defined]
        assert end.duration_s >= 600 - 2 * HOLD  # type: ignore[attr-defined]

        # a quiet login later changes nothing: still one line of each
        clock.advance(3600)
        assert not await failed_login(engine, 1000)
        assert len(lines(caplog, STARTED)) == 1 and len(lines(caplog, ENDED)) == 1

        # a second attack is a second pair
        for i in range(40):
            await failed_login(engine, 2000 + i)
            clock.advance(2)
        assert len(lines(caplog, STARTED)) == 2
    finally:
        await engine.close()


async def test_a_worker_that_learns_of_the_attack_from_the_store_does_not_flap(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """Two engines on one store (two workers on one Redis).  The second sees a login every 10 s:
    it holds the shared state until the store says it ends, instead of for one second per login."""
    caplog.set_level(logging.INFO, logger="guard.engine")
    clock = VirtualClock()
    store = MemoryStore("t:", 10_000, 1000)
    config = make_config(tmp_path)
    first = Engine(config, store, clock, secret=b"k" * 32)
    second = Engine(config, store, clock, secret=b"k" * 32)
    await first.start()
    await second.start()
    second.attack_log = AttackLog(logging.getLogger("guard.engine.second"))   # tell the workers' lines apart
    try:
        for i in range(150):                        # 5 minutes of attack, all failures through the first
            await failed_login(first, i)
            if i % 5 == 0:
                assert await failed_login(second, 10_000 + i) or i < 10
            assert first.attack_in_progress or i < 5
            assert second.attack_in_progress or i < 10   # between its sparse logins too: no flapping
            clock.advance(2)
        second_lines = [r for r in caplog.records if r.name == "guard.engine.second"]
        assert [r.getMessage() for r in second_lines] == [STARTED]
        assert len(lines(caplog, STARTED)) == 1     # the first worker's own line
    finally:
        await first.close()
        await second.close()


async def test_no_hold_means_no_hysteresis_but_still_no_repeats(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="guard.engine")
    clock = VirtualClock()
    engine = Engine(make_config(tmp_path, hold=0), MemoryStore("t:", 10_000, 1000), clock, secret=b"k" * 32)
    await engine.start()
    try:
        for i in range(100):                        # a login every half second: the spike stays on
            on = await failed_login(engine, i)
            assert engine.attack_in_progress is on
            clock.advance(0.5)
        assert len(lines(caplog, STARTED)) == 1
        clock.advance(2)
        assert not engine.attack_in_progress
        assert len(lines(caplog, ENDED)) == 1
    finally:
        await engine.close()

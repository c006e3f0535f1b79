"""The exposure ledger: survives restarts (file and Redis), stays bounded, keeps rows through outages."""

from __future__ import annotations

import time
from pathlib import Path

from guard.observe.events import ExposureEntry
from guard.observe.ledger import FileLedger, Ledger, RedisLedger
from tests.observe_fixtures import exposure


async def test_file_ledger_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state" / "ledger.jsonl"
    first = Ledger(FileLedger(path, 1000), flush_interval=0.05)
    first.start()
    first.exposure(exposure("u1", "JP", True, 100.0, sealed="S1"))
    first.exposure(exposure("u2", "TW", False, 200.0))
    assert len(await first.read()) == 2          # queued rows are visible before the flush
    await first.close()
    with path.open("a") as f:
        f.write('{"ts": 300, "user_key": "torn')     # a crash mid-line
    again = Ledger(FileLedger(path, 1000))
    rows = await again.read()
    assert [(r.user_key, r.country, r.seen, r.login_sealed) for r in rows] == [
        ("u1", "JP", True, "S1"), ("u2", "TW", False, "")]
    assert [r.user_key for r in await again.read(since=150)] == ["u2"]
    await again.close()


async def test_file_ledger_is_bounded(tmp_path: Path) -> None:
    backend = FileLedger(tmp_path / "l.jsonl", 100)
    for i in range(30):
        await backend.append([exposure(f"u{i}-{j}", "JP", False, float(i * 10 + j)) for j in range(10)])
    rows = await backend.read()
    assert 100 <= len(rows) <= 110
    assert rows[-1].user_key == "u29-9"           # the newest are kept


class Down:
    name = "down"

    def __init__(self) -> None:
        self.up = False
        self.rows: list[ExposureEntry] = []

    async def append(self, entries: list[ExposureEntry]) -> None:
        if not self.up:
            raise ConnectionError("store down")
        self.rows.extend(entries)

    async def read(self, since: float | None = None, until: float | None = None) -> list[ExposureEntry]:
        return list(self.rows)

    async def close(self) -> None:
        return None


async def test_rows_wait_out_an_outage() -> None:
    backend = Down()
    ledger = Ledger(backend)
    ledger.exposure(exposure("u1", "JP", True, 1.0))
    await ledger.flush()
    assert backend.rows == [] and len(await ledger.read()) == 1
    backend.up = True
    await ledger.flush()
    assert [r.user_key for r in backend.rows] == ["u1"]
    assert ledger.dropped == 0


async def test_redis_ledger_is_shared_and_persistent(redis_url: str) -> None:
    now = time.time()
    a = RedisLedger(redis_url, "lg:ledger", 50)
    await a.append([exposure(f"u{i}", "JP", i % 2 == 0, now + i) for i in range(200)])
    b = RedisLedger(redis_url, "lg:ledger", 50)       # another instance, or after a restart
    rows = await b.read()
    assert 50 <= len(rows) < 200                     # trimmed (MAXLEN ~)
    assert rows[-1].user_key == "u199"
    assert [r.user_key for r in await b.read(since=now + 195)] == [f"u{i}" for i in range(195, 200)]
    await a.close()
    await b.close()

"""100 MB through a guard in its own process: every byte arrives, the guard's memory stays flat."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sys
from pathlib import Path

import pytest
from aiohttp import ClientSession

from tests.proxy_fixtures import Upstream, block, upstream

__all__ = ["upstream"]

REPO = Path(__file__).resolve().parent.parent
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (Linux: the second field of /proc/PID/statm)."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE
BLOCKS = 1600  # 1600 x 64 KiB = 100 MiB
MAX_GROWTH = 50 * 1024 * 1024


@pytest.mark.slow
async def test_100mb_streams_through_with_bounded_memory(upstream: Upstream, tmp_path: Path) -> None:
    config = {
        "upstream": upstream.url, "listen": "127.0.0.1:0", "admin": {"listen": "127.0.0.1:0"},
        "attack": {"enabled": False}, "log": {"requests": False},
    }
    (tmp_path / "guard.json").write_text(json.dumps(config))
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.proxy_fixtures", str(tmp_path / "guard.json"),
        cwd=REPO, stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert child.stdout is not None
    try:
        ports = json.loads(await asyncio.wait_for(child.stdout.readline(), 30))
        url = f"http://127.0.0.1:{ports['public_port']}"
        async with ClientSession(auto_decompress=False) as session:
            async with session.get(f"{url}/stream/4") as warm:  # pools, buffers, code paths warmed
                await warm.read()
            baseline = rss(child.pid)
            peak = baseline
            sent = hashlib.sha256()
            for i in range(BLOCKS):
                sent.update(block(i))
            got = hashlib.sha256()
            count = 0
            async with session.get(f"{url}/stream/{BLOCKS}") as resp:
                assert resp.status == 200
                async for chunk in resp.content.iter_chunked(1 << 20):
                    got.update(chunk)
                    count += len(chunk)
                    peak = max(peak, rss(child.pid))
        growth = peak - baseline
        print(f"guard RSS baseline {baseline / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB, "
              f"growth {growth / 2**20:.1f} MiB over {count / 2**20:.0f} MiB streamed")
        assert count == BLOCKS * 65536
        assert got.hexdigest() == sent.hexdigest()
        assert growth < MAX_GROWTH
    finally:
        if child.returncode is None:
            child.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(child.wait(), 10)
            except TimeoutError:
                child.kill()
                await child.wait()

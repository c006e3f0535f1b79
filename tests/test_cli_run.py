"""``guard run`` as ops run it: a real process, signals, workers, hot reload."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def upstream() -> AsyncIterator[int]:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.0)
        return web.Response(text="slow done")

    async def login(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="form again")

    app = web.Application()
    app.router.add_get("/", hello)
    app.router.add_get("/slow", slow)
    app.router.add_post("/login", login)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield runner.addresses[0][1]
    await runner.cleanup()


class Guard:
    def __init__(self, tmp: Path, upstream: int, extra: str = "", args: tuple[str, ...] = ()) -> None:
        self.port, self.admin = free_port(), free_port()
        self.rules = tmp / "rules.yaml"
        if not self.rules.exists():
            self.rules.write_text(RULES_A)
        self.config = tmp / "guard.yaml"
        self.config.write_text(
            f"listen: 127.0.0.1:{self.port}\nupstream: http://127.0.0.1:{upstream}\n"
            f"admin: {{listen: '127.0.0.1:{self.admin}'}}\nrules: [{self.rules}]\n"
            "logins:\n  - {id: login, path: /login}\n"
            "timeouts: {shutdown_grace: 5s}\n" + extra
        )
        self.log = tmp / "stderr.log"
        with self.log.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "guard", "run", "-c", str(self.config), *args],
                stdout=subprocess.DEVNULL, stderr=err,
            )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def lines(self) -> list[dict[str, object]]:
        out = []
        for line in self.log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    async def ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"guard exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
                try:
                    async with s.get(f"http://127.0.0.1:{self.admin}/readyz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError("guard did not become ready: " + self.log.read_text()[-2000:])

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -9


RULES_A = """
rules:
  - id: no-admin
    description: nobody gets /admin
    when: {path: {prefix: /admin}}
    action: block
"""
RULES_B = """
rules:
  - id: no-secret
    description: nobody gets /secret
    when: {path: {prefix: /secret}}
    action: block
"""


@pytest.fixture
def guards() -> Iterator[list[Guard]]:
    started: list[Guard] = []
    yield started
    for g in started:
        g.stop()


async def get_status(url: str) -> int:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        await r.read()
        return r.status


async def test_run_serves_and_sighup_reloads_rules(tmp_path: Path, upstream: int, guards: list[Guard]) -> None:
    g = Guard(tmp_path, upstream)
    guards.append(g)
    await g.ready()
    assert await get_status(g.url("/")) == 200
    assert await get_status(g.url("/admin")) == 403
    # a broken rule file: the reload is refused, the old rules stay live
    g.rules.write_text("rules:\n  - id: x\n    description: d\n    when: {colour: red}\n    action: block\n")
    g.proc.send_signal(signal.SIGHUP)
    await asyncio.sleep(1.0)
    assert await get_status(g.url("/admin")) == 403
    assert any("reload rejected" in str(e.get("msg")) and "rules.yaml:4" in str(e.get("msg")) for e in g.lines())
    # a good one is swapped in
    g.rules.write_text(RULES_B)
    g.proc.send_signal(signal.SIGHUP)
    for _ in range(50):
        await asyncio.sleep(0.1)
        if await get_status(g.url("/secret")) == 403:
            break
    assert await get_status(g.url("/secret")) == 403
    assert await get_status(g.url("/admin")) == 404  # forwarded: the upstream has no /admin
    assert g.stop() == 0


async def test_rule_file_change_reloads_without_a_signal(tmp_path: Path, upstream: int, guards: list[Guard]) -> None:
    g = Guard(tmp_path, upstream)
    guards.append(g)
    await g.ready()
    assert await get_status(g.url("/secret")) == 404  # not blocked yet: the upstream answers
    g.rules.write_text(RULES_B)
    for _ in range(100):
        await asyncio.sleep(0.1)
        if await get_status(g.url("/secret")) == 403:
            break
    assert await get_status(g.url("/secret")) == 403


async def test_sigterm_drains_in_flight_requests(tmp_path: Path, upstream: int, guards: list[Guard]) -> None:
    g = Guard(tmp_path, upstream)
    guards.append(g)
    await g.ready()
    async with aiohttp.ClientSession() as s:
        pending = asyncio.create_task(s.get(g.url("/slow")))
        await asyncio.sleep(0.3)
        g.proc.send_signal(signal.SIGTERM)
        resp = await pending
        assert resp.status == 200 and await resp.text() == "slow done"
    assert await asyncio.to_thread(g.proc.wait, 15) == 0


async def test_workers_with_memory_store_refuse_to_split_state(tmp_path: Path, upstream: int) -> None:
    g = Guard(tmp_path, upstream, args=("--workers", "2"))
    assert g.proc.wait(15) == 2
    assert "split counters and bans" in g.log.read_text()


async def test_two_workers_share_the_port_and_restart(
    tmp_path: Path, upstream: int, guards: list[Guard], redis_url: str
) -> None:
    g = Guard(tmp_path, upstream, extra=f"store: {{backend: redis, url: '{redis_url}'}}\nsecret_key: test-fingerprint-key-0123456789\n",
              args=("--workers", "2"))
    guards.append(g)
    await g.ready()
    statuses = await asyncio.gather(*(get_status(g.url("/")) for _ in range(40)))
    assert set(statuses) == {200}
    children = _children(g.proc.pid)
    assert len(children) == 2, children
    os.kill(children[0], signal.SIGKILL)
    for _ in range(50):
        await asyncio.sleep(0.1)
        now = _children(g.proc.pid)
        if len(now) == 2 and children[0] not in now:
            break
    assert len(_children(g.proc.pid)) == 2
    await g.ready()
    assert await get_status(g.url("/")) == 200
    assert g.stop() == 0


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


async def test_bad_config_exits_2_with_located_problems(tmp_path: Path) -> None:
    cfg = tmp_path / "g.yaml"
    cfg.write_text("upstream: http://127.0.0.1:1\nstore:\n  backend: redus\n")
    res = subprocess.run([sys.executable, "-m", "guard", "run", "-c", str(cfg)], capture_output=True, text=True)
    assert res.returncode == 2
    assert f"{cfg}:3:3: store.backend: Input should be 'memory' or 'redis'" in res.stderr


def test_settle_heap_freezes_what_start_up_built() -> None:
    """After start-up, full collections must not walk the rules, lists and modules again."""
    import gc

    from guard.supervisor import FULL_COLLECTION_EVERY, settle_heap

    threshold = gc.get_threshold()
    try:
        settle_heap()
        frozen = gc.get_freeze_count()
        assert frozen > 10_000  # the imported guard, aiohttp and pydantic at least
        assert len(gc.get_objects(generation=2)) < frozen
        assert gc.get_threshold() == (*threshold[:2], FULL_COLLECTION_EVERY)   # full collections rarer
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)

"""The forced-reset list: an exposed account's next successful login goes to the reset page."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from guard.config import load_config_text
from guard.demo.legacyapp import make_accounts, make_app
from guard.http.server import GuardServer

ACCOUNTS = make_accounts(3)
ALICE = ACCOUNTS["user1@example.jp"]


@pytest.fixture
async def legacy() -> AsyncIterator[int]:
    runner = web.AppRunner(make_app(ACCOUNTS), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield runner.addresses[0][1]
    await runner.cleanup()


async def login(base: str, user: str, password: str) -> tuple[int, str, list[str]]:
    async with aiohttp.ClientSession() as s, s.post(
        f"{base}/login", data={"username": user, "password": password}, allow_redirects=False
    ) as r:
        return r.status, r.headers.get("Location", ""), r.headers.getall("Set-Cookie", [])


async def test_next_successful_login_is_sent_to_the_reset_page(tmp_path: Path, legacy: int) -> None:
    cfg_file = tmp_path / "guard.yaml"
    cfg_file.write_text(
        f"listen: 127.0.0.1:0\nupstream: http://127.0.0.1:{legacy}\n"
        "admin: {listen: '127.0.0.1:0', token: reset-test-token-123}\n"
        "logins: [{id: login, path: /login}]\nattack: {enabled: false}\n"
        f"state_dir: {tmp_path / 'state'}\nforced_reset_url: /account/password-reset\n"
    )
    config = load_config_text(cfg_file.read_text(), env={})
    server = GuardServer(config)
    await server.start()
    base = f"http://127.0.0.1:{server.public_port}"
    try:
        # through the CLI, which talks to the running guard's admin API (memory store)
        cfg_file.write_text(cfg_file.read_text().replace("'127.0.0.1:0'", f"'127.0.0.1:{server.admin_port}'"))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "guard", "reset", "add", ALICE.login.upper(), "-c", str(cfg_file),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        assert proc.returncode == 0 and b"added 1 account" in out, err
        # a wrong password is a failure as usual: nothing to redirect, the flag stays
        assert (await login(base, ALICE.login, "wrong"))[0] == 200
        status, location, cookies = await login(base, ALICE.login, ALICE.password)
        assert status == 303 and location == "/account/password-reset"
        assert not any(c.startswith("SID=") for c in cookies)  # no session before the reset
        status, location, _ = await login(base, ALICE.login, ALICE.password)
        assert status == 302 and location == "/contact"  # once
    finally:
        await server.stop(1)

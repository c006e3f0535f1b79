"""``guard demo --attack``: a newcomer sees bans, challenges and stripped fields within a minute."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import pytest

from guard.demo.run import demo
from guard.units import HostPort

pytestmark = pytest.mark.slow

ANY = HostPort("127.0.0.1", 0)


async def test_demo_attack_shows_bans_and_protects_the_contact_form() -> None:
    lines: list[str] = []
    task = asyncio.create_task(demo(ANY, ANY, ANY, attack=True, duration=30, say=lines.append))
    try:
        for _ in range(600):
            if any(line.startswith("done:") for line in lines):
                break
            await asyncio.sleep(0.05)
        text = "\n".join(lines)
        assert "banned" in text and "fast attacker" in text, text
        base = re.search(r"through the guard:\s+(\S+)/login", text).group(1)  # type: ignore[union-attr]
        dash = re.search(r"dashboard:\s+(\S+)/dashboard", text).group(1)  # type: ignore[union-attr]
        token = re.search(r"admin token: (\S+)", text).group(1)  # type: ignore[union-attr]
        user, password = re.search(r"sign in as (\S+) / (\S+),", text).groups()  # type: ignore[union-attr]
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.get(f"{dash}/api/bans", headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200
                bans = (await r.json())["bans"]
            assert any(b["subject"].startswith("ip:203.0.113.") for b in bans)
            async with http.post(f"{base}/login", data={"username": user, "password": password},
                                 headers={"X-Forwarded-For": "10.1.1.10"}, allow_redirects=False) as r:
                assert r.status in (200, 302)
    finally:
        task.cancel()
        with __import__("contextlib").suppress(asyncio.CancelledError):
            await task

"""Tell a chat channel when an attack starts and ends (Slack-compatible incoming-webhook JSON).

The observer call only records the transition; the POST runs as its own task
with a timeout, so a slow or dead chat service never holds a request.  The
webhook URL is a credential (whoever has it can post to the channel): it is
never logged, only its host is.  A ``min_interval`` keeps a flapping detector
from flooding the channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from guard.observe.events import NullObserver

log = logging.getLogger("guard.observe.webhook")


def message(active: bool, failures: float, rate_per_min: float, baseline_per_min: float,
            since: float | None = None, name: str = "loginguard") -> dict[str, Any]:
    """The payload: ``text`` for any Slack-compatible receiver, ``attachments`` for a colour bar."""
    if active:
        text = (f":rotating_light: {name}: login attack in progress: {rate_per_min:.1f} failed logins/min "
                f"(baseline {baseline_per_min:.2f}/min, {failures:g} failures in the window)")
        color = "#d73a49"
    else:
        lasted = f" after {int((time.time() - since) // 60)} min" if since else ""
        text = (f":white_check_mark: {name}: login attack over{lasted}; "
                f"failure rate back to {rate_per_min:.1f}/min")
        color = "#2ea44f"
    return {"text": text, "attachments": [{"color": color, "text": text}]}


class AttackNotifier(NullObserver):
    def __init__(self, url: str, timeout: float = 5.0, min_interval: float = 60.0, name: str = "loginguard",
                 on_fail: Callable[[int], None] | None = None) -> None:
        self._url = url
        self._host = urlsplit(url).hostname or "?"
        self.timeout = timeout
        self.min_interval = min_interval
        self.name = name
        self._on_fail = on_fail
        self._active = False
        self._since: float | None = None
        self._last_sent: dict[bool, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self.sent = 0

    def attack(self, active: bool, failures: float, rate_per_min: float, baseline_per_min: float) -> None:
        if active == self._active:
            return
        self._active = active
        since = self._since
        self._since = time.time() if active else None
        now = time.monotonic()
        if now - self._last_sent.get(active, -1e18) < self.min_interval:
            return
        self._last_sent[active] = now
        payload = message(active, failures, rate_per_min, baseline_per_min, since, self.name)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return   # no loop (a synchronous tool driving the engine): nothing to send with
        task = loop.create_task(self._post(payload), name="attack-webhook")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, payload: dict[str, Any]) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        try:
            async with self._session.post(self._url, json=payload) as resp:
                if resp.status >= 300:
                    raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status)
            self.sent += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Never the URL: it is the secret.  The host and the kind of failure are enough to act on.
            status = getattr(exc, "status", None)
            log.warning("attack webhook to %s failed: %s%s", self._host, type(exc).__name__,
                        f" (HTTP {status})" if status else "")
            if self._on_fail is not None:
                self._on_fail(1)

    async def close(self) -> None:
        if self._tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait(list(self._tasks), timeout=self.timeout)
        for t in list(self._tasks):
            t.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None

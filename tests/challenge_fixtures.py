"""Shared parts of the challenge tests: a real SMTP server (aiosmtpd) and the rule that challenges every login."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from tests.redisserver import free_port
from tests.test_challenge_channels import Mailbox

ALWAYS_2FA = """
rules:
  - id: always-2fa
    description: every login needs a second factor
    when: {login: true}
    action: challenge
"""


class Relay(Controller):
    """aiosmtpd's Controller, but ``stop()`` first closes the connections still open.

    aiosmtpd stops its loop with them open; their sockets are then collected later, in
    whichever test runs next, as an unclosed-socket warning.  That happens when a guard that
    is still running (its fixture is torn down after this one) is mid-probe at teardown.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()

    def factory(self) -> SMTP:
        session = super().factory()
        self.sessions.add(session)
        return session

    def stop(self, no_assert: bool = False) -> None:
        async def close_sessions() -> None:
            for session in list(self.sessions):
                if session.transport is not None:
                    session.transport.abort()
            await asyncio.sleep(0)  # abort() closes the socket on the loop's next pass
            await asyncio.sleep(0)

        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(close_sessions(), self.loop).result(5)
        super().stop(no_assert)


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    """A real SMTP relay on a free port; the messages it accepted, and its port."""
    box = Mailbox()
    controller = Relay(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield box, controller.port
    finally:
        controller.stop()

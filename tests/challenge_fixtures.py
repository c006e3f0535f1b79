"""Shared parts of the challenge tests: a real SMTP server (aiosmtpd) and the rule that challenges every login."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from aiosmtpd.controller import Controller

from tests.redisserver import free_port
from tests.test_challenge_channels import Mailbox

ALWAYS_2FA = """
rules:
  - id: always-2fa
    description: every login needs a second factor
    when: {login: true}
    action: challenge
"""


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    """A real SMTP relay on a free port; the messages it accepted, and its port."""
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield box, controller.port
    finally:
        controller.stop()

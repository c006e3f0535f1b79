"""What every code channel promises: a result value, never an exception, never a hang.

A channel sits between a login and a third-party system (an SMTP relay, an
SMS gateway) that can be slow or down.  The guard must degrade to a clear
page, a log line and a metric; so ``send`` returns ``SendResult`` with an
``ErrorCode``, and ``run_bounded`` enforces the timeout and turns any failure
into a code.  Log lines name the exception type only: SMTP and HTTP errors
often quote the recipient address, which is PII.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

log = logging.getLogger("guard.challenge.channels")


class ErrorCode(StrEnum):
    TIMEOUT = "timeout"  # the channel did not answer in time
    UNREACHABLE = "unreachable"  # connection refused / DNS / TLS handshake
    AUTH_FAILED = "auth_failed"  # our credentials were refused
    REJECTED = "rejected"  # the server answered, and said no (5xx/4xx, SMTP refusal)
    NO_RECIPIENT = "no_recipient"  # nothing to send to for this account
    LOOKUP_FAILED = "lookup_failed"  # the recipient lookup service failed
    UNSUPPORTED = "unsupported"  # this channel does not do that (TOTP notifications)
    RATE_LIMITED = "rate_limited"  # the guard's own sending limit
    ERROR = "error"  # anything else (a bug: see the log)


@dataclass(frozen=True, slots=True)
class SendResult:
    ok: bool
    error_code: ErrorCode | None = None

    @property
    def transport_failure(self) -> bool:
        """The channel itself is in trouble (not this one recipient)."""
        return self.error_code in (ErrorCode.TIMEOUT, ErrorCode.UNREACHABLE, ErrorCode.AUTH_FAILED)


SENT = SendResult(True)


def failed(code: ErrorCode) -> SendResult:
    return SendResult(False, code)


@dataclass(frozen=True, slots=True)
class Recipient:
    """Whom to reach: the login id as typed (PII: never logged) and the opaque account key."""

    login_id: str
    account_key: str

    def __repr__(self) -> str:
        return f"Recipient(account_key={self.account_key!r})"


@dataclass(frozen=True, slots=True)
class SendContext:
    lang: str = "en"
    brand: str = "loginguard"
    expires_in: int = 300  # seconds the code stays valid
    verified: bool = True  # the upstream accepted the password (step-up); False before_upstream


@dataclass(frozen=True, slots=True)
class Notice:
    """A rendered login notification (see ``guard.challenge.notify``)."""

    subject: str
    text: str
    lang: str


@runtime_checkable
class Channel(Protocol):
    name: str
    delivers: bool
    """True when ``send`` delivers the code; False when the user already has it (TOTP)."""

    def can_reach(self, recipient: Recipient) -> bool:
        """Decided from the login id and config alone (never from the password's validity)."""
        ...

    async def send(self, recipient: Recipient, code: str, context: SendContext) -> SendResult: ...

    async def notify(self, recipient: Recipient, notice: Notice, context: SendContext) -> SendResult: ...

    async def check(self) -> SendResult:
        """A probe of the channel itself, with no message sent to anyone."""
        ...

    async def aclose(self) -> None: ...


async def run_bounded(what: str, call: Awaitable[SendResult], seconds: float) -> SendResult:
    """Await ``call`` for at most ``seconds``; any exception becomes an error code."""
    try:
        async with asyncio.timeout(seconds):
            return await call
    except TimeoutError:
        log.warning("%s: timed out after %.1fs", what, seconds)
        return failed(ErrorCode.TIMEOUT)
    except (ConnectionError, OSError) as exc:
        log.warning("%s: unreachable (%s)", what, type(exc).__name__)
        return failed(ErrorCode.UNREACHABLE)
    except Exception as exc:
        log.error("%s: failed (%s)", what, type(exc).__name__)
        return failed(ErrorCode.ERROR)

"""Code channels: one module each, one line each in ``REGISTRY``.

A factory gets the challenge settings and the shared dependencies and returns
a channel, or None when the channel is not configured.  ``build_channels``
returns them in the configured order; the service picks the first that can
reach an account.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from guard.challenge.channels.base import (
    SENT,
    Channel,
    ErrorCode,
    Notice,
    Recipient,
    SendContext,
    SendResult,
    failed,
    run_bounded,
)
from guard.challenge.channels.email import EmailChannel
from guard.challenge.channels.totp import Enrolments, TotpChannel
from guard.challenge.channels.webhook import WebhookChannel
from guard.challenge.settings import ChallengeSettings

__all__ = [
    "REGISTRY",
    "SENT",
    "Channel",
    "Deps",
    "ErrorCode",
    "Notice",
    "Recipient",
    "SendContext",
    "SendResult",
    "build_channels",
    "failed",
    "run_bounded",
]


@dataclass(frozen=True, slots=True)
class Deps:
    enrolments: Enrolments


Factory = Callable[[ChallengeSettings, Deps], Channel | None]

REGISTRY: dict[str, Factory] = {
    "totp": lambda s, d: TotpChannel(d.enrolments) if s.channels.totp.enabled else None,
    "email": lambda s, d: EmailChannel(s.channels.email) if s.channels.email is not None else None,
    "webhook": lambda s, d: WebhookChannel(s.channels.webhook) if s.channels.webhook is not None else None,
}


def build_channels(settings: ChallengeSettings, deps: Deps) -> dict[str, Channel]:
    """The configured channels, in ``channels.order``; unconfigured ones are left out."""
    out: dict[str, Channel] = {}
    for name in settings.channels.order:
        channel = REGISTRY[name](settings, deps)
        if channel is not None:
            out[name] = channel
    return out

"""Codes and notifications as a signed JSON POST: SMS gateways, chat apps, a company's push service.

The receiver must be able to tell our request from a forgery and from a
replay, so every POST carries ``X-Guard-Timestamp`` (Unix seconds) and
``X-Guard-Signature: v1=<hex HMAC-SHA256(secret, timestamp "." body)>``.
``verify_signature`` is the receiver's side (and the tests'): constant-time,
with a tolerance on the timestamp.  Redirects are not followed (a redirect
would resend a code to wherever the gateway points).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable

import aiohttp

from guard.challenge.channels.base import (
    SENT,
    ErrorCode,
    Notice,
    Recipient,
    SendContext,
    SendResult,
    failed,
    run_bounded,
)
from guard.challenge.settings import WebhookSettings

log = logging.getLogger("guard.challenge.channels.webhook")

TIMESTAMP_HEADER = "X-Guard-Timestamp"
SIGNATURE_HEADER = "X-Guard-Signature"


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    return "v1=" + hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def verify_signature(
    secret: bytes,
    timestamp: str,
    body: bytes,
    signature: str,
    now: float,
    tolerance: float = 300.0,
) -> bool:
    """For receivers: the signature matches and the timestamp is within ``tolerance`` of ``now``."""
    if not timestamp.isdigit() or abs(now - int(timestamp)) > tolerance:
        return False
    expected = sign(secret, int(timestamp), body)
    return hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace"))


class WebhookChannel:
    name = "webhook"
    delivers = True

    def __init__(self, settings: WebhookSettings) -> None:
        self.settings = settings
        self._secret = settings.secret.get_secret_value().encode()
        self._session: aiohttp.ClientSession | None = None

    def can_reach(self, recipient: Recipient) -> bool:
        return True  # the gateway decides; it knows its own users

    async def send(self, recipient: Recipient, code: str, context: SendContext) -> SendResult:
        payload: dict[str, object] = {
            "event": "code",
            "code": code,
            "expires_in": context.expires_in,
            "account": recipient.account_key,
            "lang": context.lang,
            "brand": context.brand,
            "password_verified": context.verified,
        }
        return await self._post(recipient, payload)

    async def notify(self, recipient: Recipient, notice: Notice, context: SendContext) -> SendResult:
        payload: dict[str, object] = {
            "event": "login_notice",
            "subject": notice.subject,
            "text": notice.text,
            "account": recipient.account_key,
            "lang": notice.lang,
            "brand": context.brand,
        }
        return await self._post(recipient, payload)

    async def check(self) -> SendResult:
        url = self.settings.health_url
        if url is None:
            return SENT

        async def probe() -> SendResult:
            async with self._http().get(url, allow_redirects=False) as resp:
                return SENT if resp.status < 500 else failed(ErrorCode.UNREACHABLE)

        return await run_bounded("webhook check", self._mapped(probe()), self.settings.timeout)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ---- internals ----------------------------------------------------------------------------

    async def _post(self, recipient: Recipient, payload: dict[str, object]) -> SendResult:
        if self.settings.include_login:
            payload["login"] = recipient.login_id
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        ts = int(time.time())
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: str(ts),
            SIGNATURE_HEADER: sign(self._secret, ts, body),
        }

        async def go() -> SendResult:
            async with self._http().post(
                self.settings.url, data=body, headers=headers, allow_redirects=False
            ) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    return SENT
                log.warning("webhook: gateway answered HTTP %d", resp.status)
                if resp.status in (401, 403):
                    return failed(ErrorCode.AUTH_FAILED)
                return failed(ErrorCode.UNREACHABLE if resp.status >= 500 else ErrorCode.REJECTED)

        return await run_bounded("webhook send", self._mapped(go()), self.settings.timeout)

    @staticmethod
    async def _mapped(call: Awaitable[SendResult]) -> SendResult:
        try:
            return await call
        except TimeoutError:
            return failed(ErrorCode.TIMEOUT)
        except aiohttp.ClientConnectionError as exc:
            log.warning("webhook: gateway unreachable (%s)", type(exc).__name__)
            return failed(ErrorCode.UNREACHABLE)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.settings.timeout))
        return self._session

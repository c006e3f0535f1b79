"""Codes and notifications by e-mail through an SMTP relay (aiosmtplib).

``security: starttls`` *requires* STARTTLS (``start_tls=True``): an
opportunistic upgrade would let an on-path attacker strip it and read the
code.  The recipient is the login id when it is an e-mail address, else the
address from the configured HTTP lookup; neither is ever logged.  Only
transport failures (timeout, refused connection, refused credentials) count
against the channel's health; a refused recipient is this account's problem.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import aiohttp
import aiosmtplib

from guard.challenge import i18n
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
from guard.challenge.channels.lookup import LookupError_, build_url, is_email, lookup_address
from guard.challenge.settings import EmailSettings

log = logging.getLogger("guard.challenge.channels.email")


class EmailChannel:
    name = "email"
    delivers = True

    def __init__(self, settings: EmailSettings, tls_context: ssl.SSLContext | None = None) -> None:
        self.settings = settings
        self._tls = tls_context
        self._http: aiohttp.ClientSession | None = None

    def can_reach(self, recipient: Recipient) -> bool:
        return is_email(recipient.login_id) or self.settings.lookup_url is not None

    async def send(self, recipient: Recipient, code: str, context: SendContext) -> SendResult:
        lang = context.lang
        subject = i18n.text(lang, "mail.subject", brand=context.brand)
        body = i18n.text(lang, "mail.body", code=code, minutes=max(1, context.expires_in // 60))
        body += i18n.text(lang, "mail.verified" if context.verified else "mail.attempt")
        return await self._deliver(recipient, subject, body)

    async def notify(self, recipient: Recipient, notice: Notice, context: SendContext) -> SendResult:
        return await self._deliver(recipient, notice.subject, notice.text)

    async def check(self) -> SendResult:
        """Connect, (STARTTLS), EHLO, NOOP, QUIT: the relay is up and speaks TLS; nothing is sent."""

        async def probe() -> SendResult:
            async with self._smtp() as client:
                await client.noop()
            return SENT

        return await run_bounded("email check", self._mapped(probe()), self.settings.timeout)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    # ---- internals ----------------------------------------------------------------------------

    async def _deliver(self, recipient: Recipient, subject: str, body: str) -> SendResult:
        async def go() -> SendResult:
            address = await self._address(recipient)
            if address is None:
                return failed(ErrorCode.NO_RECIPIENT)
            msg = EmailMessage()
            msg["From"] = self.settings.sender
            msg["To"] = address
            msg["Subject"] = subject
            msg["Date"] = formatdate(localtime=False)
            msg["Message-ID"] = make_msgid(domain=self.settings.sender.rpartition("@")[2])
            msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to this
            msg.set_content(body)
            async with self._smtp() as client:
                await client.send_message(msg)
            return SENT

        return await run_bounded("email send", self._mapped(go()), self.settings.timeout)

    async def _mapped(self, call: Awaitable[SendResult]) -> SendResult:
        """SMTP and lookup errors as error codes (``run_bounded`` covers timeouts and the rest)."""
        try:
            return await call
        except LookupError_ as exc:
            log.warning("email: recipient lookup failed (%s)", exc)
            return failed(ErrorCode.LOOKUP_FAILED)
        except aiosmtplib.SMTPAuthenticationError:
            log.error("email: the relay refused our credentials")
            return failed(ErrorCode.AUTH_FAILED)
        except aiosmtplib.SMTPTimeoutError:
            return failed(ErrorCode.TIMEOUT)
        except (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPServerDisconnected):
            log.warning("email: relay unreachable")
            return failed(ErrorCode.UNREACHABLE)
        except (
            aiosmtplib.SMTPRecipientsRefused,
            aiosmtplib.SMTPRecipientRefused,
            aiosmtplib.SMTPSenderRefused,
            aiosmtplib.SMTPDataError,
            aiosmtplib.SMTPResponseException,
        ) as exc:
            log.warning("email: relay refused the message (%s)", type(exc).__name__)
            return failed(ErrorCode.REJECTED)
        except aiosmtplib.SMTPException as exc:
            # What is left is the session itself failing (no STARTTLS offered, a broken
            # TLS state): the channel is unusable, whoever the recipient.
            log.warning("email: SMTP session failed (%s)", type(exc).__name__)
            return failed(ErrorCode.UNREACHABLE)
        except aiohttp.ClientError as exc:
            log.warning("email: recipient lookup unreachable (%s)", type(exc).__name__)
            return failed(ErrorCode.LOOKUP_FAILED)

    async def _address(self, recipient: Recipient) -> str | None:
        if is_email(recipient.login_id):
            return recipient.login_id
        s = self.settings
        if s.lookup_url is None:
            return None
        if self._http is None:
            self._http = aiohttp.ClientSession()
        url = build_url(s.lookup_url, recipient.login_id, recipient.account_key)
        token = s.lookup_token.get_secret_value() if s.lookup_token else None
        return await lookup_address(self._http, url, s.lookup_pointer, token, s.lookup_timeout)

    @contextlib.asynccontextmanager
    async def _smtp(self) -> AsyncIterator[aiosmtplib.SMTP]:
        """A connected client that is closed however the block ends (refused AUTH, timeout, cancel).

        AUTH runs here, not inside ``connect()``: a refused login inside ``connect()`` starts a
        TLS close_notify exchange that nobody awaits, and the socket outlives the call.  Aborting
        the transport ends the connection at once; after QUIT (or a failure) nothing is left to say.
        """
        s = self.settings
        client = self._client()
        try:
            await client.connect()
            if s.username:
                await client.login(s.username, s.password.get_secret_value() if s.password else "")
            yield client
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await client.quit()
        finally:
            abort = getattr(client.transport, "abort", None)  # uvloop's transports are not asyncio.Transport
            if abort is not None:
                abort()
            client.close()

    def _client(self) -> aiosmtplib.SMTP:
        s = self.settings
        return aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            timeout=s.timeout,
            use_tls=s.security == "tls",
            start_tls=s.security == "starttls",
            validate_certs=s.verify_certs,
            tls_context=self._tls,
        )

"""Code channels against real servers: aiosmtpd (plain, STARTTLS, TLS, AUTH) and an aiohttp webhook receiver.

Failure cases are real too: a closed port, a server that accepts and never
speaks, a receiver that sleeps past the timeout.  Each must come back as an
error code, quickly, never as an exception or a hang.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from guard.challenge.channels import REGISTRY, Deps, ErrorCode, Notice, Recipient, SendContext, build_channels
from guard.challenge.channels.email import EmailChannel
from guard.challenge.channels.lookup import build_url, is_email, resolve_pointer
from guard.challenge.channels.webhook import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookChannel,
    verify_signature,
)
from guard.challenge.settings import ChallengeSettings, EmailSettings, WebhookSettings
from tests.redisserver import free_port

ALICE = Recipient("alice@example.com", "acct-alice")
CTX = SendContext(lang="en", brand="Example", expires_in=300)
WEBHOOK_SECRET = "s3cret-webhook-key-0123456789"


# ---- an SMTP server ------------------------------------------------------------------------------


@dataclass
class Mailbox:
    messages: list[tuple[Envelope, EmailMessage]] = field(default_factory=list)
    logins: list[bytes] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        raw = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content).encode()
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        self.messages.append((envelope, msg))
        return "250 OK"


@dataclass
class Smtp:
    port: int
    box: Mailbox
    client_tls: ssl.SSLContext | None = None

    def settings(self, **kw: Any) -> EmailSettings:
        base: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.port,
            "security": "none",
            "sender": "guard@example.com",
            "timeout": 5,
        }
        base.update(kw)
        return EmailSettings.model_validate(base)


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


def _tls_pair(ca: trustme.CA) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


def _authenticate(server: Any, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (bytes(data.login), bytes(data.password)) == (
        b"guard",
        b"relay-pass",
    )
    return AuthResult(success=ok, handled=False)


@pytest.fixture
def smtp_server() -> Iterator[Smtp]:
    """A plain SMTP server on a free port (what the service tests use)."""
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield Smtp(controller.port, box)
    finally:
        controller.stop()


@pytest.fixture
def smtp_starttls(ca: trustme.CA) -> Iterator[Smtp]:
    """STARTTLS required, AUTH required (and only over TLS)."""
    box = Mailbox()
    server_ctx, client_ctx = _tls_pair(ca)
    controller = Controller(
        box,
        hostname="127.0.0.1",
        port=free_port(),
        tls_context=server_ctx,
        require_starttls=True,
        auth_required=True,
        authenticator=_authenticate,
    )
    controller.start()
    try:
        yield Smtp(controller.port, box, client_ctx)
    finally:
        controller.stop()


@pytest.fixture
def smtp_implicit_tls(ca: trustme.CA) -> Iterator[Smtp]:
    box = Mailbox()
    server_ctx, client_ctx = _tls_pair(ca)
    controller = Controller(box, hostname="127.0.0.1", port=free_port(), ssl_context=server_ctx)
    controller.start()
    try:
        yield Smtp(controller.port, box, client_ctx)
    finally:
        controller.stop()


async def test_email_plain_delivers_a_localised_code(smtp_server: Smtp) -> None:
    channel = EmailChannel(smtp_server.settings())
    result = await channel.send(ALICE, "123456", SendContext(lang="ja", brand="Example", expires_in=300))
    assert result.ok and result.error_code is None
    [(envelope, msg)] = smtp_server.box.messages
    assert envelope.rcpt_tos == ["alice@example.com"] and msg["From"] == "guard@example.com"
    assert msg["Subject"] == "Example: 確認コード" and msg["Auto-Submitted"] == "auto-generated"
    body = msg.get_content()
    assert "123456" in body and "5 分" in body
    await channel.aclose()


async def test_email_starttls_with_auth(smtp_starttls: Smtp) -> None:
    channel = EmailChannel(
        smtp_starttls.settings(security="starttls", username="guard", password="relay-pass"),
        tls_context=smtp_starttls.client_tls,
    )
    assert (await channel.send(ALICE, "654321", CTX)).ok
    assert "654321" in smtp_starttls.box.messages[0][1].get_content()
    assert (await channel.check()).ok
    assert len(smtp_starttls.box.messages) == 1  # the health check sends nothing


async def test_email_wrong_password_is_auth_failed(smtp_starttls: Smtp) -> None:
    channel = EmailChannel(
        smtp_starttls.settings(security="starttls", username="guard", password="nope"),
        tls_context=smtp_starttls.client_tls,
    )
    result = await channel.send(ALICE, "654321", CTX)
    assert result.error_code is ErrorCode.AUTH_FAILED and result.transport_failure
    assert smtp_starttls.box.messages == []


async def test_email_starttls_required_against_a_plain_server(smtp_server: Smtp) -> None:
    """A relay (or an attacker in the path) that offers no STARTTLS must not get the code in clear."""
    channel = EmailChannel(smtp_server.settings(security="starttls"))
    result = await channel.send(ALICE, "111111", CTX)
    assert not result.ok and result.error_code is ErrorCode.UNREACHABLE
    assert smtp_server.box.messages == []


async def test_email_implicit_tls(smtp_implicit_tls: Smtp) -> None:
    channel = EmailChannel(
        smtp_implicit_tls.settings(security="tls"), tls_context=smtp_implicit_tls.client_tls
    )
    assert (await channel.send(ALICE, "222222", CTX)).ok
    assert len(smtp_implicit_tls.box.messages) == 1


async def test_email_server_down_is_quick_and_unreachable() -> None:
    channel = EmailChannel(
        EmailSettings(
            host="127.0.0.1", port=free_port(), security="none", sender="guard@example.com", timeout=5
        )
    )
    start = time.monotonic()
    result = await channel.send(ALICE, "333333", CTX)
    assert result.error_code is ErrorCode.UNREACHABLE
    assert (await channel.check()).error_code is ErrorCode.UNREACHABLE
    assert time.monotonic() - start < 2


async def test_email_silent_server_times_out() -> None:
    """Accepts the connection, never greets: bounded by the channel timeout."""
    writers: list[asyncio.StreamWriter] = []

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.read()

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        channel = EmailChannel(
            EmailSettings(
                host="127.0.0.1", port=port, security="none", sender="guard@example.com", timeout=0.3
            )
        )
        start = time.monotonic()
        result = await channel.send(ALICE, "444444", CTX)
        assert result.error_code is ErrorCode.TIMEOUT
        assert time.monotonic() - start < 1.5
    finally:
        for w in writers:
            w.close()
        server.close()
        await server.wait_closed()


# ---- the HTTP lookup of a recipient --------------------------------------------------------------


@pytest.fixture
async def directory() -> AsyncIterator[TestServer]:
    async def user(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer dir-token":
            return web.Response(status=401)
        login = request.match_info["login"]
        if login == "member 42":
            return web.json_response({"contact": {"email": "owner42@example.com"}})
        if login == "bad":
            return web.json_response({"contact": {"email": "not an address"}})
        return web.Response(status=404)

    app = web.Application()
    app.router.add_get("/users/{login}", user)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


async def test_email_recipient_from_lookup(smtp_server: Smtp, directory: TestServer) -> None:
    settings = smtp_server.settings(
        lookup_url=f"http://127.0.0.1:{directory.port}/users/{{login}}",
        lookup_pointer="/contact/email",
        lookup_token="dir-token",
    )
    channel = EmailChannel(settings)
    member = Recipient("member 42", "acct-42")
    assert channel.can_reach(member)
    assert (await channel.send(member, "555555", CTX)).ok
    assert smtp_server.box.messages[0][0].rcpt_tos == ["owner42@example.com"]
    for login in ("unknown", "bad"):
        result = await channel.send(Recipient(login, "x"), "555555", CTX)
        assert result.error_code is ErrorCode.LOOKUP_FAILED and not result.transport_failure
    await channel.aclose()


async def test_email_without_lookup_cannot_reach_a_non_address(smtp_server: Smtp) -> None:
    channel = EmailChannel(smtp_server.settings())
    assert not channel.can_reach(Recipient("member42", "a"))
    assert (await channel.send(Recipient("member42", "a"), "1", CTX)).error_code is ErrorCode.NO_RECIPIENT


def test_lookup_helpers() -> None:
    assert (
        build_url("https://d/u/{login}?a={account}", "a b/c@x", "k{1}")
        == "https://d/u/a%20b%2Fc%40x?a=k%7B1%7D"
    )
    assert build_url("https://d/{login}", "{account}", "K") == "https://d/%7Baccount%7D"  # no re-expansion
    assert resolve_pointer({"a": [{"b~/": 1}]}, "/a/0/b~0~1") == 1
    assert is_email("a@b.example") and not is_email("a@b") and not is_email("<a@b.c>")


# ---- webhook --------------------------------------------------------------------------------------


@dataclass
class Receiver:
    server: TestServer
    received: list[dict[str, Any]]

    def settings(self, path: str = "/hook", **kw: Any) -> WebhookSettings:
        return WebhookSettings.model_validate(
            {"url": str(self.server.make_url(path)), "secret": WEBHOOK_SECRET, "timeout": 0.5, **kw}
        )


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        ok = verify_signature(
            WEBHOOK_SECRET.encode(),
            request.headers.get(TIMESTAMP_HEADER, ""),
            body,
            request.headers.get(SIGNATURE_HEADER, ""),
            time.time(),
        )
        if not ok:
            return web.Response(status=401)
        received.append(json.loads(body))
        return web.Response(status=204)

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(status=204)

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=503)

    async def refuses(request: web.Request) -> web.Response:
        return web.Response(status=400)

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_post("/slow", slow)
    app.router.add_post("/broken", broken)
    app.router.add_post("/refuses", refuses)
    app.router.add_get("/health", health)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield Receiver(server, received)
    await server.close()


async def test_webhook_delivers_a_signed_payload(receiver: Receiver) -> None:
    channel = WebhookChannel(receiver.settings(health_url=str(receiver.server.make_url("/health"))))
    assert (await channel.send(ALICE, "777777", CTX)).ok
    assert receiver.received == [
        {
            "event": "code",
            "code": "777777",
            "expires_in": 300,
            "account": "acct-alice",
            "lang": "en",
            "brand": "Example",
            "password_verified": True,
            "login": "alice@example.com",
        }
    ]
    notice = Notice("Example: new sign-in", "A sign-in from Thailand", "en")
    assert (await channel.notify(ALICE, notice, CTX)).ok
    assert receiver.received[1]["event"] == "login_notice" and receiver.received[1]["text"] == notice.text
    assert (await channel.check()).ok
    await channel.aclose()


async def test_webhook_signature_is_checked_by_the_receiver(receiver: Receiver) -> None:
    forged = WebhookSettings.model_validate(
        {"url": str(receiver.server.make_url("/hook")), "secret": "another-secret-0123456789"}
    )
    channel = WebhookChannel(forged)
    assert (await channel.send(ALICE, "1", CTX)).error_code is ErrorCode.AUTH_FAILED
    assert receiver.received == []
    await channel.aclose()


def test_verify_signature_rejects_stale_and_altered() -> None:
    from guard.challenge.channels.webhook import sign

    key, body, now = b"k" * 20, b'{"a":1}', 1_700_000_000
    sig = sign(key, now, body)
    assert verify_signature(key, str(now), body, sig, now + 10)
    assert not verify_signature(key, str(now), body + b" ", sig, now)
    assert not verify_signature(key, str(now), body, sig, now + 301)  # a replay, later
    assert not verify_signature(key, "abc", body, sig, now)


@pytest.mark.parametrize(
    ("path", "code"),
    [("/slow", ErrorCode.TIMEOUT), ("/broken", ErrorCode.UNREACHABLE), ("/refuses", ErrorCode.REJECTED)],
)
async def test_webhook_failures_are_codes_and_quick(receiver: Receiver, path: str, code: ErrorCode) -> None:
    channel = WebhookChannel(receiver.settings(path))
    start = time.monotonic()
    result = await channel.send(ALICE, "1", CTX)
    assert result.error_code is code and not result.ok
    assert time.monotonic() - start < 1.5
    await channel.aclose()


async def test_webhook_down() -> None:
    channel = WebhookChannel(
        WebhookSettings(
            url=f"http://127.0.0.1:{free_port()}/hook",
            secret=WEBHOOK_SECRET,
            health_url=f"http://127.0.0.1:{free_port()}/health",
        )
    )
    assert (await channel.send(ALICE, "1", CTX)).error_code is ErrorCode.UNREACHABLE
    assert (await channel.check()).error_code is ErrorCode.UNREACHABLE
    await channel.aclose()


def test_registry_builds_configured_channels_in_order() -> None:
    from guard.challenge.channels.totp import Enrolments
    from guard.challenge.keys import KeyRing, new_key
    from guard.challenge.sealed import Sealer
    from guard.store import MemoryStore

    s = ChallengeSettings.model_validate(
        {
            "keys": [new_key()],
            "channels": {
                "order": ["webhook", "email", "totp"],
                "email": {"host": "smtp.example", "sender": "g@example.com"},
            },
        }
    )
    deps = Deps(Enrolments(MemoryStore(), Sealer(KeyRing([b"\x01" * 32])), s.channels.totp))
    assert list(build_channels(s, deps)) == ["email", "totp"]  # no webhook configured
    assert set(REGISTRY) == {"totp", "email", "webhook"}

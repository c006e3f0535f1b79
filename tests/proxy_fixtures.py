"""Fixtures for the proxy tests: a real upstream, a real guard, raw-socket helpers.

Everything runs for real on 127.0.0.1 with port 0: an aiohttp upstream whose
handlers record what arrived, a ``GuardServer`` in front of it, and clients that
are either aiohttp or raw sockets (when the exact bytes on the wire matter).
Run as ``python -m tests.proxy_fixtures CONFIG.json`` it is a guard in a child
process, for the tests that measure the guard's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import random
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import ClientSession, WSMsgType, web
from multidict import CIMultiDict

from guard.config import Config
from guard.http import GuardServer
from guard.store.base import Store

# ---- the upstream ---------------------------------------------------------------------------------


@dataclass
class Seen:
    """One request as the upstream received it."""

    method: str
    raw_path: str
    headers: list[tuple[str, str]]
    body: bytes
    peer: str

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


def block(i: int, size: int = 65536) -> bytes:
    """Deterministic pseudo-random bytes: block ``i`` of a stream."""
    return random.Random(i).randbytes(size)


@dataclass
class Upstream:
    """An aiohttp upstream.  Paths pick behaviours; every request is recorded in ``seen``."""

    seen: list[Seen] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    held: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    ws_close_codes: list[int | None] = field(default_factory=list)
    ws_closed: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    scheme: str = "http"
    _runner: asyncio.Server | None = None
    _server: web.Server | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self._server = web.Server(self.handle, auto_decompress=False, access_log=None)
        loop = asyncio.get_running_loop()
        self._runner = await loop.create_server(self._server, "127.0.0.1", 0, ssl=ssl_context)
        self.port = self._runner.sockets[0].getsockname()[1]
        self.scheme = "https" if ssl_context else "http"

    async def close(self) -> None:
        self.release.set()
        if self._runner is not None:
            self._runner.close()
        if self._server is not None:
            await self._server.shutdown(1.0)
        if self._runner is not None:
            await self._runner.wait_closed()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.raw_path
        if path.startswith("/ws"):
            return await self._ws(request)
        body = b"".join([chunk async for chunk in request.content.iter_any()])  # no size limit
        peer = request.transport.get_extra_info("peername")[0] if request.transport else ""
        seen = Seen(request.method, path, [(k.decode(), v.decode("latin-1")) for k, v in request.raw_headers],
                    body, peer)
        self.seen.append(seen)
        if path.startswith("/cookies"):
            headers = CIMultiDict([("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; HttpOnly"),
                                   ("Set-Cookie", "c=3"), ("Content-Type", "text/plain")])
            return web.Response(body=b"cookies", headers=headers)
        if path.startswith("/hop"):
            return web.Response(body=b"hop", headers={
                "Connection": "X-Secret-Hop", "X-Secret-Hop": "leak", "Keep-Alive": "timeout=5",
                "Proxy-Authenticate": "Basic", "Trailer": "X-T", "X-Kept": "yes"})
        if path.startswith("/chunked"):
            resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for part in (b"one,", b"two,", b"three"):
                await resp.write(part)
            await resp.write_eof()
            return resp
        if path.startswith("/stream/"):
            blocks = int(path.rsplit("/", 1)[1])
            resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for i in range(blocks):
                await resp.write(block(i))
            await resp.write_eof()
            return resp
        if path.startswith("/hold"):
            self.held += 1
            self.arrived.set()
            await self.release.wait()
            return web.Response(text="released")
        if path.startswith("/reset"):
            resp = web.StreamResponse(headers={"Content-Length": "1000000"})
            await resp.prepare(request)
            await resp.write(b"x" * 1000)
            request.protocol.force_close()  # mid-body: the guard sees the upstream vanish
            return resp
        if path.startswith("/login"):
            if b"password=good" in body:
                return web.Response(status=302, headers={"Location": "/home", "Set-Cookie": "session=s1"})
            return web.Response(text="wrong password", content_type="text/html")
        if path.startswith("/redirect"):
            return web.Response(status=302, headers={"Location": "/elsewhere"})
        echo = {
            "method": request.method, "raw_path": path, "headers": seen.headers,
            "body_len": len(body), "body_sha256": hashlib.sha256(body).hexdigest(),
        }
        return web.json_response(echo)

    async def _ws(self, request: web.BaseRequest) -> web.StreamResponse:
        headers = [(k.decode(), v.decode("latin-1")) for k, v in request.raw_headers]
        self.seen.append(Seen(request.method, request.raw_path, headers, b"", ""))
        ws = web.WebSocketResponse(protocols=("chat.v2", "chat.v1"))
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                if msg.data.startswith("close:"):
                    await ws.close(code=int(msg.data[6:]), message=b"upstream says bye")
                    break
                await ws.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        self.ws_close_codes.append(ws.close_code)
        self.ws_closed.set()
        return ws


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    await up.start()
    yield up
    await up.close()


# ---- the guard ------------------------------------------------------------------------------------


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def make_config(upstream_url: str, tmp_path: Path, rules: str | None = None, **overrides: Any) -> Config:
    data: dict[str, Any] = {
        "upstream": upstream_url,
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0"},
        "attack": {"enabled": False},
        "state_dir": str(tmp_path / "state"),
    }
    if rules is not None:
        path = tmp_path / f"rules-{len(list(tmp_path.glob('rules-*.yaml')))}.yaml"
        path.write_text(rules)
        data["rules"] = [str(path)]
    return Config.model_validate(merge(data, overrides))


@dataclass
class Guard:
    server: GuardServer
    stream: io.StringIO
    host: str = "127.0.0.1"

    @property
    def port(self) -> int:
        return self.server.public_port

    def url(self, path: str = "/") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "https" if self.server.config.tls else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    def admin(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.admin_port}{path}"

    def log(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines() if line]


GuardFactory = Callable[..., Awaitable[Guard]]


@pytest.fixture
async def make_guard(tmp_path: Path) -> AsyncIterator[GuardFactory]:
    """``await make_guard(upstream_url, rules=..., use_store=..., **config_overrides)``: a started guard."""
    started: list[GuardServer] = []

    async def factory(upstream_url: str, *, use_store: Store | None = None, rules: str | None = None,
                      **overrides: Any) -> Guard:
        config = make_config(upstream_url, tmp_path, rules, **overrides)
        stream = io.StringIO()
        server = GuardServer(config, store=use_store, log_stream=stream)
        await server.start()
        started.append(server)
        return Guard(server, stream, config.listen.host)

    yield factory
    for server in started:
        await server.stop(0.5)


@pytest.fixture
async def client() -> AsyncIterator[ClientSession]:
    async with ClientSession(auto_decompress=False) as session:
        yield session


# ---- TLS ------------------------------------------------------------------------------------------


@dataclass
class TLSFiles:
    ca: trustme.CA
    cert: Path
    key: Path
    ca_pem: Path

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1", "::1", "upstream.test")
    d = tmp_path_factory.mktemp("tls")
    cert, key, ca_pem = d / "cert.pem", d / "key.pem", d / "ca.pem"
    cert.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(key)
    ca.cert_pem.write_to_path(ca_pem)
    return TLSFiles(ca, cert, key, ca_pem)


# ---- raw HTTP -------------------------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


def parse_response(data: bytes) -> RawResponse:
    """One HTTP/1.1 response (after any 1xx), body de-chunked."""
    while True:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        if status >= 200:
            break
        data = rest
    headers = [(k, v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
    if any(k.lower() == "transfer-encoding" and "chunked" in v.lower() for k, v in headers):
        body = b""
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            body += rest[:size]
            rest = rest[size + 2 :]
        return RawResponse(status, headers, body)
    return RawResponse(status, headers, rest)


async def read_response(reader: asyncio.StreamReader) -> RawResponse:
    """Exactly one response with a Content-Length, without waiting for the connection to close."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return parse_response(head + await asyncio.wait_for(reader.readexactly(length), 10))


async def raw_get(port: int, target: str = "/", **kwargs: Any) -> RawResponse:
    """``GET target`` on a fresh connection, parsed."""
    request = f"GET {target} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".encode()
    return parse_response(await raw_exchange(port, request, **kwargs))


async def raw_exchange(
    port: int, data: bytes, *, host: str = "127.0.0.1", ssl_context: ssl.SSLContext | None = None,
    prefix: bytes = b"", wait: float = 10.0, source: str | None = None,
) -> bytes:
    """Send ``prefix`` (a PROXY header, before TLS), then ``data``; read until the server closes.

    ``source``: the local address to connect from (another loopback address is another peer).
    """
    local = (source, 0) if source is not None else None
    reader, writer = await asyncio.open_connection(host, port, local_addr=local)
    try:
        if prefix:
            writer.write(prefix)
            await writer.drain()
        if ssl_context is not None:
            await writer.start_tls(ssl_context, server_hostname="localhost")
        writer.write(data)
        await writer.drain()
        try:
            return await asyncio.wait_for(reader.read(), wait)
        except ConnectionResetError:  # closed with our bytes unread: the kernel sends RST
            return b""
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


# ---- a guard in a child process -------------------------------------------------------------------


def _load_child_config(path: str) -> Config:
    return Config.model_validate(json.loads(Path(path).read_text()))


async def _serve_child(config_path: str) -> None:
    import signal

    config = _load_child_config(config_path)
    server = GuardServer(config, log_stream=io.StringIO())
    await server.start()
    print(json.dumps({"public_port": server.public_port, "admin_port": server.admin_port}), flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1.0)


if __name__ == "__main__":
    asyncio.run(_serve_child(sys.argv[1]))

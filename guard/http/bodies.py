"""The bodies the guard reads itself: login requests (whole) and login responses (the head).

Everything else is streamed.  A login body is buffered because the engine
needs the username; it is bounded in size (``limits.max_body_size``, 413) and
in time (``timeouts.client_body``, 408), so a client cannot pin memory or a
connection with it.
"""

from __future__ import annotations

import asyncio

from aiohttp import ClientResponse, web
from aiohttp.http import HttpVersion11
from aiohttp.web_protocol import RequestPayloadError

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


async def send_continue(request: web.BaseRequest) -> None:
    """RFC 9110 section 10.1.1: tell a client waiting on ``Expect: 100-continue`` to send its body."""
    expect = request.headers.get("Expect")
    if expect is not None and expect.lower() == "100-continue" and request.version >= HttpVersion11:
        await request.writer.write(_CONTINUE)


async def read_login_body(request: web.BaseRequest, limit: int, deadline: float) -> bytes | int:
    """The whole body, or the status to answer: 413 too large, 408 too slow, 400 malformed."""
    if not request.body_exists:
        return b""
    length = request.content_length
    if length is not None and length > limit:
        return 413  # refused before the client sends it: no 100 Continue
    content = request.content
    if content.is_eof():
        # The common login form arrived whole with its head: no wait, no timer.
        try:
            whole = content.read_nowait()
        except RequestPayloadError:
            return 400
        return 413 if len(whole) > limit else whole
    await send_continue(request)
    buf = bytearray()
    try:
        async with asyncio.timeout(deadline):
            while True:
                chunk = await content.readany()
                if not chunk:
                    break
                buf += chunk
                if len(buf) > limit:
                    return 413
    except TimeoutError:
        return 408
    except (RequestPayloadError, ConnectionError):
        return 400
    return bytes(buf)


async def read_response_head(up: ClientResponse, size: int) -> bytes:
    """Up to about ``size`` bytes of a response body, for the outcome classifier; sent on after it."""
    buf = bytearray()
    content = up.content
    while len(buf) < size:
        chunk = await content.readany()
        if not chunk:
            break
        buf += chunk
    return bytes(buf)

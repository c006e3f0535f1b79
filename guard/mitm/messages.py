"""mitmproxy messages from the guard's transport-free answers, and bodies replaced with their length right.

The engine, the challenge service and the PII policy speak in ``(name,
value)`` pairs and raw bytes; mitmproxy in ``Headers`` of bytes and in a
``content`` property that re-encodes whatever it is given.  Everything the
guard sends is already in its final coding (a held answer as the upstream
compressed it, a page rewritten and re-compressed), so it is set as
``raw_content``, and the length is fixed by hand.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from mitmproxy import http
from mitmproxy.net.http import status_codes

from guard.forwarding import HOP_BY_HOP

_CONNECTION = HOP_BY_HOP | {"content-length"}
"""Fields that describe the connection a message came on, never the one it leaves on."""


def fields(pairs: Iterable[tuple[str, str]]) -> http.Headers:
    """``Headers`` from text pairs, repeats and order kept; bytes that were not UTF-8 survive (surrogateescape)."""
    return http.Headers([
        (k.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape"))
        for k, v in pairs
        if k.lower() not in _CONNECTION
    ])


def pairs(headers: http.Headers) -> list[tuple[str, str]]:
    """Every field of ``headers`` as text pairs, repeats kept (``items()`` would fold ``Set-Cookie``)."""
    return [(k.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape")) for k, v in headers.fields]


def response(status: int, headers: Iterable[tuple[str, str]], body: bytes) -> http.Response:
    """A response that goes out exactly as given: the body is not re-encoded, only its length is added."""
    now = time.time()
    reason = status_codes.RESPONSES.get(status, "").encode()
    resp = http.Response(b"HTTP/1.1", status, reason, fields(headers), b"", None, now, now)
    set_raw(resp, body)
    return resp


def set_raw(msg: http.Message, body: bytes) -> None:
    """Replace a message's body with bytes already in the coding its headers say; fix the length.

    As mitmproxy's own ``content`` setter does, no ``Content-Length`` is set
    beside a ``Transfer-Encoding``: mitmproxy frames such a body itself.
    """
    msg.raw_content = body
    if "transfer-encoding" not in msg.headers:
        msg.headers["content-length"] = str(len(body))


class MutableFields:
    """mitmproxy's ``Headers`` as ``guard.pii.response.MutableHeaders`` (what ``HeaderChanges.apply`` needs)."""

    __slots__ = ("_headers",)

    def __init__(self, headers: http.Headers) -> None:
        self._headers = headers

    def popall(self, key: str, default: None, /) -> list[str] | None:
        values: list[str] = self._headers.get_all(key)
        if not values:
            return default
        del self._headers[key]
        return values

    def __setitem__(self, key: str, value: str, /) -> None:
        self._headers[key] = value


def cookie_header(headers: http.Headers) -> dict[str, str]:
    """The request's cookies as one ``Cookie`` field: HTTP/2 sends several, which mitmproxy would join with ", "."""
    return {"Cookie": "; ".join(headers.get_all("Cookie"))}

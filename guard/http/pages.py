"""The guard's own answers (block, limits, upstream failures) as branded pages.

Every error the guard produces goes through here, so one place decides what a
client may learn: a title, a sentence and the status code.  Never exception
text, never the upstream's address, never which limit or rule fired (that goes
to the decision log).  Bodies are rendered once per status and cached; a reload
with a new brand builds a new ``Pages``.
"""

from __future__ import annotations

import html
import json
from http import HTTPStatus
from typing import NamedTuple

from aiohttp import web

from guard.config import Brand

# status -> (machine code, title, sentence).  Wording is deliberately vague about
# the cause: "blocked" does not say by which rule, "unreachable" not where.
_TEXT: dict[int, tuple[str, str, str]] = {
    400: ("bad_request", "Bad request", "The request could not be understood."),
    403: ("blocked", "Access denied", "This request was blocked."),
    404: ("not_found", "Not found", "There is nothing here."),
    408: ("request_timeout", "Request timeout", "The request took too long to arrive."),
    413: ("body_too_large", "Request too large", "The request body is larger than allowed."),
    414: ("uri_too_long", "Address too long", "The requested address is longer than allowed."),
    429: ("too_many_requests", "Too many requests", "Too many attempts. Please wait and try again."),
    431: ("headers_too_large", "Request headers too large", "The request headers are larger than allowed."),
    500: ("internal_error", "Something went wrong", "An unexpected error occurred. Please try again."),
    502: ("bad_gateway", "Service unreachable", "The service could not be reached. Please try again."),
    503: (
        "unavailable",
        "Temporarily unavailable",
        "The service is temporarily unavailable. Please try again shortly.",
    ),
    504: ("gateway_timeout", "Service timeout", "The service took too long to answer. Please try again."),
}

_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} - {name}</title>
<style>
body{{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;background:#f6f8fa;color:#1f2328}}
main{{max-width:34rem;margin:12vh auto;padding:2rem;background:#fff;border-radius:8px;
border-top:6px solid {color};box-shadow:0 1px 3px rgba(0,0,0,.12)}}
h1{{margin:0 0 .5rem;font-size:1.5rem}} .code{{color:{color};font-weight:600}}
footer{{margin-top:1.5rem;font-size:.875rem;color:#59636e}}
</style></head>
<body><main><p class="code">{status}</p><h1>{title}</h1><p>{message}</p>
<footer>{support}{name}</footer></main></body></html>
"""

# Our pages contain no script and only inline style; nothing on them should be
# framed, sniffed or cached (a 403 must not be served from a cache to others).
_PAGE_HEADERS = (
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'"),
)


class _Body(NamedTuple):
    data: bytes
    content_type: str


def wants_json(accept: str) -> bool:
    """An API client (asks for JSON and not for HTML) gets JSON; browsers get HTML."""
    if not accept:
        return False
    a = accept.lower()
    return "json" in a and "text/html" not in a


def _text(status: int) -> tuple[str, str, str]:
    known = _TEXT.get(status)
    if known is not None:
        return known
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return (phrase.lower().replace(" ", "_").replace("-", "_"), phrase, "The request could not be completed.")


class Pages:
    """Branded HTML and JSON error bodies, rendered once per status."""

    __slots__ = ("_cache", "_raw", "_server", "brand")

    def __init__(self, brand: Brand) -> None:
        self.brand = brand
        # header values must be visible ASCII (RFC 9110 section 5.5); the brand name may not be
        self._server = "".join(c if " " <= c <= "~" else "?" for c in brand.name) or "loginguard"
        self._cache: dict[tuple[int, bool], _Body] = {}
        self._raw: dict[int, bytes] = {}

    @property
    def server_name(self) -> str:
        """The ``Server`` value of the guard's own answers: the brand, never software versions."""
        return self._server

    def body(self, status: int, json_body: bool) -> _Body:
        key = (status, json_body)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._render(status, json_body)
            self._cache[key] = cached
        return cached

    def _render(self, status: int, json_body: bool) -> _Body:
        code, title, message = _text(status)
        if json_body:
            data = json.dumps({"error": code, "status": status, "message": message}).encode()
            return _Body(data, "application/json")
        esc = html.escape
        name = esc(self.brand.name)
        support = f"{esc(self.brand.support)}<br>" if self.brand.support else ""
        page = _HTML.format(
            title=esc(title), message=esc(message), status=status, name=name,
            color=self.brand.color, support=support,
        )
        return _Body(page.encode(), "text/html; charset=utf-8")

    def response(self, status: int, accept: str = "", *, close: bool = False) -> web.Response:
        """A ready ``web.Response``; ``close`` ends the connection after it (unread body, attack)."""
        body = self.body(status, wants_json(accept))
        resp = web.Response(status=status, body=body.data, headers=_PAGE_HEADERS)
        resp.headers["Content-Type"] = body.content_type
        resp.headers["Server"] = self._server  # not aiohttp's default, which names versions
        if close:
            resp.force_close()
        return resp

    def raw(self, status: int) -> bytes:
        """A complete HTTP/1.1 response that closes the connection.

        For answers given below the HTTP layer (header timeout, oversized head,
        too many connections), where there is no request object to answer with.
        """
        cached = self._raw.get(status)
        if cached is None:
            body = self.body(status, False)
            try:
                phrase = HTTPStatus(status).phrase
            except ValueError:
                phrase = "Error"
            head = [f"HTTP/1.1 {status} {phrase}", f"Content-Type: {body.content_type}",
                    f"Content-Length: {len(body.data)}", "Connection: close", f"Server: {self._server}"]
            head += [f"{k}: {v}" for k, v in _PAGE_HEADERS]
            cached = ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body.data
            self._raw[status] = cached
        return cached

"""PII through the real proxy: a GuardServer in front of an aiohttp upstream, every byte on real sockets.

Responses: compressed pages rewritten and re-encoded with correct headers, other
types untouched byte for byte, streamed pages, legacy charsets, JSON by pointer,
detect mode, exclusions, broken bodies.  Submissions: urlencoded, multipart and
query swap-back, tampering, limits and a store outage.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import random
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import quote_from_bytes

import aiohttp
import brotli  # type: ignore[import-untyped]
import pytest
from aiohttp import web

from guard.pii.policy import Mode
from guard.pii.settings import PIIConfig
from guard.pii.token import TOKEN_RE
from guard.store.base import Op, StoreError
from guard.store.memory import MemoryStore
from tests.proxy_fixtures import Guard, GuardFactory, make_guard

__all__ = ["make_guard"]

PHONE, UID, EMAIL = "090-1234-5678", "U" + "0123456789abcdef" * 2, "taro@example.jp"
PAGE = (
    '<!doctype html><html><head><meta charset="utf-8"><title>Contact</title></head><body>'
    '<form method="post" action="/echo">'
    f'<input type="hidden" name="phone" value="{PHONE}">'
    f"<INPUT TYPE=hidden NAME=mid VALUE={UID}>"
    f'<input type="hidden" name="email" value="{EMAIL}">'
    '<input type="hidden" name="csrf" value="c5rf-2021">'
    '<textarea name="message"></textarea></form></body></html>'
).encode()
FW_PHONE = PHONE.translate({ord(c): ord(c) + 0xFEE0 for c in "0123456789-"})   # full-width digits
SJIS_PAGE = (
    '<html><head><meta http-equiv="Content-Type" content="text/html; charset=Shift_JIS"></head><body>'
    '<p>お問い合わせ</p><form method="post" action="/echo">'
    '<input type="hidden" name="name" value="山田太郎">'
    f'<input type="hidden" name="tel" value="{FW_PHONE}">'
    "</form></body></html>"
).encode("cp932")
BLOB = random.Random(5).randbytes(200_000)
CLEAN = PAGE.replace(PHONE.encode(), b"").replace(UID.encode(), b"").replace(EMAIL.encode(), b"")
CLEAN_GZ, CLEAN_BR = gzip.compress(CLEAN, mtime=0), brotli.compress(CLEAN)
# what a cacheable legacy page carries (``/clean`` and ``/plain``, and the same fields once more)
CACHING = {"Cache-Control": "public, max-age=60", "Last-Modified": "Tue, 24 Nov 2026 09:00:00 GMT",
           "Content-MD5": "pinned-by-the-upstream"}
API = json.dumps({"user": {"phone": PHONE, "nick": "taro"}, "id": 7}).encode()
OTHER_API = json.dumps({"user": {"nick": "taro"}, "tel": PHONE}).encode()


class Recorder:
    """A recording observer: what the proxy reports about PII (kinds, modes, field names)."""

    def __init__(self) -> None:
        self.pii_events: list[tuple[str, str, str, int]] = []
        self.tampers: list[tuple[str, str]] = []
        self.pages: list[tuple[str, bool]] = []

    def pii(self, path: str, kind: str, mode: str, count: int) -> None:
        self.pii_events.append((path, kind, mode, count))

    def pii_page(self, path: str, scanned: bool) -> None:
        self.pages.append((path, scanned))

    def tamper(self, path: str, field_name: str) -> None:
        self.tampers.append((path, field_name))

    def __getattr__(self, name: str) -> Any:   # every other observer call: ignored
        return lambda *a, **k: None


class Shop:
    """The upstream.  ``received`` keeps what submissions delivered (method, query, content type, body)."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/plain", self.plain)
        app.router.add_get("/excluded/page", self.plain)
        app.router.add_get("/gzip", self.gzip)
        app.router.add_get("/br", self.br)
        app.router.add_get("/stream", self.stream)
        app.router.add_get("/data.bin", self.data)
        app.router.add_get("/sjis", self.sjis)
        app.router.add_get("/bad.gz", self.bad_gzip)
        app.router.add_get("/api/me", self.api)
        app.router.add_get("/api/other", self.api)
        app.router.add_route("*", "/echo", self.echo)
        app.router.add_get("/ranged", self.ranged)
        app.router.add_get("/clean", self.clean)
        app.router.add_get("/clean.gz", self.clean_gzip)
        app.router.add_get("/clean.br", self.clean_br)
        app.router.add_get("/excluded/ranged", self.ranged)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @staticmethod
    def _page(body: bytes, ctype: str = "text/html; charset=utf-8", **headers: str) -> web.Response:
        return web.Response(body=body, headers={"Content-Type": ctype, "ETag": '"v1"', **headers})

    async def clean(self, request: web.Request) -> web.Response:
        return self._page(CLEAN, **CACHING)

    async def clean_gzip(self, request: web.Request) -> web.Response:
        return self._page(CLEAN_GZ, **{"Content-Encoding": "gzip"})

    async def clean_br(self, request: web.Request) -> web.Response:
        return self._page(CLEAN_BR, **{"Content-Encoding": "br"})

    async def ranged(self, request: web.Request) -> web.Response:
        """The page, honouring a single ``Range: bytes=a-b`` as a static file server would."""
        self.received.append({"path": request.path, "range": request.headers.get("Range")})
        m = re.fullmatch(r"bytes=(\d+)-(\d+)", request.headers.get("Range", ""))
        if m is None:
            return self._page(PAGE, **{"Accept-Ranges": "bytes"})
        a, b = int(m.group(1)), int(m.group(2))
        return web.Response(status=206, body=PAGE[a : b + 1], headers={
            "Content-Type": "text/html; charset=utf-8", "Content-Range": f"bytes {a}-{b}/{len(PAGE)}"})

    async def plain(self, request: web.Request) -> web.Response:
        return self._page(PAGE, **CACHING)

    async def gzip(self, request: web.Request) -> web.Response:
        return self._page(gzip.compress(PAGE), **{"Content-Encoding": "gzip"})

    async def br(self, request: web.Request) -> web.Response:
        return self._page(brotli.compress(PAGE), **{"Content-Encoding": "br"})

    async def bad_gzip(self, request: web.Request) -> web.Response:
        return self._page(gzip.compress(PAGE)[:40] + b"garbage" * 10, **{"Content-Encoding": "gzip"})

    async def data(self, request: web.Request) -> web.Response:
        return self._page(BLOB, "application/octet-stream")

    async def sjis(self, request: web.Request) -> web.Response:
        return self._page(SJIS_PAGE, "text/html")

    async def api(self, request: web.Request) -> web.Response:
        doc = API if request.path == "/api/me" else OTHER_API
        if request.query.get("gz"):
            return self._page(gzip.compress(doc), "application/json", **{"Content-Encoding": "gzip"})
        return self._page(doc, "application/json")

    async def stream(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/html; charset=utf-8"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for part in stream_parts():
            await resp.write(part)
            await asyncio.sleep(0.002)
        await resp.write_eof()
        return resp

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received.append({
            "method": request.method, "raw_query": request.rel_url.raw_query_string,
            "ctype": request.headers.get("Content-Type", ""), "body": body,
            "length": request.headers.get("Content-Length"),
        })
        if request.content_type == "multipart/form-data":
            reader = await _multipart(request, body)
            return web.json_response(reader)
        return web.json_response({"ok": True})


async def _multipart(request: web.Request, body: bytes) -> dict[str, str]:
    """Parse a multipart body the way the upstream framework would (proves the new body is well-formed)."""
    from aiohttp import MultipartReader
    from aiohttp.streams import StreamReader

    proto = request.protocol
    stream = StreamReader(proto, 2**16, loop=asyncio.get_running_loop())
    stream.feed_data(body)
    stream.feed_eof()
    reader = MultipartReader(request.headers, stream)
    out: dict[str, str] = {}
    while True:
        part = await reader.next()
        if part is None:
            return out
        assert isinstance(part, aiohttp.BodyPartReader)
        out[part.name or ""] = (await part.read()).decode()


def stream_parts() -> list[bytes]:
    """A 100 KB page sent in small pieces, cut inside the hidden inputs."""
    filler = b"".join(b"<p>row %d: nothing to see here</p>\n" % i for i in range(3000))
    whole = PAGE.replace(b"<form", filler + b"<form")
    return [whole[i : i + 997] for i in range(0, len(whole), 997)]


@pytest.fixture
async def shop() -> AsyncIterator[Shop]:
    s = Shop()
    await s.start()
    yield s
    await s.close()


@pytest.fixture
async def browser() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), auto_decompress=False) as s:
        yield s


async def started(make_guard: GuardFactory, shop: Shop, **overrides: Any) -> tuple[Guard, Recorder]:
    guard = await make_guard(shop.url, log={"requests": False}, **overrides)
    rec = Recorder()
    guard.server.engine.observer = rec
    return guard, rec


def fields(page: bytes | str) -> dict[str, str]:
    text = page.decode() if isinstance(page, bytes) else page
    return dict(re.findall(r'name="?(\w+)"? value="?([^">]*)"?', text, re.IGNORECASE))


def no_pii(page: bytes) -> bool:
    return all(v.encode() not in page for v in (PHONE, UID, EMAIL))


# ---- responses -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "decode", "coding"), [
    ("/gzip", gzip.decompress, "gzip"),
    ("/br", brotli.decompress, "br"),
])
async def test_compressed_pages_are_rewritten_and_reencoded(
    make_guard: GuardFactory, shop: Shop, browser: aiohttp.ClientSession, path: str, decode: Any, coding: str
) -> None:
    guard, rec = await started(make_guard, shop)
    async with browser.get(guard.url(path), headers={"Accept-Encoding": "gzip, br"}) as r:
        raw = await r.read()
        headers = r.headers
    assert headers["Content-Encoding"] == coding
    assert headers["Content-Length"] == str(len(raw))       # fixed, not the upstream's
    assert "ETag" not in headers and headers["Cache-Control"].startswith("private")
    assert headers["Accept-Ranges"] == "none"
    assert any(c.startswith("lgpii=") for c in headers.getall("Set-Cookie"))
    page = decode(raw)
    assert no_pii(page)
    got = fields(page)
    assert all(TOKEN_RE.fullmatch(got[name]) for name in ("phone", "mid", "email"))
    assert got["csrf"] == "c5rf-2021"
    # every byte outside the three values is the upstream's
    assert re.sub(rb"pii_[\w-]{22}", b"X", page) == PAGE.replace(PHONE.encode(), b"X").replace(
        b"VALUE=" + UID.encode(), b'VALUE="X"').replace(EMAIL.encode(), b"X")
    assert sorted((k, m, n) for _, k, m, n in rec.pii_events) == [
        ("email", "tokenize", 1), ("phone", "tokenize", 1), ("user_id", "tokenize", 1)]
    assert rec.pages == [(path, True)]


@pytest.mark.parametrize(("path", "raw", "coding"), [("/clean.gz", CLEAN_GZ, "gzip"), ("/clean.br", CLEAN_BR, "br")])
async def test_a_compressed_page_with_nothing_to_change_goes_out_in_its_own_bytes(
    make_guard: GuardFactory, shop: Shop, browser: aiohttp.ClientSession, path: str, raw: bytes, coding: str
) -> None:
    guard, rec = await started(make_guard, shop)
    async with browser.get(guard.url(path), headers={"Accept-Encoding": "gzip, br"}) as r:
        body = await r.read()
        headers = r.headers
    assert body == raw   # not inflated and deflated again: the upstream's bytes
    assert headers["Content-Encoding"] == coding and headers["Content-Length"] == str(len(raw))
    assert "Set-Cookie" not in headers and rec.pii_events == []
    assert rec.pages == [(path, False)]   # counted as passed on unread (guard_pii_pages_total{scan="unread"})


async def test_a_page_with_nothing_to_change_keeps_its_validators_and_caching(
    make_guard: GuardFactory, shop: Shop, browser: aiohttp.ClientSession
) -> None:
    """A page passed on unread is the upstream's bytes, so its ETag, Last-Modified, caching and
    digests still hold: browsers revalidate it with a 304 and shared caches may keep it.  The
    same fields on a page the rewriter changes are removed or made private (tokens are bound to
    one browser).  Range stays off for both: the path is one the policy rewrites."""
    guard, rec = await started(make_guard, shop)
    async with browser.get(guard.url("/clean")) as r:
        assert await r.read() == CLEAN
        headers = r.headers
    assert headers["ETag"] == '"v1"' and headers["Last-Modified"] == CACHING["Last-Modified"]
    assert headers["Cache-Control"] == "public, max-age=60" and headers["Content-MD5"] == CACHING["Content-MD5"]
    assert headers["Accept-Ranges"] == "none" and headers["Content-Length"] == str(len(CLEAN))
    assert "Set-Cookie" not in headers and rec.pages == [("/clean", False)]
    async with browser.get(guard.url("/plain")) as r:
        page = await r.read()
        headers = r.headers
    assert no_pii(page) and rec.pages[-1] == ("/plain", True)
    assert "ETag" not in headers and "Last-Modified" not in headers and "Content-MD5" not in headers
    assert headers["Cache-Control"] == "private, max-age=60" and headers["Accept-Ranges"] == "none"


async def test_non_html_is_streamed_byte_identical(
    make_guard: GuardFactory, shop: Shop, browser: aiohttp.ClientSession
) -> None:
    guard, rec = await started(make_guard, shop)
    async with browser.get(guard.url("/data.bin")) as r:
        body = await r.read()
        assert r.headers["ETag"] == '"v1"' and r.headers["Content-Length"] == str(len(BLOB))
        assert "Set-Cookie" not in r.headers and "Accept-Ranges" not in r.headers
    assert hashlib.sha256(body).digest() == hashlib.sha256(BLOB).digest()
    assert rec.pii_events == []


async def test_a_streamed_page_is_rewritten_on_the_fly(
    make_guard: GuardFactory, shop: Shop, browser: aiohttp.ClientSession
) -> None:
    guard, _ = await started(make_guard, shop)
    async with browser.get(guard.url("/stream")) as r:
        page = await r.read()
        assert r.headers.get("Transfer-Encoding") == "chunked" and "Content-Length" not in r.headers
        assert any(c.startswith("lgpii=") for c in r.headers.getall("Set-Cookie"))  # before the body
    whole = b"".join(stream_parts())
    assert no_pii(page) and len(page) > 100_000
    back = page
    for name, value in fields(page).items():
        original = {"phone": PHONE, "mid": UID, "email": EMAIL}.get(name)
        if original is not None:
            back = back.replace(value.encode(), original.encode())
    assert back == whole.replace(b"VALUE=" + UID.encode(), b'VALUE="' + UID.encode() + b'"')


async def test_shift_jis_page_and_its_form(
    make_guard: GuardFactory, shop: Shop, browser: aiohttp.ClientSession
) -> None:
    guard, _ = await started(make_guard, shop, pii={"fields": [{"names": ["name"], "mode": "tokenize"}]})
    async with browser.get(guard.url("/sjis")) as r:
        page = await r.read()
    text = page.decode("cp932")
    assert "山田太郎" not in text and FW_PHONE[4:8] not in text and "お問い合わせ" in text
    got = fields(text)
    # the browser submits the form in the page's charset
    body = "&".join(f"{k}={quote_from_bytes(v.encode('cp932'))}" for k, v in got.items()).encode()
    async with browser.post(guard.url("/echo"), data=body,
                            headers={"Content-Type": "application/x-www-form-urlencoded"}) as r:
        assert r.status == 200
    sent = shop.received[-1]["body"]
    assert sent == (b"name=" + quote_from_bytes("山田太郎".encode("cp932")).encode()
                    + b"&tel=" + quote_from_bytes(FW_PHONE.encode("cp932")).encode())
    assert shop.received[-1]["length"] == str(len(sent))


async def test_multipart_submission_swaps_back(
    make_guard: GuardFactory, shop: Shop, browser: aiohttp.ClientSession
) -> None:
    guard, rec = await started(make_guard, shop)
    async with browser.get(guard.url("/plain")) as r:
        got = fields(await r.read())
    form = aiohttp.FormData()
    for k, v in got.items():
        form.add_field(k, v)
    form.add_field("message", "hello")
    form.add_field("upload", b"pii_AAAAAAAAAAAAAAAAAAAAAA", filename="a.txt")   # a file is never swapped
    async with browser.post(guard.url("/echo"), data=form) as r:
        parsed = await r.json()
    assert parsed == {"phone": PHONE, "mid": UID, "email": EMAIL, "csrf": "c5rf-2021", "message": "hello",
                      "upload": "pii_AAAAAAAAAAAAAAAAAAAAAA"}
    assert shop.received[-1]["length"] == str(len(shop.received[-1]["body"]))
    assert rec.tampers == []


async def test_get_form_tokens_swap_back_in_the_query(
    make_guard: GuardFactory, shop: Shop, browser: aiohttp.ClientSession
) -> None:
    guard, _ = await started(make_guard, shop)
    async with browser.get(guard.url("/plain")) as r:
        got = fields(await r.read())
    async with browser.get(guard.url(f"/echo?phone={got['phone']}&q=a+b")) as r:
        assert r.status == 200
    assert shop.received[-1]["raw_query"] == "phone=090-1234-5678&q=a+b"


async def test_tokens_moved_or_replayed_are_emptied_and_reported(
    make_guard: GuardFactory, shop: Shop, browser: aiohttp.ClientSession
) -> None:
    guard, rec = await started(make_guard, shop)
    async with browser.get(guard.url("/plain")) as r:
        got = fields(await r.read())
    moved = {"message": got["phone"], "email": got["email"]}
    async with browser.post(guard.url("/echo"), data=moved) as r:
        assert r.status == 200
    assert shop.received[-1]["body"] == b"message=&email=taro%40example.jp"
    assert rec.tampers == [("/echo", "message")]
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as other:
        async with other.get(guard.url("/plain")) as r:    # its own vault cookie
            await r.read()
        async with other.post(guard.url("/echo"), data={"phone": got["phone"]}) as r:
            assert r.status == 200
    assert shop.received[-1]["body"] == b"phone="
    assert rec.tampers[-1] == ("/echo", "phone")


async def test_json_fields_by_pointer(
    make_guard: GuardFactory, shop: Shop, browser: aiohttp.ClientSession
) -> None:
    guard, rec = await started(make_guard, shop, pii={"json": [{"pointer": "/user/phone"}]})
    async with browser.get(guard.url("/api/me?gz=1"), headers={"Accept-Encoding": "gzip"}) as r:
        raw = await r.read()
        assert "Content-Encoding" not in r.headers and r.headers["Content-Length"] == str(len(raw))
        assert "ETag" not in r.headers
        assert any(c.startswith("lgpii=") for c in r.headers.getall("Set-Cookie"))
    doc = json.loads(raw)
    assert TOKEN_RE.fullmatch(doc["user"]["phone"]) and doc["user"]["nick"] == "taro" and doc["id"] == 7
    assert ("/api/me", "phone", "tokenize", 1) in rec.pii_events
    # the page's script posts it back as JSON under a name of its own: bound to the browser only
    async with browser.post(guard.url("/echo"), json={"tel": doc["user"]["phone"]}) as r:
        assert r.status == 200
    assert json.loads(shop.received[-1]["body"]) == {"tel": PHONE}
    # a JSON body whose configured fields are absent goes out as the upstream sent it
    async with browser.get(guard.url("/api/other?gz=1"), headers={"Accept-Encoding": "gzip"}) as r:
        assert r.headers["Content-Encoding"] == "gzip" and r.headers["ETag"] == '"v1"'
        assert gzip.decompress(await r.read()) == OTHER_API


async def test_detect_mode_changes_nothing_and_counts(
    make_guard: GuardFactory, shop: Shop, browser: aiohttp.ClientSession
) -> None:
    guard, rec = await started(make_guard, shop, pii={"detect": True})
    async with browser.get(guard.url("/plain")) as r:
        assert await r.read() == PAGE
        assert "Set-Cookie" not in r.headers and r.headers["ETag"] == '"v1"'
        assert r.headers["Content-Length"] == str(len(PAGE))
    async with browser.get(guard.url("/br"), headers={"Accept-Encoding": "br"}) as r:
        assert await r.read() == brotli.compress(PAGE)      # not even recompressed
    async with browser.get(guard.url("/stream")) as r:
        assert await r.read() == b"".join(stream_parts())
    assert len(rec.pii_events) == 9
    rec.pii_events = rec.pii_events[:3]
    assert sorted(rec.pii_events) == [("/plain", kind, "detect", 1) for kind in ("email", "phone", "user_id")]


async def test_a_byte_range_of_a_page_cannot_carry_its_pii_out(
    make_guard: GuardFactory, shop: Shop, browser: aiohttp.ClientSession
) -> None:
    guard, _ = await started(make_guard, shop, pii={"paths": {"exclude": ["/excluded/*"]}})
    start = PAGE.index(PHONE.encode())
    want = {"Range": f"bytes={start}-{start + len(PHONE) - 1}"}
    async with browser.get(shop.url + "/ranged", headers=want) as r:
        assert r.status == 206 and await r.read() == PHONE.encode()   # what the upstream alone would give
    async with browser.get(guard.url("/ranged"), headers=want) as r:
        body = await r.read()
        assert r.status == 200 and r.headers["Accept-Ranges"] == "none"
    assert no_pii(body) and TOKEN_RE.fullmatch(fields(body)["phone"])
    assert shop.received[-1] == {"path": "/ranged", "range": None}
    # where the policy does not rewrite, ranges work as before
    async with browser.get(guard.url("/excluded/ranged"), headers=want) as r:
        assert r.status == 206 and await r.read() == PHONE.encode()
    assert shop.received[-1]["range"] == want["Range"]


async def test_disabled_and_excluded_pages_pass_untouched(
    make_guard: GuardFactory, shop: Shop, browser: aiohttp.ClientSession
) -> None:
    guard, _ = await started(make_guard, shop, pii={"paths": {"exclude": ["/excluded/*"]}})
    async with browser.get(guard.url("/excluded/page")) as r:
        assert await r.read() == PAGE and r.headers["ETag"] == '"v1"'
    off, _ = await started(make_guard, shop, pii={"enabled": False})
    async with browser.get(off.url("/plain")) as r:
        assert await r.read() == PAGE and r.headers["ETag"] == '"v1"'
        assert r.headers["Cache-Control"] == "public, max-age=60"


async def test_mask_mode_keeps_a_weak_etag(
    make_guard: GuardFactory, shop: Shop, browser: aiohttp.ClientSession
) -> None:
    guard, _ = await started(make_guard, shop, pii={"mode": "mask", "mask": {"keep_last": 4}})
    async with browser.get(guard.url("/plain")) as r:
        page = await r.read()
        assert r.headers["ETag"] == 'W/"v1"' and "Set-Cookie" not in r.headers
    assert b'value="***-****-5678"' in page and no_pii(page)


async def test_head_and_not_modified_are_untouched(
    make_guard: GuardFactory, shop: Shop, browser: aiohttp.ClientSession
) -> None:
    guard, _ = await started(make_guard, shop)
    async with browser.head(guard.url("/plain")) as r:
        assert r.headers["ETag"] == '"v1"' and r.headers["Content-Length"] == str(len(PAGE))


async def test_a_body_that_does_not_decode_closes_the_connection(
    make_guard: GuardFactory, shop: Shop, browser: aiohttp.ClientSession
) -> None:
    guard, rec = await started(make_guard, shop)
    with pytest.raises(aiohttp.ClientError):
        async with browser.get(guard.url("/bad.gz")) as r:
            await r.read()
    assert ("/bad.gz", "decode-error", "skipped", 1) in rec.pii_events
    async with browser.get(guard.url("/plain")) as r:   # the guard is fine
        assert r.status == 200


async def test_oversized_submission_with_the_cookie_is_refused(
    make_guard: GuardFactory, shop: Shop, browser: aiohttp.ClientSession
) -> None:
    guard, _ = await started(make_guard, shop, limits={"max_body_size": 2048})
    async with browser.get(guard.url("/plain")) as r:
        await r.read()
    async with browser.post(guard.url("/echo"), data={"message": "x" * 5000}) as r:
        assert r.status == 413
    assert shop.received == []
    # without the vault cookie nothing is buffered: the body streams as before
    async with aiohttp.ClientSession() as fresh, fresh.post(guard.url("/echo"), data={"m": "x" * 5000}) as r:
        assert r.status == 200
    # an API upload is never refused for its size: above the limit it streams, tokens and all
    async with browser.post(guard.url("/echo"), json={"blob": "y" * 5000}) as r:
        assert r.status == 200
    assert len(shop.received[-1]["body"]) > 5000


class FlakyStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.down = False

    async def execute(self, ops: Sequence[Op], now: float) -> list[Any]:
        if self.down:
            raise StoreError("down")
        return await super().execute(ops, now)


async def test_store_outage(make_guard: GuardFactory, shop: Shop, browser: aiohttp.ClientSession) -> None:
    store = FlakyStore()
    guard = await make_guard(shop.url, use_store=store, log={"requests": False})
    rec = Recorder()
    guard.server.engine.observer = rec
    async with browser.get(guard.url("/plain")) as r:
        got = fields(await r.read())
    store.down = True
    async with browser.post(guard.url("/echo"), data=got) as r:
        assert r.status == 503      # the upstream would act on blank fields
    assert shop.received == []
    async with browser.get(guard.url("/plain")) as r:
        page = await r.read()
        assert r.status == 200 and no_pii(page)          # pages still render, and never with the PII
    assert ("/plain", "vault-unavailable", "skipped", 1) in rec.pii_events
    store.down = False
    async with browser.post(guard.url("/echo"), data=got) as r:
        assert r.status == 200
    assert shop.received[-1]["body"].startswith(b"phone=090-1234-5678&")



async def test_behind_a_tls_hop_the_cookie_is_host_only_and_secure(make_guard: GuardFactory, shop: Shop) -> None:
    guard, _ = await started(make_guard, shop, trusted_proxies=["127.0.0.1/32"])
    tls = {"X-Forwarded-Proto": "https"}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
        async with s.get(guard.url("/plain"), headers=tls) as r:
            got = fields(await r.read())
            (cookie,) = r.headers.getall("Set-Cookie")
        assert cookie.startswith("__Host-lgpii=") and cookie.endswith("; Secure") and "Path=/" in cookie
        value = cookie.split(";")[0].split("=", 1)[1]
        headers = {**tls, "Cookie": f"__Host-lgpii={value}"}
        async with s.post(guard.url("/echo"), data={"phone": got["phone"]}, headers=headers) as r:
            assert r.status == 200
        assert shop.received[-1]["body"] == b"phone=090-1234-5678"
        # the plain-http cookie name means nothing on an https request
        headers = {**tls, "Cookie": f"lgpii={value}"}
        async with s.post(guard.url("/echo"), data={"phone": got["phone"]}, headers=headers) as r:
            assert r.status == 200
        assert shop.received[-1]["body"] == f"phone={got['phone']}".encode()


async def test_reload_switches_the_policy(make_guard: GuardFactory, shop: Shop, browser: aiohttp.ClientSession) -> None:
    guard, _ = await started(make_guard, shop)
    async with browser.get(guard.url("/plain")) as r:
        assert no_pii(await r.read())
    await guard.server.reload(guard.server.config.model_copy(update={"pii": PIIConfig(enabled=False)}))
    async with browser.get(guard.url("/plain")) as r:
        assert await r.read() == PAGE
    await guard.server.reload(guard.server.config.model_copy(update={"pii": PIIConfig(mode=Mode.REMOVE)}))
    async with browser.get(guard.url("/plain")) as r:
        page = await r.read()
    assert no_pii(page) and b'name="csrf"' in page and b'name="phone"' not in page

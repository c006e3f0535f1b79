"""The honest baseline: the least a correct aiohttp reverse proxy must do.

loginguard's throughput target is "at least 0.9x of a plain aiohttp proxy", so
this file defines what "plain" means.  It is built from the same parts the guard
uses (aiohttp low-level server, one aiohttp ClientSession with a keep-alive
TCPConnector, uvloop) and does only what any correct HTTP/1.1 reverse proxy must:

* stream the request body to the upstream and the response body back, without
  buffering either (so it is not unfairly fast on small bodies);
* drop hop-by-hop headers (RFC 9110 7.6.1) and those named in ``Connection``;
* pass bodies through byte for byte (no decompression), never follow redirects;
* add ``X-Forwarded-For`` (every real proxy does; the guard needs it too);
* answer 502 when the upstream cannot be reached.

Anything the guard does beyond this is the cost of guarding.

Run:  python bench/baseline_proxy.py --port 8082 --upstream http://127.0.0.1:8081
"""

from __future__ import annotations

import argparse

import aiohttp
from _serve import run, serve
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


def end_to_end(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """Copy ``headers`` without hop-by-hop fields (fixed list + those named in Connection)."""
    drop = HOP_BY_HOP
    connection = headers.get("Connection")
    if connection:
        drop = drop | {token.strip().lower() for token in connection.split(",")}
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        if name.lower() not in drop:
            out.add(name, value)
    return out


class Proxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=1024, keepalive_timeout=60.0)
        self.session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            # A proxy must not keep cookies: it would replay one client's session to the next.
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5.0, sock_read=60.0),
            # Forward exactly what the client sent: no User-Agent/Accept/Accept-Encoding of our own.
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        assert self.session is not None
        headers = end_to_end(request.headers)
        peer = request.remote or ""
        prior = headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
        url = URL(self.upstream + request.raw_path, encoded=True)
        body = request.content if request.body_exists else None
        response: web.StreamResponse | None = None
        try:
            async with self.session.request(
                request.method, url, headers=headers, data=body, allow_redirects=False
            ) as upstream:
                response = web.StreamResponse(
                    status=upstream.status, reason=upstream.reason, headers=end_to_end(upstream.headers)
                )
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            if response is not None and response.prepared:
                raise  # headers already sent: aiohttp drops the client connection
            return web.Response(status=502, text=f"bad gateway: {type(exc).__name__}\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="http://host:port of the upstream")
    args = parser.parse_args()
    proxy = Proxy(args.upstream)
    run(
        lambda: serve(
            proxy.handle,
            args.host,
            args.port,
            name="baseline-proxy",
            on_startup=proxy.start,
            on_cleanup=proxy.close,
        )
    )


if __name__ == "__main__":
    main()

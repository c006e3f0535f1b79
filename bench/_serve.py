"""Shared start-up for the benchmark's own servers (upstream and baseline proxy).

Both must run the same way the guard does -- aiohttp's low-level server on a
uvloop event loop, one process, no access log -- or the comparison measures
server plumbing instead of the proxy logic.  Keeping that plumbing in one place
guarantees the two are configured identically, and that both stop cleanly on
SIGTERM/SIGINT so ``run.py`` can tear them down without leaving sockets behind.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aiohttp import web

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


async def serve(
    handler: Handler,
    host: str,
    port: int,
    *,
    name: str,
    on_startup: Callable[[], Awaitable[None]] | None = None,
    on_cleanup: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Serve ``handler`` on host:port until SIGTERM or SIGINT."""
    if on_startup is not None:
        await on_startup()
    # auto_decompress=False: bodies pass through untouched (the proxy must not
    # re-encode them, the upstream never sees compressed forms anyway).
    server = web.Server(handler, access_log=None, auto_decompress=False)
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(server, host, port, backlog=4096, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"{name} listening on http://{host}:{port} ({type(loop).__module__})", file=sys.stderr, flush=True)
    try:
        await stop.wait()
    finally:
        listener.close()
        await listener.wait_closed()
        await server.shutdown(timeout=1.0)
        if on_cleanup is not None:
            await on_cleanup()


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``main`` on uvloop (the loop the guard uses); plain asyncio only if uvloop is absent."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a hard dependency on Linux
        print("warning: uvloop missing, using the default asyncio loop", file=sys.stderr)
        asyncio.run(main())
        return
    uvloop.run(main())

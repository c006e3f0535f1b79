"""Notice changed config and rule files without inotify.

Polling a few dozen files' (mtime, size, inode) every couple of seconds costs
nothing measurable and works the same on every filesystem, container overlay
and Kubernetes ConfigMap (whose files change by symlink swap, which inotify
watchers often miss).  The stat calls run in a thread: no blocking I/O on the
event loop.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

Signature = tuple[int, int, int] | None


def signature(path: Path) -> Signature:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def snapshot(paths: Iterable[Path]) -> dict[Path, Signature]:
    out: dict[Path, Signature] = {}
    for p in paths:
        out[p] = signature(p)
        if p.is_dir():
            for child in sorted(p.iterdir()):
                if child.suffix in (".yaml", ".yml", ".txt", ".netset", ".ipset"):
                    out[child] = signature(child)
    return out


async def watch(
    paths: Callable[[], Iterable[Path]],
    on_change: Callable[[], Awaitable[None]],
    interval: float = 2.0,
) -> None:
    """Call ``on_change`` whenever any watched file changes; ``paths`` is re-read after each change."""
    current = await asyncio.to_thread(snapshot, list(paths()))
    while True:
        await asyncio.sleep(interval)
        fresh = await asyncio.to_thread(snapshot, list(paths()))
        if fresh != current:
            # wait for writers to finish (editors write in several steps), then settle
            await asyncio.sleep(min(interval, 0.5))
            current = await asyncio.to_thread(snapshot, list(paths()))
            await on_change()

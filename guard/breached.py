"""Is this password on a breached-password list?  Searched on disk, never loaded whole.

The list is the Pwned Passwords "ordered by hash" format: one ``SHA1HEX:COUNT``
line per password hash, sorted.  The full list is tens of gigabytes, so we mmap
it and binary-search by line; the OS page cache does the rest.  The search runs
in a worker thread because a page fault on a cold file is blocking I/O.  The
password's SHA-1 lives only for the duration of the lookup.
"""

from __future__ import annotations

import asyncio
import hashlib
import mmap
import os
from pathlib import Path


class BreachedPasswords:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDONLY)
        size = os.fstat(self._fd).st_size
        self._mm: mmap.mmap | None = mmap.mmap(self._fd, size, access=mmap.ACCESS_READ) if size else None
        self._size = size

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()
        os.close(self._fd)

    def _line_at(self, pos: int) -> tuple[int, bytes]:
        """Start offset and content of the line containing ``pos``."""
        mm = self._mm
        assert mm is not None
        start = mm.rfind(b"\n", 0, pos) + 1
        end = mm.find(b"\n", pos)
        if end < 0:
            end = self._size
        return start, mm[start:end].rstrip(b"\r")

    def contains_sha1(self, digest_hex: str) -> bool:
        if self._mm is None:
            return False
        target = digest_hex.upper().encode()
        lo, hi = 0, self._size
        while lo < hi:
            mid = (lo + hi) // 2
            start, line = self._line_at(mid)
            key = line.split(b":", 1)[0].strip().upper()
            if key == target:
                return True
            if key < target:
                nxt = self._mm.find(b"\n", start)
                if nxt < 0:
                    return False
                lo = nxt + 1
            else:
                hi = start
        return False

    def contains(self, password: str) -> bool:
        digest = hashlib.sha1(password.encode("utf-8", "surrogatepass"), usedforsecurity=False).hexdigest()
        return self.contains_sha1(digest)

    async def contains_async(self, password: str) -> bool:
        return await asyncio.to_thread(self.contains, password)

"""AES-256-GCM sealing of what the guard holds (upstream answers, requests, TOTP secrets) in the store.

The store may be a shared Redis, its backups, its replicas: a held answer
carries the upstream's session cookie, so a store dump must not log anyone
in.  Each blob is ``version || kid || nonce || ciphertext+tag``:

- a random 96-bit nonce per seal (a key seals far fewer than 2^32 blobs
  between rotations, the bound for random GCM nonces);
- associated data = header + purpose + binding (the hold id, the account
  key), so a blob cannot be moved to another hold or reused for another
  purpose, and the key id cannot be swapped;
- the key id picks the key to open with, so rotation is: add a key at the
  front, wait for the longest TTL, remove the old one.

``HeldMessage`` is the held HTTP message, serialised to bytes by a small
explicit format (never pickle: a decoded blob must not be able to run code).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from guard.challenge.keys import KID_BYTES, KeyRing

VERSION = 1
NONCE_BYTES = 12
_HEADER = 1 + KID_BYTES + NONCE_BYTES
_AEAD = b"aead"


class SealError(Exception):
    """A blob that does not open: tampered, truncated, another purpose or hold, or an unknown key."""


class Sealer:
    __slots__ = ("_aead", "ring")

    def __init__(self, ring: KeyRing) -> None:
        self.ring = ring
        self._aead = {k.kid: AESGCM(k.subkey(_AEAD)) for k in ring.keys}

    def seal(self, purpose: str, bind: str, plaintext: bytes) -> bytes:
        kid = self.ring.current.kid
        header = bytes([VERSION]) + kid + os.urandom(NONCE_BYTES)
        ct = self._aead[kid].encrypt(header[1 + KID_BYTES :], plaintext, _ad(header, purpose, bind))
        return header + ct

    def open(self, purpose: str, bind: str, blob: bytes) -> bytes:
        if len(blob) < _HEADER + 16 or blob[0] != VERSION:
            raise SealError("not a sealed blob")
        header = blob[:_HEADER]
        aead = self._aead.get(header[1 : 1 + KID_BYTES])
        if aead is None:
            raise SealError("sealed with a key that is no longer configured")
        try:
            return aead.decrypt(header[1 + KID_BYTES :], blob[_HEADER:], _ad(header, purpose, bind))
        except InvalidTag:
            raise SealError("sealed blob failed authentication") from None

    def current_kid(self, blob: bytes) -> bool:
        """True when ``blob`` was sealed with the current key (else: re-seal it when convenient)."""
        return blob[1 : 1 + KID_BYTES] == self.ring.current.kid


def _ad(header: bytes, purpose: str, bind: str) -> bytes:
    p, b = purpose.encode(), bind.encode("utf-8", "surrogatepass")
    return header + len(p).to_bytes(2, "big") + p + len(b).to_bytes(4, "big") + b


# ---- the held HTTP message -----------------------------------------------------------------------

_MAGIC = b"LGM1"
_RESPONSE, _REQUEST = 0, 1
_HEAD = struct.Struct(">4sBHB")  # magic, kind, status, flags
_FLAG_DROPPED = 1
_MAX_HEADERS = 1000


@dataclass(frozen=True, slots=True)
class HeldMessage:
    """An upstream response (``status`` set) or a client request (``method`` and ``target`` set).

    ``headers`` keeps order and repeats (several ``Set-Cookie``).  ``body_dropped``
    says the body was over the cap and is not held: the adapter must not send
    an empty body as if it were the real one (a redirect to the site is the
    usual fallback after a successful login).
    """

    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    status: int = 0
    method: str = ""
    target: str = ""
    body_dropped: bool = False
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def is_request(self) -> bool:
        return bool(self.method)

    @classmethod
    def response(cls, status: int, headers: Sequence[tuple[str, str]], body: bytes, cap: int) -> HeldMessage:
        if not 100 <= status <= 999:
            raise ValueError(f"not an HTTP status: {status}")
        dropped = len(body) > cap
        return cls(tuple(headers), b"" if dropped else body, status=status, body_dropped=dropped)

    @classmethod
    def request(
        cls, method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes, cap: int
    ) -> HeldMessage:
        """A held request cannot be forwarded without its body, so an oversized one is refused."""
        if not method or not target.startswith("/"):
            raise ValueError("a held request needs a method and an origin-form target")
        if len(body) > cap:
            raise ValueError(f"request body over the {cap}-byte cap")
        return cls(tuple(headers), body, method=method, target=target)

    # The encoding: header struct; method, target; header count; each name and value;
    # body; extra pairs.  Strings are UTF-8 with surrogateescape, so header bytes that
    # are not UTF-8 (aiohttp hands them over that way) survive the round trip.

    def encode(self) -> bytes:
        if len(self.headers) > _MAX_HEADERS:
            raise ValueError("too many headers to hold")
        out = bytearray(
            _HEAD.pack(
                _MAGIC,
                _REQUEST if self.is_request else _RESPONSE,
                self.status,
                _FLAG_DROPPED if self.body_dropped else 0,
            )
        )
        _put(out, self.method)
        _put(out, self.target)
        out += len(self.headers).to_bytes(2, "big")
        for name, value in self.headers:
            _put(out, name)
            _put(out, value)
        out += len(self.body).to_bytes(4, "big") + self.body
        out += len(self.extra).to_bytes(2, "big")
        for k, v in self.extra.items():
            _put(out, k)
            _put(out, v)
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> tuple[HeldMessage, int]:
        """The message and the number of bytes it used (padding may follow)."""
        r = _Reader(data)
        magic, kind, status, flags = _HEAD.unpack(r.take(_HEAD.size))
        if magic != _MAGIC or kind not in (_RESPONSE, _REQUEST):
            raise ValueError("not a held message")
        method, target = r.text(), r.text()
        headers = tuple((r.text(), r.text()) for _ in range(r.int(2)))
        body = r.take(r.int(4))
        extra = {r.text(): r.text() for _ in range(r.int(2))}
        msg = cls(
            headers,
            body,
            status=status,
            method=method,
            target=target,
            body_dropped=bool(flags & _FLAG_DROPPED),
            extra=extra,
        )
        if (kind == _REQUEST) != msg.is_request:
            raise ValueError("held message kind does not match its fields")
        return msg, r.pos


def _put(out: bytearray, text: str) -> None:
    b = text.encode("utf-8", "surrogateescape")
    out += len(b).to_bytes(4, "big") + b


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise ValueError("held message truncated")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def int(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def text(self) -> str:
        return self.take(self.int(4)).decode("utf-8", "surrogateescape")

"""The key ring: the first key seals and signs, every key opens and verifies (rotation without a flag day).

One configured key serves several purposes, so each purpose gets its own
subkey (HKDF-SHA256 with the purpose as ``info``): a MAC made for a CSRF token
can never be replayed as a device cookie or a code digest, and the AES key is
never used as an HMAC key.  Every sealed blob and MAC carries a 4-byte key id,
so opening picks the one right key instead of trying each (which would cost
time proportional to the ring and invite timing games).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from guard.challenge.settings import KEY_BYTES, decode_key

KID_BYTES = 4
_B64 = re.compile(r"[A-Za-z0-9_-]+")
MAC_BYTES = 32


def new_key() -> str:
    """A fresh key for ``challenge.keys`` (URL-safe base64 of 32 random bytes)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)).decode().rstrip("=")


def _kid(key: bytes) -> bytes:
    # A one-way label: names the key without revealing anything usable about it.
    return hashlib.sha256(b"loginguard/challenge/kid\x00" + key).digest()[:KID_BYTES]


def _join(parts: Iterable[bytes | str]) -> bytes:
    """Length-prefixed concatenation, so ("ab", "c") and ("a", "bc") never MAC alike."""
    out = bytearray()
    for p in parts:
        b = p.encode("utf-8", "surrogatepass") if isinstance(p, str) else p
        out += len(b).to_bytes(4, "big") + b
    return bytes(out)


@dataclass(frozen=True, slots=True)
class Key:
    kid: bytes
    secret: bytes = field(repr=False)
    _subkeys: dict[bytes, bytes] = field(default_factory=dict, repr=False, compare=False)

    def subkey(self, purpose: bytes) -> bytes:
        sub = self._subkeys.get(purpose)
        if sub is None:
            hkdf = HKDF(
                algorithm=hashes.SHA256(), length=32, salt=None, info=b"loginguard/challenge/" + purpose
            )
            sub = self._subkeys[purpose] = hkdf.derive(self.secret)
        return sub


class KeyRing:
    """Keys newest first.  Built once at config load."""

    __slots__ = ("_by_kid", "current", "keys")

    def __init__(self, secrets_: Sequence[bytes]) -> None:
        if not secrets_:
            raise ValueError("the challenge key ring needs at least one key")
        keys: list[Key] = []
        for raw in secrets_:
            if len(raw) != KEY_BYTES:
                raise ValueError(f"a challenge key must be {KEY_BYTES} bytes")
            keys.append(Key(_kid(raw), bytes(raw)))
        self.keys = tuple(keys)
        self.current = keys[0]
        self._by_kid = {k.kid: k for k in keys}
        if len(self._by_kid) != len(keys):
            raise ValueError("two challenge keys share a key id (a key listed twice?)")

    @classmethod
    def from_text(cls, texts: Iterable[str]) -> KeyRing:
        return cls([decode_key(t) for t in texts])

    def get(self, kid: bytes) -> Key | None:
        return self._by_kid.get(kid)

    # ---- MACs ------------------------------------------------------------------------------------

    def sign(self, purpose: bytes, *parts: bytes | str) -> bytes:
        """``kid || HMAC-SHA256(subkey(purpose), parts)`` with the current key."""
        k = self.current
        return k.kid + hmac.new(k.subkey(purpose), _join(parts), hashlib.sha256).digest()

    def verify(self, purpose: bytes, token: bytes, *parts: bytes | str) -> bool:
        """Constant-time check of a ``sign`` token made with any key of the ring.

        An unknown key id still costs one HMAC, so a forged id is not faster to refuse.
        """
        kid, mac = token[:KID_BYTES], token[KID_BYTES:]
        k = self._by_kid.get(kid)
        key = k.subkey(purpose) if k is not None else self.current.subkey(purpose)
        expected = hmac.new(key, _join(parts), hashlib.sha256).digest()
        return hmac.compare_digest(expected, mac) and k is not None

    def digest(self, purpose: bytes, *parts: bytes | str) -> str:
        """A stable keyed digest (current key) for store keys built from PII such as an IP address."""
        mac = hmac.new(self.current.subkey(purpose), _join(parts), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac[:16]).decode().rstrip("=")


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def b64d(text: str) -> bytes | None:
    """URL-safe base64 without padding; None for anything else (never raises on client input)."""
    if not text or len(text) > 4096 or not _B64.fullmatch(text):
        return None
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except ValueError:
        return None

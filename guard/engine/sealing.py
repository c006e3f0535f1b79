"""Login ids in the exposure ledger: stored sealed, opened only by the report.

Security teams need the exposed accounts' login ids for forced resets, but a
login id is PII (an e-mail address in the incident).  The ledger therefore
holds it AES-GCM sealed under a key derived from the guard's secret; ``guard
report`` derives the same key from the same config to open it.
"""

from __future__ import annotations

import base64
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_AAD = b"loginguard ledger login v1"


def _key(secret: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"loginguard/ledger").derive(secret)


class LoginSealer:
    __slots__ = ("_aead",)

    def __init__(self, secret: bytes) -> None:
        self._aead = AESGCM(_key(secret))

    def seal(self, login: str) -> str:
        nonce = os.urandom(12)
        blob = nonce + self._aead.encrypt(nonce, login.encode("utf-8"), _AAD)
        return base64.urlsafe_b64encode(blob).decode().rstrip("=")

    def open(self, token: str) -> str | None:
        try:
            blob = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            return self._aead.decrypt(blob[:12], blob[12:], _AAD).decode("utf-8")
        except (ValueError, InvalidTag, UnicodeDecodeError):
            return None


def stored_secret(config: Any) -> bytes | None:
    """The fingerprint/ledger key the running guards use, read the way they find it.

    ``secret_key`` from the config; else, with the memory store, ``state_dir/secret.key``;
    else the key the guards share through Redis.  None when no guard has made one yet.
    """
    if config.secret_key:
        return str(config.secret_key).encode()
    if config.store.backend == "memory":
        try:
            data = (config.state_dir / "secret.key").read_bytes().strip()
        except OSError:
            return None
        return data or None
    import asyncio

    from guard.store import make_store
    from guard.store.base import Get, StoreError

    async def fetch() -> bytes | None:
        store = make_store(config.store)
        await store.start()
        try:
            (value,) = await store.execute([Get("secret:hmac")], 0.0)
            return bytes(value) if value else None
        except StoreError:
            return None
        finally:
            await store.close()

    return asyncio.run(fetch())

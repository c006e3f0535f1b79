"""Login ids in the exposure ledger: stored sealed, opened only by the report.

Security teams need the exposed accounts' login ids for forced resets, but a
login id is PII (an e-mail address in the incident).  The ledger therefore
holds it AES-GCM sealed under a key derived from the guard's secret; ``guard
report`` derives the same key from the same config to open it.
"""

from __future__ import annotations

import base64
import os

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

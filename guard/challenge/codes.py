"""One-time codes: drawn from a CSPRNG, stored only as a keyed digest, compared in constant time.

A code is short by design (people type it), so its secrecy rests on three
limits rather than on its length: it expires (``code_ttl``), it is used once
(the hold is taken atomically on success), and each hold allows ``max_tries``
guesses.  With 6 digits and 5 tries a guess succeeds with p = 5e-6 per hold.

The store never sees a code: only ``kid || HMAC(subkey("code"), hold, generation,
code)``.  The hold id and generation are inside the MAC, so a digest cannot be
copied to another hold or outlive a resend.  Without the key a dump of the
store cannot be brute-forced offline (10^6 candidates would be trivial for a
plain hash).
"""

from __future__ import annotations

import secrets
import struct
import unicodedata
from dataclasses import dataclass

from guard.challenge.keys import KID_BYTES, MAC_BYTES, KeyRing

_PURPOSE = b"code"
_RECORD = struct.Struct(">2sBdd")  # magic, generation, issued, expires
_MAGIC = b"C1"
RECORD_BYTES = _RECORD.size + KID_BYTES + MAC_BYTES
MAX_INPUT = 64


def new_code(digits: int) -> str:
    """``digits`` decimal digits, uniform (``secrets.randbelow`` has no modulo bias)."""
    if digits < 6:
        raise ValueError("codes shorter than 6 digits are guessable within a few tries per hold")
    return f"{secrets.randbelow(10**digits):0{digits}d}"


def normalize_input(text: str) -> str:
    """What the user typed, as ASCII digits: full-width digits (a Japanese IME), spaces and hyphens allowed.

    Anything else yields a string that can never match (but is still digested, so
    a malformed guess costs the same time as a wrong one).
    """
    text = unicodedata.normalize("NFKC", text[:MAX_INPUT])
    kept = "".join(c for c in text if c not in " -\t")
    return kept if kept.isascii() and kept.isdigit() else "x"


@dataclass(frozen=True, slots=True)
class CodeRecord:
    """What the store keeps for the code of a hold: the same shape whether or not a code was sent."""

    generation: int
    issued: float
    expires: float
    digest: bytes  # kid || mac

    def encode(self) -> bytes:
        return _RECORD.pack(_MAGIC, self.generation, self.issued, self.expires) + self.digest

    @classmethod
    def decode(cls, data: bytes) -> CodeRecord | None:
        if len(data) != RECORD_BYTES or data[:2] != _MAGIC:
            return None
        _, gen, issued, expires = _RECORD.unpack(data[: _RECORD.size])
        return cls(gen, issued, expires, data[_RECORD.size :])


def digest(ring: KeyRing, hold_id: str, generation: int, code: str) -> bytes:
    return ring.sign(_PURPOSE, hold_id, str(generation), code)


def make_record(
    ring: KeyRing, hold_id: str, generation: int, code: str, now: float, ttl: float
) -> CodeRecord:
    return CodeRecord(generation, now, now + ttl, digest(ring, hold_id, generation, code))


def matches(ring: KeyRing, hold_id: str, record: CodeRecord, typed: str) -> bool:
    """Constant time in the typed code (``hmac.compare_digest`` on equal-length MACs)."""
    return ring.verify(_PURPOSE, record.digest, hold_id, str(record.generation), normalize_input(typed))

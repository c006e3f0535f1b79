"""TOTP (RFC 6238) for enrolled accounts: enrolment records sealed in the store, replay-proof checks.

Hand-rolled rather than pyotp (which the tests use as a cross-check): the
algorithm is a dozen lines of HMAC and dynamic truncation (RFC 4226 5.3), and
the guard needs what a boolean ``verify`` does not give, *which* step matched,
to refuse a code a second time (RFC 6238 5.2: "the verifier MUST NOT accept
the second attempt of the same OTP").  The last accepted step is kept per
account, and a step is claimed with ``PutNew``, so two instances cannot both
accept it.

Secrets are sealed at rest (``ch:totp:<account key>``, bound to the account):
a store dump must not let anyone mint codes.  The memory store evicts least
recently used keys under pressure, so enrolments belong in Redis.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import csv
import hashlib
import hmac
import io
import json
import secrets
import struct
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import segno

from guard.challenge.channels.base import SENT, ErrorCode, Notice, Recipient, SendContext, SendResult, failed
from guard.challenge.codes import normalize_input
from guard.challenge.sealed import Sealer, SealError
from guard.challenge.settings import TotpSettings
from guard.store.base import Delete, Get, Put, PutNew, Store

MIN_SECRET_BITS = 80  # legacy authenticator secrets; RFC 4226 recommends 160 (what we generate)
ENROL_TTL = 10 * 365 * 86400.0
_DIGESTS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha512": hashlib.sha512}
_PURPOSE = "totp"
_DUMMY_SECRET = secrets.token_bytes(20)


class EnrolmentError(ValueError):
    """A bad enrolment file line; names the file and line, never the username or secret."""


def hotp(secret: bytes, counter: int, digits: int = 6, algorithm: str = "sha1") -> str:
    """RFC 4226: HMAC over the 8-byte counter, dynamic truncation, ``digits`` decimal digits."""
    mac = hmac.new(secret, struct.pack(">Q", counter), _DIGESTS[algorithm]).digest()
    offset = mac[-1] & 0x0F
    value = int.from_bytes(mac[offset : offset + 4], "big") & 0x7FFFFFFF
    return f"{value % 10**digits:0{digits}d}"


def totp(secret: bytes, now: float, digits: int = 6, period: int = 30, algorithm: str = "sha1") -> str:
    return hotp(secret, int(now // period), digits, algorithm)


def decode_secret(text: str) -> bytes:
    """Base32 as authenticator apps show it (spaces and lower case tolerated, padding optional)."""
    clean = "".join(text.split()).upper().rstrip("=")
    try:
        raw = base64.b32decode(clean + "=" * (-len(clean) % 8))
    except (binascii.Error, ValueError):
        raise ValueError("not a base32 secret") from None
    if len(raw) * 8 < MIN_SECRET_BITS:
        raise ValueError(f"secret shorter than {MIN_SECRET_BITS} bits")
    return raw


def new_secret() -> str:
    return base64.b32encode(secrets.token_bytes(20)).decode().rstrip("=")


def provisioning_uri(secret_b32: str, account_label: str, settings: TotpSettings) -> str:
    """``otpauth://totp/...`` for authenticator apps (Key Uri Format)."""
    issuer = quote(settings.issuer, safe="")
    label = f"{issuer}:{quote(account_label, safe='')}"
    return (
        f"otpauth://totp/{label}?secret={secret_b32}&issuer={issuer}&algorithm={settings.algorithm.upper()}"
        f"&digits={settings.digits}&period={settings.period}"
    )


def qr_svg(uri: str) -> str:
    """The URI as an inline SVG QR code (segno; no Pillow, no external asset, CSP-friendly).

    A white background and a four-module quiet zone (ISO/IEC 18004): a transparent
    code on a dark page, or one cramped against the text, does not scan.
    """
    return segno.make(uri, error="m").svg_inline(scale=4, border=4, light="#fff")


def parse_enrolments(text: str, source: str) -> dict[str, str]:
    """``username,secret`` CSV (optional header) or JSON (an object, or a list of {username, secret})."""
    stripped = text.lstrip("\ufeff").strip()
    out: dict[str, str] = {}
    if stripped.startswith(("{", "[")):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise EnrolmentError(f"{source}:{exc.lineno}: not valid JSON") from None
        rows = (
            list(data.items())
            if isinstance(data, dict)
            else [(r.get("username"), r.get("secret")) if isinstance(r, dict) else (None, None) for r in data]
        )
        for i, (user, secret) in enumerate(rows, start=1):
            _add(out, user, secret, f"{source}: entry {i}")
        return out
    for number, row in enumerate(csv.reader(io.StringIO(stripped)), start=1):
        if not row or row[0].lstrip().startswith("#"):
            continue
        if number == 1 and [c.strip().lower() for c in row] == ["username", "secret"]:
            continue
        if len(row) != 2:
            raise EnrolmentError(f"{source}:{number}: expected username,secret")
        _add(out, row[0].strip(), row[1].strip(), f"{source}:{number}")
    return out


def _add(out: dict[str, str], user: object, secret: object, where: str) -> None:
    if not isinstance(user, str) or not user or not isinstance(secret, str):
        raise EnrolmentError(f"{where}: expected a username and a secret")
    try:
        decode_secret(secret)
    except ValueError as exc:
        raise EnrolmentError(f"{where}: {exc}") from None
    out[user] = secret


class Enrolments:
    """Who has an authenticator, and the check of its codes.  Also the ``SecondCheck`` of holds."""

    __slots__ = ("sealer", "settings", "store")

    def __init__(self, store: Store, sealer: Sealer, settings: TotpSettings) -> None:
        self.store = store
        self.sealer = sealer
        self.settings = settings

    async def enroll(self, account_key: str, secret_b32: str, now: float) -> None:
        secret = decode_secret(secret_b32)
        blob = self.sealer.seal(_PURPOSE, account_key, secret)
        await self.store.execute(
            [Put(_k("totp", account_key), blob, ENROL_TTL), Delete(_k("tu", account_key))], now
        )

    async def remove(self, account_key: str, now: float) -> bool:
        (gone,) = await self.store.execute([Delete(_k("totp", account_key))], now)
        return bool(gone)

    async def enrolled(self, account_key: str, now: float) -> bool:
        (blob,) = await self.store.execute([Get(_k("totp", account_key))], now)
        return blob is not None

    async def import_file(self, path: Path, account_key: Callable[[str], str], now: float) -> int:
        """Enrol every account of a CSV/JSON file; the count.  The file is read off the event loop."""
        text = await asyncio.to_thread(path.read_text, encoding="utf-8")
        rows = parse_enrolments(text, str(path))
        for user, secret in rows.items():
            await self.enroll(account_key(user), secret, now)
        return len(rows)

    async def check(self, account_key: str, typed: str, now: float, commit: bool) -> bool:
        """True for a current code not used before; claims its step when ``commit``.

        Without ``commit`` (an unarmed hold) the same read and HMACs run and the
        answer is always False.  An account with no enrolment is checked against a
        throwaway secret, for the same reason.
        """
        blob, last = await self.store.execute([Get(_k("totp", account_key)), Get(_k("tu", account_key))], now)
        secret = self._secret(account_key, blob)
        s = self.settings
        matched = self._match(secret or _DUMMY_SECRET, typed, now)
        if matched is None or secret is None or not commit:
            return False
        last_step = int(last) if last is not None and bytes(last).isdigit() else -1
        if matched <= last_step:
            return False
        claim_ttl = float((2 * s.window + 2) * s.period)
        claimed, _ = await self.store.execute(
            [
                PutNew(f"{_k('ts', account_key)}:{matched}", b"1", claim_ttl),
                Put(_k("tu", account_key), str(matched).encode(), ENROL_TTL),
            ],
            now,
        )
        return bool(claimed)

    # ---- self-enrolment (offered right after a passed challenge: guard.challenge.offers) ----------

    async def confirm(self, account_key: str, secret_b32: str, typed: str, now: float) -> bool:
        """Enrol ``secret_b32`` when ``typed`` is its current code (the proof that the app has it).

        Never replaces an enrolment (an operator's import, a racing offer): self-service must not
        swap the app an account already trusts.  The confirming code's step is marked used, so the
        same code cannot also answer the account's next challenge (RFC 6238 5.2).
        """
        secret = decode_secret(secret_b32)
        matched = self._match(secret, typed, now)
        if matched is None:
            return False
        blob = self.sealer.seal(_PURPOSE, account_key, secret)
        (stored,) = await self.store.execute([PutNew(_k("totp", account_key), blob, ENROL_TTL)], now)
        if stored:
            await self.store.execute([Put(_k("tu", account_key), str(matched).encode(), ENROL_TTL)], now)
        return bool(stored)

    def _match(self, secret: bytes, typed: str, now: float) -> int | None:
        """The step within ``window`` whose code is ``typed``; every step is compared (constant time)."""
        s = self.settings
        typed = normalize_input(typed)
        cur = int(now // s.period)
        matched: int | None = None
        for step in range(cur - s.window, cur + s.window + 1):
            good = hmac.compare_digest(hotp(secret, step, s.digits, s.algorithm).encode(), typed.encode())
            if good and matched is None:
                matched = step
        return matched

    def _secret(self, account_key: str, blob: bytes | None) -> bytes | None:
        if blob is None:
            return None
        try:
            return self.sealer.open(_PURPOSE, account_key, bytes(blob))
        except SealError:
            return None


class TotpChannel:
    """The user already holds the code; nothing is sent.  Reachability is an enrolment (see the service)."""

    name = "totp"
    delivers = False

    def __init__(self, enrolments: Enrolments) -> None:
        self.enrolments = enrolments

    def can_reach(self, recipient: Recipient) -> bool:
        return False  # decided by the enrolment lookup, which needs the store

    async def send(self, recipient: Recipient, code: str, context: SendContext) -> SendResult:
        return SENT

    async def notify(self, recipient: Recipient, notice: Notice, context: SendContext) -> SendResult:
        return failed(ErrorCode.UNSUPPORTED)

    async def check(self) -> SendResult:
        return SENT

    async def aclose(self) -> None:
        return None


def record_key(account_key: str) -> str:
    """The store key of an account's enrolment (read in the service's first batch)."""
    return _k("totp", account_key)


def _k(kind: str, account_key: str) -> str:
    return f"ch:{kind}:{account_key}"

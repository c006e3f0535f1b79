"""The hold lifecycle on the store contract: create, resend, attempt, release; nothing else touches holds.

A hold is what the guard keeps while it waits for a code: the upstream's
answer (step-up) or the client's request (``before_upstream``), sealed, under
a 128-bit random id.  It lives in the shared store, so any guard instance can
answer it, and with Redis it survives a restart.

**No validity oracle.**  A step-up hold is created for a right *and* a wrong
password, by the same code path: a code is drawn, digested, a record and a
hold are sealed and written with the same TTLs in the same batch.  The only
difference is the ``armed`` flag *inside* the sealed blob (and the held
answer itself): only an armed hold can ever pass, and only for an armed hold
does the caller send the code.  An attempt on an unarmed hold does the same
store and crypto work as a wrong code on an armed one and answers exactly
like it (tries left, exhaustion, expiry).  The sealed plaintext is padded to
``PAD`` bytes or the next power of two, so a blob's length tells someone who
can read the store a size class at most, and the common cases (a redirect, a
re-rendered login form) look alike.

Keys (all opaque; the hold id is URL-safe base64, so never ``{`` or ``}``):
``ch:h:<id>`` sealed hold, ``ch:c:<id>`` code record, ``ch:t:<id>`` tries,
``ch:r:<id>`` resends, ``ch:ag:<account>`` the account's guess budget.  A
code record is separate from the hold so a resend replaces it without
rewriting the hold: the store has no compare-and-set, and rewriting the hold
could resurrect one another instance just took.
Single use comes from ``Take``: of two instances accepting the same code at
once, exactly one gets the blob.

**Guesses per account.**  ``max_tries`` bounds one hold, but anyone can open
many holds for one account.  So every attempt also spends from the account's
budget (``guesses``, a fixed window shared by all its holds and instances),
taken with ``Incr`` *before* the code is compared, so parallel attempts cannot
all slip under it; a passed attempt gives its unit back, so only wrong codes
stay counted.  Over budget, no code passes, and the attempt answers exactly as
a wrong one would (``locked`` tells the caller to flag the source).  Unarmed
holds spend alike: the budget must not become a password oracle.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from guard.challenge import codes
from guard.challenge.codes import CodeRecord
from guard.challenge.keys import KID_BYTES, MAC_BYTES, KeyRing, b64d, b64e
from guard.challenge.sealed import HeldMessage, Sealer, SealError
from guard.challenge.settings import Limit
from guard.store.base import Delete, Get, Incr, Op, Put, Store, Take

log = logging.getLogger("guard.challenge.holds")

PAD = 4096
_PURPOSE = "hold"
_CSRF = b"csrf"
_ID = re.compile(r"^[A-Za-z0-9_-]{22}$")


class Mode(StrEnum):
    STEP_UP = "step_up"
    BEFORE_UPSTREAM = "before_upstream"


class Verdict(StrEnum):
    PASSED = "passed"  # release the held message (once)
    WRONG = "wrong"  # tries_left more guesses
    CODE_EXPIRED = "code_expired"  # the hold lives, its code does not: ask for a new one
    EXHAUSTED = "exhausted"  # max_tries wrong codes: the hold is gone (score the source)
    EXPIRED = "expired"  # no such hold: expired, used, destroyed, or never issued
    RESENT = "resent"  # a new code record was written
    RESEND_LIMITED = "resend_limited"
    # the authenticator-app offer after a passed code (guard.challenge.offers)
    ENROLLED = "enrolled"  # the app is set up; release the parked answer
    ENROL_SKIPPED = "enrol_skipped"  # no app; release the parked answer
    ENROL_WRONG = "enrol_wrong"  # not the app's code: the offer is shown again


def valid_hold_id(hold_id: str) -> bool:
    return bool(_ID.match(hold_id))


def frame(meta: bytes, message: HeldMessage) -> bytes:
    """A sealed record's plaintext: 4-byte length of the JSON metadata, the metadata, the held message."""
    return len(meta).to_bytes(4, "big") + meta + message.encode()


def unframe(data: bytes) -> tuple[dict[str, Any], HeldMessage, bytes]:
    """``frame`` read back: the metadata, the message, and whatever follows it (padding)."""
    n = int.from_bytes(data[:4], "big")
    meta = json.loads(data[4 : 4 + n])
    message, used = HeldMessage.decode(data[4 + n :])
    return meta, message, data[4 + n + used :]


@dataclass(frozen=True, slots=True)
class Hold:
    """The sealed part of a hold.  ``login_id`` and ``client_ip`` are PII: they exist only in here."""

    hold_id: str
    mode: Mode
    armed: bool
    created: float
    expires: float
    login_id: str
    account_key: str
    channel: str
    lang: str
    client_ip: str
    message: HeldMessage

    def encode(self) -> bytes:
        meta = json.dumps(
            {
                "v": 1,
                "mode": self.mode.value,
                "armed": self.armed,
                "created": self.created,
                "expires": self.expires,
                "login": self.login_id,
                "account": self.account_key,
                "channel": self.channel,
                "lang": self.lang,
                "ip": self.client_ip,
            },
            separators=(",", ":"),
        ).encode()
        body = frame(meta, self.message)
        return body + bytes(padded_size(len(body)) - len(body))

    @classmethod
    def decode(cls, hold_id: str, data: bytes) -> Hold:
        meta, message, rest = unframe(data)
        if any(rest):
            raise ValueError("hold padding is not zero")
        return cls(
            hold_id,
            Mode(meta["mode"]),
            bool(meta["armed"]),
            float(meta["created"]),
            float(meta["expires"]),
            str(meta["login"]),
            str(meta["account"]),
            str(meta["channel"]),
            str(meta["lang"]),
            str(meta["ip"]),
            message,
        )


@dataclass(frozen=True, slots=True)
class Created:
    hold_id: str
    binding: str  # the browser-binding cookie value
    csrf: str  # the form token: HMAC(hold id, binding)
    code: str | None  # only for an armed hold: the caller delivers it, then forgets it
    expires: float


@dataclass(frozen=True, slots=True)
class Result:
    verdict: Verdict
    tries_left: int = 0
    hold: Hold | None = None  # the hold (PASSED: to release; EXHAUSTED: whom it was for, for scoring)
    code: str | None = None  # RESENT on an armed hold: the new code to deliver
    locked: bool = False  # the account's guess budget is spent: shown as ``verdict``, but flag the source


class SecondCheck(Protocol):
    """A verifier that is not a stored code (TOTP).  Must cost the same for ``commit`` False and True."""

    async def check(self, account_key: str, typed: str, now: float, commit: bool) -> bool: ...


class Holds:
    __slots__ = (
        "code_ttl",
        "digits",
        "guesses",
        "hold_ttl",
        "max_resends",
        "max_tries",
        "ring",
        "sealer",
        "second",
        "store",
    )

    def __init__(
        self,
        store: Store,
        sealer: Sealer,
        *,
        hold_ttl: float,
        code_ttl: float,
        digits: int,
        max_tries: int,
        max_resends: int,
        second: dict[str, SecondCheck] | None = None,
        guesses: Limit | None = None,
    ) -> None:
        self.store = store
        self.sealer = sealer
        self.ring: KeyRing = sealer.ring
        self.hold_ttl = hold_ttl
        self.code_ttl = code_ttl
        self.digits = digits
        self.max_tries = max_tries
        self.max_resends = max_resends
        self.second = second or {}
        self.guesses = guesses  # None: per-hold tries only (the service always sets it)

    # ---- browser binding ----------------------------------------------------------------------

    def csrf_ok(self, hold_id: str, binding: str, csrf: str) -> bool:
        """The form token matches this hold and this browser's cookie (constant time).

        Without the cookie a leaked hold id (logs, shoulder surfing, a relayed page)
        cannot be answered from another browser, and a cross-site POST carries
        no token.  Checked before any store access, so junk costs no round trip.
        """
        token = b64d(csrf)
        if token is None or not valid_hold_id(hold_id) or not binding or len(binding) > 64:
            return False
        return self.ring.verify(_CSRF, token, hold_id, binding)

    # ---- lifecycle ----------------------------------------------------------------------------

    async def create(
        self,
        *,
        mode: Mode,
        armed: bool,
        login_id: str,
        account_key: str,
        channel: str,
        lang: str,
        client_ip: str,
        message: HeldMessage,
        now: float,
    ) -> Created:
        """Seal and store a hold.  Identical work for armed and unarmed holds, by construction."""
        hold_id = secrets.token_urlsafe(16)
        binding = secrets.token_urlsafe(16)
        code = codes.new_code(self.digits)
        hold = Hold(
            hold_id,
            mode,
            armed,
            now,
            now + self.hold_ttl,
            login_id,
            account_key,
            channel,
            lang,
            client_ip,
            message,
        )
        blob = self.sealer.seal(_PURPOSE, hold_id, hold.encode())
        record = codes.make_record(self.ring, hold_id, 0, code, now, self.code_ttl)
        await self.store.execute(
            [
                Put(_k("h", hold_id), blob, self.hold_ttl),
                Put(_k("c", hold_id), record.encode(), self.code_ttl),
            ],
            now,
        )
        csrf = b64e(self.ring.sign(_CSRF, hold_id, binding))
        return Created(hold_id, binding, csrf, code if armed else None, hold.expires)

    async def peek(self, hold_id: str, now: float) -> Hold | None:
        """The live hold, for re-rendering its page (a reload); None when gone."""
        if not valid_hold_id(hold_id):
            return None
        (blob,) = await self.store.execute([Get(_k("h", hold_id))], now)
        return self._open(hold_id, blob, now)

    async def resend(self, hold_id: str, now: float) -> Result:
        """A new code (a new generation: earlier codes stop working), at most ``max_resends`` times."""
        if not valid_hold_id(hold_id):
            return Result(Verdict.EXPIRED)
        count, blob = await self.store.execute(
            [Incr(_k("r", hold_id), self.hold_ttl), Get(_k("h", hold_id))], now
        )
        hold = self._open(hold_id, blob, now)
        if hold is None:
            await self.store.execute([Delete(_k("r", hold_id))], now)
            return Result(Verdict.EXPIRED)
        if count > self.max_resends or count > 255:
            return Result(Verdict.RESEND_LIMITED, hold=hold)
        code = codes.new_code(self.digits)
        ttl = min(self.code_ttl, hold.expires - now)
        record = codes.make_record(self.ring, hold_id, count, code, now, ttl)
        await self.store.execute([Put(_k("c", hold_id), record.encode(), ttl)], now)
        return Result(Verdict.RESENT, hold=hold, code=code if hold.armed else None)

    async def attempt(self, hold_id: str, typed: str, now: float) -> Result:
        """One guess; every guess counts, and the ``max_tries``-th wrong one destroys the hold."""
        if not valid_hold_id(hold_id):
            return Result(Verdict.EXPIRED)
        tries, blob, raw_record = await self.store.execute(
            [Incr(_k("t", hold_id), self.hold_ttl), Get(_k("h", hold_id)), Get(_k("c", hold_id))], now
        )
        hold = self._open(hold_id, blob, now)
        if hold is None:
            await self.store.execute([Delete(_k("t", hold_id))], now)
            return Result(Verdict.EXPIRED)
        if tries > self.max_tries:  # a racing instance already used the last try
            await self._destroy(hold_id, now)
            return Result(Verdict.EXHAUSTED, hold=hold)
        within = True
        budget = self.guesses
        if budget is not None:
            (spent,) = await self.store.execute([Incr(_account(hold.account_key), budget.window)], now)
            within = isinstance(spent, int) and spent <= budget.count
        record = CodeRecord.decode(raw_record) if raw_record is not None else None
        live = record is not None and record.expires > now
        second = self.second.get(hold.channel)
        if second is not None:
            # Over budget: the same read and HMACs, but nothing is claimed (commit=False is always False).
            ok = await second.check(hold.account_key, typed, now, commit=hold.armed and within)
            live = True  # the app's code does not expire with our record
        else:
            # No record (expired): digest against a throwaway one, so the work is the same.
            probe = record if record is not None else _DUMMY_RECORD
            ok = codes.matches(self.ring, hold_id, probe, typed) and record is not None
        if ok and live and hold.armed and within:
            release: list[Op] = [
                Take(_k("h", hold_id)),
                Delete(_k("c", hold_id)),
                Delete(_k("t", hold_id)),
                Delete(_k("r", hold_id)),
            ]
            if budget is not None:  # a right code is not a guess: its unit goes back
                release.append(Incr(_account(hold.account_key), budget.window, -1))
            taken, *_ = await self.store.execute(release, now)
            if taken is None:  # another instance released it first: single use
                return Result(Verdict.EXPIRED)
            return Result(Verdict.PASSED, hold=hold)
        if tries >= self.max_tries:
            await self._destroy(hold_id, now)
            return Result(Verdict.EXHAUSTED, hold=hold, locked=not within)
        verdict = Verdict.WRONG if live else Verdict.CODE_EXPIRED
        return Result(verdict, self.max_tries - tries, hold, locked=not within)

    async def discard(self, hold_id: str, now: float) -> None:
        """Forget a hold (the user signed in again, an operator cleared it)."""
        if valid_hold_id(hold_id):
            await self._destroy(hold_id, now)

    # ---- internals ----------------------------------------------------------------------------

    async def _destroy(self, hold_id: str, now: float) -> None:
        await self.store.execute([Delete(_k(p, hold_id)) for p in ("h", "c", "t", "r")], now)

    def _open(self, hold_id: str, blob: bytes | None, now: float) -> Hold | None:
        if blob is None:
            return None
        try:
            hold = Hold.decode(hold_id, self.sealer.open(_PURPOSE, hold_id, bytes(blob)))
        except (SealError, ValueError, KeyError, TypeError) as exc:
            # Tampered, or sealed with a key since removed: as good as expired.
            log.warning("unreadable hold dropped (%s)", type(exc).__name__)
            return None
        return hold if hold.expires > now else None


_DUMMY_RECORD = CodeRecord(0, 0.0, 0.0, bytes(KID_BYTES + MAC_BYTES))


def padded_size(n: int) -> int:
    """``PAD`` bytes, or the next power of two above: a stored blob tells its size class at most."""
    size = PAD
    while size < n:
        size *= 2
    return size


def _k(kind: str, hold_id: str) -> str:
    return f"ch:{kind}:{hold_id}"


def _account(account_key: str) -> str:
    """The account's guess budget: one counter for all its holds, on every instance."""
    return f"ch:ag:{account_key}"

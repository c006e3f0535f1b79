"""Self-enrolment offers: a passed hold's answer parked while its owner sets up an authenticator app.

An offer exists only because a code was just right: ``Challenges.answer``
creates it from the hold it released, and nothing else can.  It carries what
the hold carried (the upstream's answer, the login id) plus the new TOTP
secret, sealed together under a fresh random id, so:

- the secret shown in the QR code is the one confirmed, whichever instance
  answers, and two offers for one account never share a pending secret;
- the offer is bound to the browser like a hold (a new binding cookie, and a
  CSRF token made under its own purpose, so a hold's token is no offer token);
- it is single use (``Take``) and expires with ``self_enrol_ttl``: the held
  answer is released once, set up or skipped, or never.

Keys: ``ch:o:<id>`` the sealed offer, ``ch:ot:<id>`` wrong confirmation codes.
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass

from guard.challenge.holds import Hold, frame, unframe, valid_hold_id
from guard.challenge.keys import b64d, b64e
from guard.challenge.sealed import HeldMessage, Sealer, SealError
from guard.store.base import Delete, Get, Incr, Put, Store, Take

log = logging.getLogger("guard.challenge.offers")

_PURPOSE = "enrol-offer"
_CSRF = b"enrol-csrf"


@dataclass(frozen=True, slots=True)
class Offer:
    """The sealed part of an offer.  ``login_id`` and ``secret`` exist only in here (and on the page)."""

    offer_id: str
    expires: float
    login_id: str
    account_key: str
    lang: str
    secret: str  # base32, as the app shows it
    message: HeldMessage

    def encode(self) -> bytes:
        meta = json.dumps(
            {
                "v": 1,
                "expires": self.expires,
                "login": self.login_id,
                "account": self.account_key,
                "lang": self.lang,
                "secret": self.secret,
            },
            separators=(",", ":"),
        ).encode()
        return frame(meta, self.message)

    @classmethod
    def decode(cls, offer_id: str, data: bytes) -> Offer:
        meta, message, _ = unframe(data)
        return cls(
            offer_id,
            float(meta["expires"]),
            str(meta["login"]),
            str(meta["account"]),
            str(meta["lang"]),
            str(meta["secret"]),
            message,
        )


@dataclass(frozen=True, slots=True)
class Parked:
    offer: Offer
    binding: str  # the new browser-binding cookie value
    csrf: str


class Offers:
    __slots__ = ("max_tries", "sealer", "store", "ttl")

    def __init__(self, store: Store, sealer: Sealer, *, ttl: float, max_tries: int) -> None:
        self.store = store
        self.sealer = sealer
        self.ttl = ttl
        self.max_tries = max_tries

    def csrf_ok(self, offer_id: str, binding: str, csrf: str) -> bool:
        """The form token matches this offer and this browser's cookie (constant time, no store access)."""
        token = b64d(csrf)
        if token is None or not valid_hold_id(offer_id) or not binding or len(binding) > 64:
            return False
        return self.sealer.ring.verify(_CSRF, token, offer_id, binding)

    async def park(self, hold: Hold, secret: str, now: float) -> Parked:
        """Move a just-released hold's answer into a new offer (the hold itself is already gone)."""
        offer_id = secrets.token_urlsafe(16)
        binding = secrets.token_urlsafe(16)
        offer = Offer(offer_id, now + self.ttl, hold.login_id, hold.account_key, hold.lang, secret, hold.message)
        blob = self.sealer.seal(_PURPOSE, offer_id, offer.encode())
        await self.store.execute([Put(_k("o", offer_id), blob, self.ttl)], now)
        csrf = b64e(self.sealer.ring.sign(_CSRF, offer_id, binding))
        return Parked(offer, binding, csrf)

    async def attempt(self, offer_id: str, now: float) -> tuple[int, Offer | None]:
        """Count one confirmation code and read the offer: (codes tried so far, the live offer or None)."""
        if not valid_hold_id(offer_id):
            return 0, None
        tries, blob = await self.store.execute([Incr(_k("ot", offer_id), self.ttl), Get(_k("o", offer_id))], now)
        return (tries if isinstance(tries, int) else 0), self._open(offer_id, blob, now)

    async def take(self, offer_id: str, now: float) -> Offer | None:
        """The offer, once: of two requests (or instances) finishing it at once, one gets it."""
        if not valid_hold_id(offer_id):
            return None
        blob, _ = await self.store.execute([Take(_k("o", offer_id)), Delete(_k("ot", offer_id))], now)
        return self._open(offer_id, blob, now)

    def _open(self, offer_id: str, blob: bytes | None, now: float) -> Offer | None:
        if blob is None:
            return None
        try:
            offer = Offer.decode(offer_id, self.sealer.open(_PURPOSE, offer_id, bytes(blob)))
        except (SealError, ValueError, KeyError, TypeError) as exc:
            log.warning("unreadable enrolment offer dropped (%s)", type(exc).__name__)
            return None
        return offer if offer.expires > now else None


def _k(kind: str, offer_id: str) -> str:
    return f"ch:{kind}:{offer_id}"

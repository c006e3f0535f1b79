"""Trusted-device cookies: after a passed challenge, a browser is "known" for this account for a while.

The cookie is stateless and signed: ``v1 || device id || first || issued || kid || HMAC``,
where the HMAC covers the account key.  So:

- a cookie copied to another account's login is worthless (bound to the account);
- a stolen cookie dies after ``idle`` without use and after ``lifetime`` in any
  case (``first`` is signed, rotation cannot extend it);
- rotation re-signs with the current key and a fresh ``issued`` once the
  cookie is older than ``rotate_after``, so key rotation reaches devices too.

One cookie per account (the name carries a short keyed digest of the account
key, never the account name), so a shared computer can know several accounts.
Rules see ``device: known|new``; what "known" skips is the engine's decision.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from guard.challenge.keys import KID_BYTES, MAC_BYTES, KeyRing, b64d, b64e
from guard.challenge.settings import DeviceSettings

_PURPOSE = b"device"
_BODY = struct.Struct(">B12sII")  # version, device id, first, issued (Unix seconds)
_VERSION = 1
_SIZE = _BODY.size + KID_BYTES + MAC_BYTES


class DeviceStatus(StrEnum):
    KNOWN = "known"
    NEW = "new"


@dataclass(frozen=True, slots=True)
class DeviceCheck:
    status: DeviceStatus
    set_cookie: str | None = None  # a rotated cookie to send back (Set-Cookie value), when due


class Devices:
    __slots__ = ("ring", "settings")

    def __init__(self, ring: KeyRing, settings: DeviceSettings) -> None:
        self.ring = ring
        self.settings = settings

    def cookie_name(self, account_key: str, secure: bool) -> str:
        # Unkeyed, so key rotation does not rename (and so forget) every device; the
        # account key is already an opaque HMAC, and this is a short hash of it.
        tag = hashlib.sha256(b"loginguard/device-name\x00" + account_key.encode()).hexdigest()[:10]
        return f"__Host-lgd-{tag}" if secure else f"lgd-{tag}"

    def issue(
        self,
        account_key: str,
        now: float,
        secure: bool,
        _device: bytes | None = None,
        _first: int | None = None,
    ) -> str:
        """A ``Set-Cookie`` value for a device that just passed a challenge."""
        device = _device or secrets.token_bytes(12)
        first = _first if _first is not None else int(now)
        body = _BODY.pack(_VERSION, device, first, int(now))
        value = b64e(body + self.ring.sign(_PURPOSE, account_key, body))
        return _set_cookie(self.cookie_name(account_key, secure), value, int(self.settings.idle), secure)

    def check(self, cookies: Mapping[str, str], account_key: str, now: float, secure: bool) -> DeviceCheck:
        """Known when this account's cookie is authentic and within both expiries."""
        raw = b64d(cookies.get(self.cookie_name(account_key, secure), ""))
        if raw is None or len(raw) != _SIZE:
            return DeviceCheck(DeviceStatus.NEW)
        body, token = raw[: _BODY.size], raw[_BODY.size :]
        if not self.ring.verify(_PURPOSE, token, account_key, body):
            return DeviceCheck(DeviceStatus.NEW)
        version, device, first, issued = _BODY.unpack(body)
        s = self.settings
        if version != _VERSION or now - issued > s.idle or now - first > s.lifetime or issued > now + 300:
            return DeviceCheck(DeviceStatus.NEW)
        rotate = now - issued >= s.rotate_after or token[:KID_BYTES] != self.ring.current.kid
        refreshed = self.issue(account_key, now, secure, _device=device, _first=first) if rotate else None
        return DeviceCheck(DeviceStatus.KNOWN, refreshed)


def _set_cookie(name: str, value: str, max_age: int, secure: bool, path: str = "/") -> str:
    parts = [f"{name}={value}", f"Max-Age={max_age}", f"Path={path}", "HttpOnly", "SameSite=Strict"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def binding_cookie_name(secure: bool) -> str:
    """The hold's browser-binding cookie; ``__Host-`` (Secure, Path=/, no Domain) when served over TLS."""
    return "__Host-lg-hold" if secure else "lg-hold"


def binding_cookie(value: str, max_age: int, secure: bool) -> str:
    """``Set-Cookie`` for the binding: HttpOnly (no script reads it), SameSite=Strict (no cross-site POST)."""
    parts = [
        f"{binding_cookie_name(secure)}={value}",
        f"Max-Age={max_age}",
        "Path=/",
        "HttpOnly",
        "SameSite=Strict",
    ]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def clear_binding_cookie(secure: bool) -> str:
    return binding_cookie("", 0, secure)

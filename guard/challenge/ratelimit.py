"""Sending limits: fixed windows on the store (``Incr`` with a TTL), shared by every instance.

Two keys, two purposes, two visibilities (see ``SendLimits``):

- per source address, counted for every hold and resend, right password or
  wrong: exceeding it is shown to the client, which learns nothing it did
  not cause itself;
- per account, counted only for codes actually sent: exceeding it is never
  shown (the client would learn that the password was right), it only stops
  the mail or SMS bombing of an owner.

Source addresses are keyed by HMAC: an IP address is personal data and need
not sit in the store in clear.
"""

from __future__ import annotations

from guard.challenge.keys import KeyRing
from guard.challenge.settings import Limit
from guard.store.base import Incr


def source_op(ring: KeyRing, client_ip: str, limit: Limit) -> Incr:
    """Per source: an IPv6 host owns its whole /64, so the limit counts the /64, not the address."""
    source = client_ip
    if ":" in client_ip:
        from guard.engine.bancache import subnet_of

        try:
            source = subnet_of(client_ip)
        except (OSError, ValueError):
            source = client_ip
    return Incr(f"ch:ls:{ring.digest(b'source', source)}", limit.window)


def account_op(account_key: str, limit: Limit) -> Incr:
    return Incr(f"ch:la:{account_key}", limit.window)


def notice_op(account_key: str, limit: Limit) -> Incr:
    return Incr(f"ch:ln:{account_key}", limit.window)


def over(count: object, limit: Limit) -> bool:
    return isinstance(count, int) and count > limit.count

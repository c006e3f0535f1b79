"""What the upstream is told about the client: the forwarding fields the guard writes, for both adapters.

Transport-free: the aiohttp proxy (``guard.http.headers``) and the mitmproxy
addon (``guard.mitm.addon``) hold headers in different types, so they ask
here which fields to drop from the client's request and which to add, and
each applies the answer to its own header type.  One definition keeps the two
from drifting: a forged ``X-Forwarded-For`` must be dropped by both, and a
trusted hop's chain extended the same way by both.

Forwarding headers are only as honest as whoever wrote them.  From a peer we
do not trust, ``X-Forwarded-*``, ``Forwarded`` and the common "real IP"
headers are dropped and rewritten, so a forged client IP never reaches the
upstream (old services often believe the first ``X-Forwarded-For`` entry).
From a trusted hop, only the chain those hops write (``forwarded_header``) is
extended; the other one is the client's own and is dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

# RFC 9110 section 7.6.1 lists Connection, Proxy-Connection, Keep-Alive, TE,
# Transfer-Encoding and Upgrade; RFC 9110 section 11.7 adds the Proxy-Auth pair
# (they address the proxy, not the origin) and Trailer goes with TE.
HOP_BY_HOP: frozenset[str] = frozenset({
    "connection", "proxy-connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "transfer-encoding", "upgrade",
})

# Written by proxies, never by browsers: from an untrusted peer they are forgeries.
FORWARDING: frozenset[str] = frozenset({
    "forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port",
    "x-real-ip", "x-client-ip", "true-client-ip",
})

# From a trusted hop: the chains are rebuilt (one extended, the other dropped), the rest kept.
_TRUSTED_DROP: frozenset[str] = frozenset({"x-forwarded-for", "forwarded"})


class Forwarding(NamedTuple):
    """What the guard knows about one request's hop, for the headers it writes."""

    peer: str              # canonical address of whoever connected (PROXY source if any)
    trusted: bool          # peer is in trusted_proxies: its forwarding headers are kept
    scheme: str            # "http" or "https" on the public listener
    host: str | None       # the Host the client asked for (None: it sent none)
    header: str = "x-forwarded-for"  # the one header trusted proxies write (config.forwarded_header)


def dropped(trusted: bool) -> frozenset[str]:
    """Lower-case forwarding field names not copied from the client's request (``added`` replaces them)."""
    return _TRUSTED_DROP if trusted else FORWARDING


def _forwarded_node(ip: str) -> str:
    # RFC 7239 section 6: IPv6 nodes are bracketed, and then must be quoted
    return f'"[{ip}]"' if ":" in ip else ip


def added(fwd: Forwarding, getall: Callable[[str], Iterable[str]]) -> list[tuple[str, str]]:
    """The forwarding fields to append, read from the client's fields (``getall``: every value of a name)."""
    out: list[tuple[str, str]] = []
    if fwd.trusted:
        # A trusted proxy's chain is kept and the hop that reached us appended,
        # the de-facto X-Forwarded-For contract (right-most = nearest hop).
        # Only the chain the trusted proxies write goes on; the other header is the client's own.
        prior = ", ".join(getall("X-Forwarded-For")) if fwd.header == "x-forwarded-for" else ""
        out.append(("X-Forwarded-For", f"{prior}, {fwd.peer}" if prior else fwd.peer))
        forwarded = list(getall("Forwarded")) if fwd.header == "forwarded" else []
        if forwarded:
            # RFC 7239 section 4: a proxy appends its element to the list
            element = f"for={_forwarded_node(fwd.peer)};proto={fwd.scheme}"
            out.append(("Forwarded", ", ".join((*forwarded, element))))
        if not list(getall("X-Forwarded-Proto")):
            out.append(("X-Forwarded-Proto", fwd.scheme))
        if fwd.host is not None and not list(getall("X-Forwarded-Host")):
            out.append(("X-Forwarded-Host", fwd.host))
    else:
        out.append(("X-Forwarded-For", fwd.peer))
        out.append(("X-Forwarded-Proto", fwd.scheme))
        if fwd.host is not None:
            out.append(("X-Forwarded-Host", fwd.host))
    return out

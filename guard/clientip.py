"""Who is the client: the socket peer, or what trusted hops say about it.

The rule every user of a login guard gets bitten by: a client can write any
``X-Forwarded-For`` it likes.  We believe forwarding headers only when the peer is
one of ``trusted_proxies``, and then walk the chain from the right, skipping
trusted hops, so the first untrusted address is the client.  Addresses come out
in one canonical text form: IPv4-mapped IPv6 (``::ffff:1.2.3.4``) becomes
``1.2.3.4`` and IPv6 is compressed and lower case, so rules, bans and counters
see one key per client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import cast

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Headers longer than this are not parsed: they are either broken or an attack.
MAX_FORWARD_HEADER = 4096
MAX_HOPS = 32


@lru_cache(maxsize=65536)
def parse_ip(text: str) -> IPAddress | None:
    """Canonical address or None; accepts brackets, ports and zone ids as they appear in headers."""
    s = text.strip().strip('"')
    if not s:
        return None
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            return None
        s = s[1:end]
    elif s.count(":") == 1:  # IPv4 with a port
        s = s.split(":", 1)[0]
    s = s.split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(s)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@lru_cache(maxsize=4096)
def normalize(text: str) -> str | None:
    """``text``'s canonical address, or None.  Remembered for the clients seen most (keyed by
    the text, whose hash Python keeps): ``str`` of an address object cost about 3 us a request
    in the proxy's profile.  Small, because a rotating botnet misses it anyway."""
    ip = parse_ip(text)
    return None if ip is None else str(ip)


def _canonical(text: str) -> str:
    """``normalize`` of a text that ``parse_ip`` already accepted (so never None)."""
    return cast(str, normalize(text))


class TrustedProxies:
    """A set of CIDRs with a fast membership test for the common small case."""

    __slots__ = ("_nets", "empty")

    def __init__(self, cidrs: Iterable[str]) -> None:
        nets: list[IPNetwork] = []
        for c in cidrs:
            net = ipaddress.ip_network(c, strict=False)
            if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped is not None:
                # ::ffff:10.0.0.0/104 means 10.0.0.0/8: addresses are unmapped before lookup
                plen = max(0, net.prefixlen - 96)
                net = ipaddress.ip_network(f"{net.network_address.ipv4_mapped}/{plen}", strict=False)
            nets.append(net)
        self._nets = tuple(nets)
        self.empty = not nets

    def __contains__(self, ip: IPAddress) -> bool:
        return self._contains(ip)

    def _contains(self, ip: IPAddress) -> bool:
        for net in self._nets:
            if net.version == ip.version and ip in net:
                return True
        return False


def _forwarded_for(value: str) -> list[str]:
    """The ``for=`` parameters of an RFC 7239 ``Forwarded`` header, in order."""
    out: list[str] = []
    for element in value.split(","):
        for pair in element.split(";"):
            name, sep, v = pair.partition("=")
            if sep and name.strip().lower() == "for":
                out.append(v.strip())
    return out


def forwarding_chains(
    which: str, getall: Callable[[str], Iterable[str]]
) -> tuple[Iterable[str], Iterable[str]]:
    """(X-Forwarded-For values, Forwarded values): only the header the trusted proxies write.

    A balancer that appends to ``X-Forwarded-For`` passes a client's own ``Forwarded``
    header on untouched (and the other way round): reading both lets the client choose.
    """
    if which == "forwarded":
        return (), list(getall("Forwarded"))
    return list(getall("X-Forwarded-For")), ()


def resolve(
    peer: str | None,
    trusted: TrustedProxies,
    xff: Iterable[str] = (),
    forwarded: Iterable[str] = (),
) -> tuple[str, bool]:
    """Return (client ip, came_from_header).

    ``xff`` and ``forwarded`` are every instance of those headers, in order.  When
    the peer is untrusted (or nothing is trusted) the headers are ignored.  If
    every hop is trusted the left-most one is the client.  Unknown or obfuscated
    entries (``for=unknown``, ``_hidden``) stop the walk: we cannot see past them,
    so the hop that reported them is the best we know.
    """
    peer_ip = parse_ip(peer) if peer else None
    if peer is None or peer_ip is None:
        return (peer or "0.0.0.0", False)
    if trusted.empty or peer_ip not in trusted:
        return (_canonical(peer), False)
    chain: list[str] = []
    for h in forwarded:
        if len(h) <= MAX_FORWARD_HEADER:
            chain.extend(_forwarded_for(h))
    if not chain:
        for h in xff:
            if len(h) <= MAX_FORWARD_HEADER:
                chain.extend(p for p in h.split(","))
    current, current_text = peer_ip, peer
    for entry in reversed(chain[-MAX_HOPS:]):
        ip = parse_ip(entry)
        if ip is None:
            break
        current, current_text = ip, entry
        if ip not in trusted:
            return (_canonical(entry), True)
    return (_canonical(current_text), current is not peer_ip)

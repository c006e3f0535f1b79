"""Which headers cross the guard, in each direction, and the forwarding headers it adds.

Pure functions over multidicts, called once per request and once per response.
Two threats shape them:

* Hop-by-hop fields describe one connection, not the message (RFC 9110 section
  7.6.1); forwarding them lets a client steer the guard-to-upstream connection
  (``Connection: close`` storms, ``Transfer-Encoding`` smuggling), so they are
  removed in both directions, with every field that ``Connection`` names.
* Forwarding headers are only as honest as whoever wrote them.  From a peer we
  do not trust, ``X-Forwarded-*``, ``Forwarded`` and the common "real IP"
  headers are dropped and rewritten, so a forged client IP never reaches the
  upstream (old services often believe the first ``X-Forwarded-For`` entry).
  Which ones is decided in ``guard.forwarding``, shared with the mitmproxy addon.
"""

from __future__ import annotations

from collections.abc import Iterable

from multidict import CIMultiDict, CIMultiDictProxy

from guard.forwarding import FORWARDING, HOP_BY_HOP, Forwarding, added, dropped

__all__ = [
    "FORWARDING", "HOP_BY_HOP", "Forwarding", "connection_tokens", "readable_encodings", "request_headers",
    "strip_hop_by_hop",
]

# Request fields the guard consumes or rewrites itself.  ``Expect: 100-continue``
# is answered by the guard (RFC 9110 section 10.1.1), so it is not passed on.
_REQUEST_DROP = HOP_BY_HOP | {"x-forwarded-for", "expect"}
# (peer trusted, Host overridden) -> names not copied from the client
_REQUEST_DROPS: dict[tuple[bool, bool], frozenset[str]] = {
    (True, False): _REQUEST_DROP | dropped(True),
    (True, True): _REQUEST_DROP | dropped(True) | {"host"},
    (False, False): _REQUEST_DROP | dropped(False),
    (False, True): _REQUEST_DROP | dropped(False) | {"host"},
}
_RESPONSE_DROP = HOP_BY_HOP


def connection_tokens(values: Iterable[str]) -> frozenset[str]:
    """Lower-case field names listed in ``Connection`` (RFC 9110 section 7.6.1)."""
    out: set[str] = set()
    for value in values:
        for token in value.split(","):
            token = token.strip().lower()
            if token:
                out.add(token)
    return frozenset(out)


def _drop_set(headers: CIMultiDictProxy[str], base: frozenset[str]) -> frozenset[str]:
    conn = headers.getall("Connection", ())
    if not conn:
        return base
    tokens = connection_tokens(conn)
    # "close" and "keep-alive" are the usual tokens and change nothing here
    return base if tokens <= base or tokens <= {"close", "keep-alive"} else base | tokens


def request_headers(
    incoming: CIMultiDictProxy[str], fwd: Forwarding, host_override: str | None
) -> list[tuple[str, str]]:
    """The header list to send upstream.

    ``host_override`` None keeps the client's Host (``host_header: keep``);
    otherwise it is sent as Host.  A list of pairs rather than a multidict: the
    HTTP client copies headers into its own multidict anyway, so this is the
    only structure built per request.
    """
    drop = _drop_set(incoming, _REQUEST_DROPS[fwd.trusted, host_override is not None])
    out: list[tuple[str, str]] = []
    spelling: dict[str, str] = {}
    for k, v in incoming.items():
        lower = k.lower()
        if lower not in drop:
            # Repeats take the first spelling: aiohttp's client keeps only the last
            # of "X-A: 1" and "x-a: 2" (it compares names case-sensitively there).
            out.append((spelling.setdefault(lower, k), v))
    if host_override is not None:
        out.append(("Host", host_override))
    out += added(fwd, lambda name: incoming.getall(name, ()))
    return out


def strip_hop_by_hop(headers: CIMultiDict[str]) -> None:
    """Remove hop-by-hop fields from a copy of the upstream's headers (repeats of the rest stay).

    Copy-then-delete: the copy is one C call and the deletions a handful of
    lookups, cheaper than filtering field by field in Python.
    """
    conn = headers.getall("Connection", None)
    drop = _RESPONSE_DROP if conn is None else _RESPONSE_DROP | connection_tokens(conn)
    for name in drop:
        if name in headers:
            del headers[name]


# Codings the login outcome classifier can read (guard.engine.outcome inflates gzip
# and deflate only); "identity" is always acceptable (RFC 9110 section 12.5.3).
_READABLE_CODINGS = frozenset({"gzip", "x-gzip", "deflate", "identity"})


def readable_encodings(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Narrow ``Accept-Encoding`` to codings the guard can inspect (login responses only)."""
    out: list[tuple[str, str]] = []
    for k, v in headers:
        if k.lower() != "accept-encoding":
            out.append((k, v))
            continue
        kept = [c.strip() for c in v.split(",") if c.split(";", 1)[0].strip().lower() in _READABLE_CODINGS]
        # not "drop the header": no Accept-Encoding means any coding is acceptable
        out.append((k, ", ".join(kept) if kept else "identity"))
    return out

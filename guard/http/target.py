"""The request-target: what goes upstream untouched, and what the rules match on.

Two different needs.  The upstream must receive the target byte for byte
(re-encoding ``%2F`` or resolving ``..`` would change what an old service
routes to).  The login matcher, on the other hand, must see the path the way
the upstream will *interpret* it, or an attacker evades a ``/login`` rule with
``/%6Cogin``, ``//login``, ``/x/../login`` or ``/login;jsessionid=1``.  So
``match_path`` decodes and normalises generously: a false match only means a
request gets the (harmless) login treatment.
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import unquote, urlsplit


class Target(NamedTuple):
    path_qs: str    # origin-form to send upstream, exactly as received
    path: str       # raw path, without the query
    query: str      # raw query, without "?"
    host: str | None  # authority of an absolute-form target (RFC 9112 section 3.2.2)


def parse_target(raw: str) -> Target | None:
    """Split an origin-form or absolute-form target; None for forms a gateway does not forward.

    Asterisk-form (``OPTIONS *``) and authority-form (``CONNECT``) address the
    guard itself (RFC 9112 sections 3.2.3-3.2.4), not a resource of the upstream.
    """
    if raw.startswith("/"):
        path, _, query = raw.partition("?")
        return Target(raw, path, query, None)
    if raw.startswith(("http://", "https://")):
        # RFC 9112 section 3.2.2: a server receiving absolute-form ignores Host
        # and uses the target's authority; upstream gets the origin-form part.
        try:
            parts = urlsplit(raw)
        except ValueError:
            return None
        if not parts.netloc:
            return None
        path = parts.path or "/"
        path_qs = f"{path}?{parts.query}" if parts.query else path
        return Target(path_qs, path, parts.query, parts.netloc)
    return None


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4, on an absolute path."""
    out: list[str] = []
    segments = path.split("/")
    for seg in segments[1:]:
        if seg == "..":
            if out:
                out.pop()
        elif seg != ".":
            out.append(seg)
    trailing = segments[-1] in (".", "..")
    result = "/" + "/".join(out)
    if trailing and not result.endswith("/"):
        result += "/"
    return result


def match_path(path: str) -> str:
    """The path as rules see it: decoded, without dot segments, parameters or repeated slashes."""
    if "%" not in path and "/." not in path and "//" not in path and ";" not in path and "\\" not in path:
        return path  # the common case: nothing to normalise, no allocation
    p = unquote(path, errors="replace") if "%" in path else path
    p = p.replace("\\", "/")  # IIS and some Windows stacks treat backslash as a separator
    if ";" in p:
        # Java servlet containers drop ";param" from every segment before routing
        p = "/".join(seg.split(";", 1)[0] for seg in p.split("/"))
    while "//" in p:
        p = p.replace("//", "/")
    if not p.startswith("/"):
        p = "/" + p
    if "/." in p:
        p = _remove_dot_segments(p)
    return p

"""Tell from the upstream's answer whether a login worked.

Pure: status, headers and the first bytes of the body in, an ``Outcome`` out.  A
legacy service says "wrong password" in many ways (a 200 with the form again, a
redirect back to ``/login?error``, a JSON flag), so ``OutcomeConfig`` names the
signals and this module applies them in a fixed order.  The first signal that is
configured *and present* in the response decides:

1. ``json_field``: the value at a JSON pointer in the body equals ``success`` ->
   success, any other value -> failure.  Most specific, so it comes first.
2. body markers: ``failure_body`` found -> failure, else ``success_body`` found ->
   success.  Failure beats success because a failure page often still contains the
   words of the success page ("Welcome! Your password was wrong").
3. ``success_cookie``: a ``Set-Cookie`` of that name with a non-empty value that is
   not a deletion -> success.  Its absence decides nothing: failed logins often
   set cookies too, and a missing cookie might be the upstream's choice.
4. ``Location`` of a redirect (3xx): ``failure_location`` matches -> failure;
   else with ``success_location`` configured: matches -> success, no match ->
   failure (the operator said what success looks like; a redirect elsewhere is
   the form bouncing back) unless ``failure_location`` is configured too, in
   which case a redirect matching neither is unknown.
5. status: in ``success_status`` -> success, in ``failure_status`` -> failure.
6. anything else -> unknown.  Unknown is counted as neither, so a misconfigured
   endpoint under-counts rather than locking people out.

The body signals only look at the first ``BODY_PEEK`` bytes (the adapter peeks
that much when ``needs_body`` says so, then streams the rest unchanged).  A gzip
or deflate body is inflated (bounded to ``BODY_PEEK`` of output); bytes that do
not inflate are taken as already decoded, which is what mitmproxy's ``content``
hands over with the original ``Content-Encoding`` header still present.  Other
codings (br, zstd) leave the body signals absent; the proxy should not offer
them to the upstream on login requests.
"""

from __future__ import annotations

import email.utils
import functools
import json
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit, urlunsplit

from guard.config import OutcomeConfig
from guard.engine.loginbody import MISSING, parse_header_value, parse_pointer, resolve_pointer, usable_charset
from guard.rules.regex import Matcher, compile_regex

BODY_PEEK = 65536
"""Bytes of a login response body the body signals may look at (AWS ATP reads 64 KB too)."""

# Without a Date header, an Expires before this (2000-01-01) is a deletion: deleting frameworks
# use 1970 or similar, and nobody sets a live cookie that expired decades ago.
_EXPIRED_WITHOUT_DATE = 946_684_800.0


class Outcome(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    UNKNOWN = "unknown"


def needs_body(cfg: OutcomeConfig) -> bool:
    """Whether ``classify`` can use the body, so the adapter knows to peek ``BODY_PEEK`` bytes."""
    return bool(cfg.success_body or cfg.failure_body or cfg.json_field is not None)


@dataclass(frozen=True, slots=True)
class _Plan:
    """An OutcomeConfig compiled once: regexes compiled, the pointer parsed."""

    json_tokens: tuple[str, ...] | None
    # RE2 (linear time): Location often echoes the request path, i.e. the attacker's text
    success_location: Matcher | None
    failure_location: Matcher | None


@functools.lru_cache(maxsize=256)
def _plan(cfg: OutcomeConfig) -> _Plan:
    tokens: tuple[str, ...] | None = None
    if cfg.json_field is not None:
        try:
            tokens = parse_pointer(cfg.json_field.pointer)
        except ValueError:
            tokens = None  # config validation should reject it; here the signal is just never present
    return _Plan(
        tokens,
        compile_regex(cfg.success_location) if cfg.success_location else None,
        compile_regex(cfg.failure_location) if cfg.failure_location else None,
    )


def classify(cfg: OutcomeConfig, status: int, headers: Mapping[str, str], body_head: bytes = b"") -> Outcome:
    """The outcome of a login from the upstream's answer; never raises on any response.

    ``headers`` may be a plain mapping, a multidict (aiohttp's ``CIMultiDictProxy``:
    its ``items()`` yields every ``Set-Cookie``) or mitmproxy's ``Headers`` (read
    through ``get_all``).
    """
    plan = _plan(cfg)
    body: bytes | None = None
    if needs_body(cfg):
        body = _decoded_body(headers, body_head[:BODY_PEEK])
    if body is not None and cfg.json_field is not None and plan.json_tokens is not None:
        verdict = _json_verdict(body, plan.json_tokens, cfg.json_field.success)
        if verdict is not None:
            return verdict
    if body is not None and (cfg.failure_body or cfg.success_body):
        charsets = _charsets(headers, body)
        if cfg.failure_body and _contains(body, cfg.failure_body, charsets):
            return Outcome.FAILURE
        if cfg.success_body and _contains(body, cfg.success_body, charsets):
            return Outcome.SUCCESS
    if cfg.success_cookie and _sets_cookie(headers, cfg.success_cookie):
        return Outcome.SUCCESS
    if 300 <= status < 400 and (plan.success_location or plan.failure_location):
        verdict = _location_verdict(plan, _first(headers, "location"))
        if verdict is not None:
            return verdict
    if status in cfg.success_status:
        return Outcome.SUCCESS
    if status in cfg.failure_status:
        return Outcome.FAILURE
    return Outcome.UNKNOWN


# ---- headers ---------------------------------------------------------------------------------

def header_values(headers: Mapping[str, str], name: str) -> list[str]:
    """Every value of header ``name`` (case-insensitive), in order, from any of the header types."""
    get_all = getattr(headers, "get_all", None)
    if callable(get_all):  # mitmproxy Headers: items() would fold repeated headers
        values = get_all(name)
        return [v for v in values if isinstance(v, str)] if isinstance(values, list) else []
    lname = name.lower()
    out: list[str] = []
    for key, value in headers.items():  # a multidict yields every pair, a dict one per key
        if isinstance(key, str) and key.lower() == lname:
            if isinstance(value, str):
                out.append(value)
            elif isinstance(value, (list, tuple)):  # tolerate {"Set-Cookie": [..]} from hand-built facts
                out.extend(v for v in value if isinstance(v, str))
    return out


def _first(headers: Mapping[str, str], name: str) -> str:
    values = header_values(headers, name)
    return values[0].strip() if values else ""


# ---- body ------------------------------------------------------------------------------------

def _decoded_body(headers: Mapping[str, str], raw: bytes) -> bytes | None:
    coding = _first(headers, "content-encoding").lower()
    if coding in ("", "identity"):
        return raw
    if coding in ("gzip", "x-gzip", "deflate"):
        # wbits 47 reads gzip or zlib headers; raw deflate (what some servers send as
        # "deflate") needs -15.  max_length bounds the output, so a bomb inflates to 64 KB.
        for wbits in (47, -15) if coding == "deflate" else (47,):
            try:
                return zlib.decompressobj(wbits).decompress(raw, BODY_PEEK)
            except zlib.error:
                continue
        return raw  # did not inflate: already decoded by the adapter (mitmproxy's .content)
    return None


def _json_verdict(body: bytes, tokens: tuple[str, ...], success: str | int | bool) -> Outcome | None:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return None  # not JSON (or cut at 64 KB): the signal is absent
    value = resolve_pointer(doc, tokens)
    if value is MISSING:
        return None
    return Outcome.SUCCESS if _json_equal(value, success) else Outcome.FAILURE


def _json_equal(value: object, success: str | int | bool) -> bool:
    """Type-aware: ``true`` is not ``1``; a string setting also matches a scalar's JSON text ("1", "true")."""
    if isinstance(success, bool) or isinstance(value, bool):
        if isinstance(success, str):
            return json.dumps(value) == success
        return type(value) is type(success) and value == success
    if isinstance(success, int):
        return isinstance(value, int | float) and value == success
    if isinstance(value, str):
        return value == success
    if isinstance(value, int | float) or value is None:
        return json.dumps(value) == success
    return False


_META_CHARSET = re.compile(rb"<meta[^>]{0,512}?charset\s*=\s*[\"']?\s*([A-Za-z0-9._:+-]{1,40})", re.I)


def _charsets(headers: Mapping[str, str], body: bytes) -> tuple[str, ...]:
    """UTF-8, plus the response's charset from Content-Type or an HTML ``<meta>`` near the top."""
    found = ["utf-8"]
    declared = parse_header_value(_first(headers, "content-type"))[1].get("charset", "")
    if not declared:
        meta = _META_CHARSET.search(body, 0, 1024)
        declared = meta.group(1).decode("ascii") if meta else ""
    if declared:
        canonical = usable_charset(declared)
        if canonical is not None and canonical not in found:
            found.append(canonical)
    return tuple(found)


def _contains(body: bytes, marker: str, charsets: tuple[str, ...]) -> bool:
    for charset in charsets:
        try:
            needle = marker.encode(charset)
        except UnicodeError:
            continue  # the marker cannot appear in a page of that charset
        if needle in body:
            return True
    return False


# ---- cookies ---------------------------------------------------------------------------------

def _sets_cookie(headers: Mapping[str, str], name: str) -> bool:
    date: float | None = None
    for line in header_values(headers, "set-cookie"):
        pair, _, attrs = line.partition(";")
        cname, eq, value = pair.partition("=")
        if not eq or cname.strip() != name or not value.strip().strip('"'):
            continue
        if date is None:
            date = _http_date(_first(headers, "date")) or _EXPIRED_WITHOUT_DATE
        if not _deletes(attrs, date):
            return True
    return False


def _deletes(attrs: str, now: float) -> bool:
    """Whether the cookie's attributes expire it at once (RFC 6265: Max-Age beats Expires)."""
    max_age: int | None = None
    expires: float | None = None
    for attr in attrs.split(";"):
        key, _, value = attr.partition("=")
        key, value = key.strip().lower(), value.strip()
        if key == "max-age" and re.fullmatch(r"-?[0-9]{1,15}", value):
            max_age = int(value)
        elif key == "expires":
            expires = _http_date(value)
    if max_age is not None:
        return max_age <= 0
    return expires is not None and expires <= now


def _http_date(value: str) -> float | None:
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_tz(value)
        return float(email.utils.mktime_tz(parsed)) if parsed is not None else None
    except (ValueError, TypeError, OverflowError, IndexError):
        return None


# ---- Location --------------------------------------------------------------------------------

def _location_verdict(plan: _Plan, location: str) -> Outcome | None:
    """Patterns see both the Location as sent and, for an absolute URL, its path and query.

    So ``^/home`` matches ``/home`` and ``https://shop.example/home`` alike.  A
    redirect without Location is matched as an empty one: it cannot be the success page.
    """
    forms = [location]
    try:
        parts = urlsplit(location)
        if parts.scheme or parts.netloc:
            forms.append(urlunsplit(("", "", parts.path or "/", parts.query, parts.fragment)))
    except ValueError:
        pass
    if plan.failure_location is not None and any(plan.failure_location.search(f) for f in forms):
        return Outcome.FAILURE
    if plan.success_location is not None:
        if any(plan.success_location.search(f) for f in forms):
            return Outcome.SUCCESS
        return Outcome.FAILURE if plan.failure_location is None else Outcome.UNKNOWN
    return None

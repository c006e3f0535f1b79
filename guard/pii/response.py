"""Which responses get rewritten, and how their headers change when they do.

Headers go out before the body is read, so the changes are decided up front,
for every response that *will* stream through the rewriter, whether or not a
value turns out to need replacing:

* ``Content-Length`` goes: the new length is unknown until the end (the proxy
  then uses chunked transfer coding).
* ``Content-Encoding`` is the re-encoded coding, or goes (identity).
* A strong ``ETag`` becomes weak (``W/``): the bytes may differ from the
  upstream's, which a strong validator forbids.  When tokens may be inserted,
  ``ETag`` and ``Last-Modified`` go and ``Cache-Control`` gains ``private``
  (losing ``public`` and ``s-maxage``): a page with one session's tokens must
  not be revalidated into another session's cache or served by a shared cache,
  and a browser must not keep it past the tokens' lifetime through a 304.
* Digests of the old bytes (``Content-MD5``, ``Digest``, ``Content-Digest``,
  ``Repr-Digest``) go, and ``Accept-Ranges: none``: byte ranges of a rewritten
  body are not ranges of the upstream's, so range requests must not be answered
  from it (206 responses are never rewritten).

A whole page that the policy cannot change (``rewriter.untouched``) is known
before its head leaves, and goes out in the upstream's bytes: it keeps the
upstream's validators, caching fields and digests, which all still describe
those bytes (``UNTOUCHED``).  Only ``Accept-Ranges: none`` is set, since range
requests for the path are still dropped (``PIIRuntime.whole_only``).  Without
this, every page of a site lost its ``ETag`` and became ``private``, so nothing
was ever revalidated with a 304 or held by a shared cache.  A page that streams,
or that the rewriter changes, gets the changes above.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from guard.pii.encoding import output_coding, parse_content_encoding

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_NO_BODY_CHANGE = frozenset({204, 205, 206, 304})
_DIGESTS = ("Content-MD5", "Digest", "Content-Digest", "Repr-Digest")


def media_type(content_type: str | None) -> tuple[str, str | None]:
    """``(type/subtype, charset)`` from a Content-Type value; the type lower-cased."""
    if not content_type:
        return "", None
    parts = content_type.split(";")
    charset = None
    for p in parts[1:]:
        key, _, value = p.partition("=")
        if key.strip().lower() == "charset":
            charset = value.strip().strip('"').strip() or None
    return parts[0].strip().lower(), charset


def is_rewritable(
    method: str, status: int, content_type: str | None, content_encoding: Iterable[str]
) -> bool:
    """Whether an HTML rewriter should see this response's body (``html_body`` says how).

    Error pages count (a 400 often re-shows the form with its hidden fields);
    HEAD, 1xx, 204, 205, 206 and 304 have no body to rewrite, and a
    Content-Encoding the guard cannot decode leaves the body alone (report it as
    ``unsupported-encoding``).
    """
    return html_body(method, status, content_type, content_encoding) is not None


def html_body(
    method: str, status: int, content_type: str | None, content_encoding: Iterable[str]
) -> tuple[tuple[str, ...], str | None] | None:
    """``(codings, charset)`` of an HTML body a rewriter should see, or None (``is_rewritable``).

    The parsed parts come back so that the proxy, which asks this of every HTML
    response, parses the Content-Type and Content-Encoding once.
    """
    if method.upper() == "HEAD" or status < 200 or status in _NO_BODY_CHANGE:
        return None
    mtype, charset = media_type(content_type)
    if mtype not in HTML_TYPES:
        return None
    codings = parse_content_encoding(content_encoding)
    return None if codings is None else (codings, charset)


@dataclass(frozen=True, slots=True)
class HeaderChanges:
    """Fields to remove (all copies), then fields to set (replacing any copies)."""

    remove: tuple[str, ...]
    set: tuple[tuple[str, str], ...]

    def apply(self, headers: MutableHeaders) -> None:
        for name in self.remove:
            headers.popall(name, None)
        for name, value in self.set:
            headers[name] = value


UNTOUCHED = HeaderChanges((), (("Accept-Ranges", "none"),))
"""The header changes for a whole HTML page passed on unread (see the module docstring)."""


class MutableHeaders(Protocol):
    """The part of ``multidict.CIMultiDict`` that ``HeaderChanges.apply`` uses."""

    def popall(self, key: str, default: None, /) -> list[str] | None: ...

    def __setitem__(self, key: str, value: str, /) -> None: ...


def header_changes(
    etag: str | None, cache_control: str | None, codings: tuple[str, ...], *, reencode: bool, tokenizes: bool
) -> HeaderChanges:
    """The changes for a response that streams through the rewriter.

    ``codings`` from ``parse_content_encoding``; ``tokenizes`` from
    ``Policy.tokenizes``.
    """
    remove = ["Content-Length", *_DIGESTS]
    set_: list[tuple[str, str]] = [("Accept-Ranges", "none")]
    coding = output_coding(codings, reencode)
    if coding is None:
        remove.append("Content-Encoding")
    else:
        set_.append(("Content-Encoding", coding))
    if tokenizes:
        remove += ["ETag", "Last-Modified"]
        set_.append(("Cache-Control", _private(cache_control)))
    elif etag is not None:
        etag = etag.strip()
        set_.append(("ETag", etag if etag.startswith("W/") else "W/" + etag))
    return HeaderChanges(tuple(remove), tuple(set_))


def _private(cache_control: str | None) -> str:
    directives = []
    for d in (cache_control or "").split(","):
        d = d.strip()
        name = d.split("=", 1)[0].strip().lower()
        if d and name not in ("public", "s-maxage", "private"):
            directives.append(d)
    return ", ".join(["private", *directives])

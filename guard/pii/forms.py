"""Swap tokens back for the original values in a submitted form, before the upstream sees it.

Pure: body bytes, Content-Type and a ``resolve(token) -> value | None`` callback
in, new body bytes and counts out.  Only field values that are *exactly* a
token (``guard.pii.token.TOKEN_RE``) are looked up, so the vault is never asked
about arbitrary user input; everything else is copied byte for byte, and the
multipart boundary does not change (only ``Content-Length`` does).

A vault that binds tokens to the field they were issued for passes
``resolve_field(token, field_name)`` instead of ``resolve``: then a token moved
into another field is rejected like a forged one.

A token the resolver rejects (another session's, expired, forged) becomes an
empty value and is reported as tampering, with the field's name only.  An
empty value rather than the token: the upstream then sees a blank field, the
same as a user who cleared it, and the token, which is meaningless to it, never
reaches it.  A resolver that raises counts as a rejection (fail closed).

Charsets: a urlencoded body is percent-decoded as bytes and only token-shaped
values are touched; the original value is encoded in the form's charset (the
Content-Type ``charset``, else the caller's, which should be the page's),
characters it cannot represent as ``&#NNNN;``, as browsers submit them.

Bounded work: at most ``MAX_FIELDS`` fields or ``MAX_PARTS`` parts are read and
part headers are capped; a body beyond that is passed on unchanged with an
error code, and the caller decides (it should already cap body size).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote_from_bytes, unquote_to_bytes

from guard.pii import charset as charsets
from guard.pii.response import media_type
from guard.pii.token import TOKEN_RE

Resolver = Callable[[str], "str | None"]
FieldResolver = Callable[[str, str], "str | None"]
"""``resolve_field(token, field_name)``: the field name as submitted (decoded in the form's charset)."""

MAX_FIELDS = 1000
MAX_PARTS = 256
MAX_PART_HEADER = 8192
MAX_NAME_REPORTED = 64
"""Characters of a field name kept in a tamper report (names are client-controlled)."""

_TOKEN_BYTES = re.compile(TOKEN_RE.pattern.encode("ascii"))
_BOUNDARY = re.compile(r"""boundary=(?:"([^"]{1,70})"|([^\s;,"]{1,70}))""", re.IGNORECASE)
_DISPOSITION_NAME = re.compile(rb"""[;\s]name=(?:"([^"]*)"|([^\s;"]+))""", re.IGNORECASE)
_PART_CHARSET = re.compile(rb"""charset=["']?([A-Za-z0-9_.:-]{1,40})""", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class SwapResult:
    """The body to forward and what happened; ``error`` set means the body was left unchanged."""

    body: bytes
    swapped: int = 0
    tampered: tuple[str, ...] = field(default=())
    dropped: int = 0
    """Values emptied because the original would have broken the body (a multipart boundary in it)."""
    error: str | None = None

    @property
    def changed(self) -> bool:
        return self.swapped > 0 or bool(self.tampered) or self.dropped > 0


def swap_back(
    body: bytes, content_type: str | None, resolve: Resolver | None = None, charset: str = "utf-8",
    *, resolve_field: FieldResolver | None = None,
) -> SwapResult:
    """Replace token values in a urlencoded, multipart or JSON request body (give one of the resolvers)."""
    lookup = _lookup(resolve, resolve_field)
    mtype, declared = media_type(content_type)
    if b"pii" not in body and b"%" not in body:   # no token can be in there: the common case, at no cost
        return SwapResult(body)
    codec = _codec(declared) or _codec(charset) or "utf-8"
    if mtype == "application/x-www-form-urlencoded":
        return _urlencoded(body, lookup, codec)
    if mtype == "multipart/form-data":
        m = _BOUNDARY.search(content_type or "")
        if m is None:
            return SwapResult(body, error="bad-multipart")
        return _multipart(body, (m.group(1) or m.group(2)).encode("latin-1"), lookup, codec)
    if mtype == "application/json" or mtype.endswith("+json"):
        return _json(body, lookup)
    return SwapResult(body)


def swap_back_query(
    query: bytes, resolve: Resolver | None = None, charset: str = "utf-8",
    *, resolve_field: FieldResolver | None = None,
) -> SwapResult:
    """The same for a query string (``method="get"`` forms submit their hidden fields there)."""
    lookup = _lookup(resolve, resolve_field)
    if b"pii" not in query and b"%" not in query:
        return SwapResult(query)
    return _urlencoded(query, lookup, _codec(charset) or "utf-8")


def _lookup(resolve: Resolver | None, resolve_field: FieldResolver | None) -> FieldResolver:
    if resolve_field is not None:
        return resolve_field
    if resolve is None:
        raise TypeError("swap_back needs resolve or resolve_field")
    plain = resolve
    return lambda token, name: plain(token)


def find_tokens(body: bytes, content_type: str | None, charset: str = "utf-8") -> frozenset[str]:
    """The token-shaped values ``swap_back`` would look up, so an async vault can fetch them first.

    ``swap_back`` calls ``resolve`` synchronously; a store-backed vault resolves these
    in one round trip and then passes ``dict.get`` as the resolver.
    """
    seen: set[str] = set()

    def record(token: str) -> None:
        seen.add(token)

    swap_back(body, content_type, record, charset)
    return frozenset(seen)


def find_tokens_query(query: bytes, charset: str = "utf-8") -> frozenset[str]:
    """``find_tokens`` for a query string."""
    seen: set[str] = set()

    def record(token: str) -> None:
        seen.add(token)

    swap_back_query(query, record, charset)
    return frozenset(seen)


def _codec(label: str | None) -> str | None:
    codec = charsets.resolve(label)
    return None if codec == charsets.UNSAFE else codec


class _Swapper:
    def __init__(self, resolve: FieldResolver) -> None:
        self.resolve = resolve
        self.swapped = 0
        self.dropped = 0
        self.tampered: list[str] = []

    def value(self, token: str, name: str) -> str:
        try:
            original = self.resolve(token, name)
        except Exception:
            original = None
        if not isinstance(original, str):
            self.tampered.append(name[:MAX_NAME_REPORTED])
            return ""
        self.swapped += 1
        return original

    def result(self, body: bytes) -> SwapResult:
        return SwapResult(body, self.swapped, tuple(self.tampered), self.dropped)


def _urlencoded(body: bytes, resolve: FieldResolver, codec: str) -> SwapResult:
    pieces = body.split(b"&")
    if len(pieces) > MAX_FIELDS:
        return SwapResult(body, error="too-many-fields")
    swapper = _Swapper(resolve)
    changed = False
    for i, piece in enumerate(pieces):
        name_raw, eq, value_raw = piece.partition(b"=")
        if not eq or not (b"pii" in value_raw or b"%" in value_raw):
            continue
        value = unquote_to_bytes(value_raw.replace(b"+", b" "))
        if _TOKEN_BYTES.fullmatch(value) is None:
            continue
        name = unquote_to_bytes(name_raw.replace(b"+", b" ")).decode(codec, "replace")
        original = swapper.value(value.decode("ascii"), name)
        encoded = quote_from_bytes(original.encode(codec, "xmlcharrefreplace"), safe="*-._ ")
        pieces[i] = name_raw + b"=" + encoded.replace(" ", "+").encode("ascii")
        changed = True
    return swapper.result(b"&".join(pieces) if changed else body)


def _multipart(body: bytes, boundary: bytes, resolve: FieldResolver, codec: str) -> SwapResult:
    delimiter = b"--" + boundary
    first = body.find(delimiter)
    if first < 0:
        return SwapResult(body, error="bad-multipart")
    swapper = _Swapper(resolve)
    out = [body[:first]]
    pos = first
    for _ in range(MAX_PARTS + 1):
        # pos is at a delimiter line: "--boundary" then CRLF (a part follows) or "--" (the end)
        after = pos + len(delimiter)
        if body[after : after + 2] == b"--":
            out.append(body[pos:])
            changed = swapper.swapped or swapper.tampered or swapper.dropped
            return swapper.result(b"".join(out) if changed else body)
        head_end, sep_len = _header_end(body, after)
        if head_end < 0:
            return SwapResult(body, error="bad-multipart")
        content_start = head_end + sep_len
        nxt = _next_delimiter(body, content_start, delimiter)
        if nxt is None:
            return SwapResult(body, error="bad-multipart")
        content_end, next_pos = nxt
        headers = body[after:head_end]
        out.append(body[pos:content_start])
        out.append(_part_value(body[content_start:content_end], headers, swapper, codec, delimiter))
        out.append(body[content_end:next_pos])
        pos = next_pos
    return SwapResult(body, error="too-many-parts")


def _header_end(body: bytes, start: int) -> tuple[int, int]:
    """Where a part's headers end, and the blank line's length (CRLF CRLF, or LF LF from lax clients)."""
    window = body[start : start + MAX_PART_HEADER]
    crlf, lf = window.find(b"\r\n\r\n"), window.find(b"\n\n")
    if crlf < 0 and lf < 0:
        return -1, 0
    if crlf >= 0 and (lf < 0 or crlf <= lf):
        return start + crlf, 4
    return start + lf, 2


def _next_delimiter(body: bytes, start: int, delimiter: bytes) -> tuple[int, int] | None:
    """``(end of this part's content, start of the next delimiter)``."""
    i = body.find(b"\r\n" + delimiter, start)
    if i >= 0:
        return i, i + 2
    i = body.find(b"\n" + delimiter, start)
    return (i, i + 1) if i >= 0 else None


def _part_value(content: bytes, headers: bytes, swapper: _Swapper, codec: str, delimiter: bytes) -> bytes:
    if len(content) > 64 or _TOKEN_BYTES.fullmatch(content) is None:
        return content
    lower = headers.lower()
    if b"filename" in lower:         # an uploaded file that happens to look like a token: not ours
        return content
    m = _DISPOSITION_NAME.search(headers)
    name_raw = (m.group(1) or m.group(2) or b"") if m else b""
    cs = _PART_CHARSET.search(headers)
    part_codec = (_codec(cs.group(1).decode("ascii")) if cs else None) or codec
    original = swapper.value(content.decode("ascii"), name_raw.decode(part_codec, "replace"))
    encoded = original.encode(part_codec, "xmlcharrefreplace")
    if delimiter in encoded:         # would end the part early: never forward a body that parses differently
        swapper.swapped -= 1
        swapper.dropped += 1
        return b""
    return encoded


def _json(body: bytes, resolve: FieldResolver) -> SwapResult:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return SwapResult(body, error="bad-json")
    swapper = _Swapper(resolve)
    count = [0]

    def walk(node: object, name: str) -> object:
        count[0] += 1
        if count[0] > MAX_FIELDS * 10:
            raise OverflowError
        if isinstance(node, str):
            return swapper.value(node, name) if TOKEN_RE.fullmatch(node) else node
        if isinstance(node, list):
            return [walk(v, name) for v in node]
        if isinstance(node, dict):
            return {k: walk(v, k) for k, v in node.items()}
        return node

    try:
        new = walk(doc, "")
    except (OverflowError, RecursionError):
        return SwapResult(body, error="too-many-fields")
    if not (swapper.swapped or swapper.tampered):
        return SwapResult(body)
    return swapper.result(json.dumps(new, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))

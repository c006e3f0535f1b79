"""Read the username and password out of a login request body, in whatever encoding the form used.

Pure: bytes and a Content-Type value in, a ``LoginFields`` value out.  The aiohttp
proxy and the mitmproxy addon both call ``extract`` after buffering the body (the
caller caps its size), so the two adapters can never disagree about who is logging in.

Bad input never raises: a body the guard cannot read comes back as an ``error``
code, because "a login whose username we could not read" is itself a fact rules
act on (an attacker who can make the guard blind must not get a free pass).  The
codes are short constants and never echo the input, so they are safe in logs.

**Duplicate fields.** Backends disagree about ``user=a&user=b``: PHP and Django
(``request.POST[...]``) take the last value, Java servlets' ``getParameter``, Go's
``FormValue`` and Flask take the first.  No single choice matches every backend, so
none is configurable; the guard returns the FIRST value and, when a later value
differs, flags ``duplicate-field``.  Rules can treat that ambiguity (HTTP parameter
pollution, one username for the guard and another for the backend) as suspicious.
Equal repeats are harmless and not flagged.

**Charsets.** The body's bytes are split and percent-decoded as bytes first, and
only the chosen fields are decoded as text, so a Shift_JIS or EUC-JP form whose
multi-byte characters arrive as ``%83%86...`` decodes to the same name the backend
sees.  (``parse_qsl`` on a latin-1 string gets escaped bytes right but turns raw
unescaped non-ASCII bytes, which old clients do send, into latin-1 mojibake; working
on bytes has no such seam.)  The charset is the Content-Type ``charset=`` parameter,
else the endpoint's ``charset``, else UTF-8.  A declared charset the guard will not
use (unknown, a codec that is not ASCII-compatible such as UTF-16, or one that
rewrites text such as ``unicode_escape``) falls back to the next choice and flags
``bad-charset``: browsers never send those, and the fallback is what a legacy
backend would do.  Shift_JIS is decoded as its superset Windows-31J (cp932), as
browsers do, so names with 髙 or 﨑 do not collapse into U+FFFD.

**Multipart** is parsed by a small hand parser rather than the stdlib ``email``
package (``cgi`` is deprecated and gone in 3.13).  ``email`` parses MIME mail, not
HTTP forms: it builds an object for every part including uploaded files, has no
limit on part count or header size, tolerates and silently repairs malformed input
in mail-specific ways, applies Content-Transfer-Encoding that no browser sends,
and its header parser has had several super-linear-time bugs fixed over the years.
The hand parser reads only what a login needs (names, per-part charset, values
as slices), skips file parts without copying them, and caps the work.  It accepts
bare LF as well as CRLF line ends: being stricter than a lenient backend would let
an attacker hide the username from the guard but not from the backend.
"""

from __future__ import annotations

import codecs
import functools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import unquote_to_bytes

from guard.config import LoginEndpoint


class FieldError(StrEnum):
    """Why a body did not yield a clean username.  A ``str``, so it logs and compares as its code."""

    UNSUPPORTED = "unsupported-content-type"
    BAD_JSON = "bad-json"
    BAD_MULTIPART = "bad-multipart"      # no boundary, no delimiter, truncated, or a part header too big
    TOO_MANY_PARTS = "too-many-parts"
    BAD_POINTER = "bad-pointer"          # the endpoint's JSON pointer is malformed (a config bug)
    NO_USERNAME = "no-username"
    BAD_USERNAME = "bad-username"        # JSON username is an object, array or boolean
    DUPLICATE = "duplicate-field"
    BAD_ENCODING = "bad-encoding"        # bytes invalid in the charset; replaced with U+FFFD
    BAD_CHARSET = "bad-charset"          # declared charset unusable; fell back


# One code per result: the most useful one for a rule wins.  Structural failures first
# (they explain a missing username), then the missing username, then ambiguities.
_PRECEDENCE = (
    FieldError.TOO_MANY_PARTS, FieldError.BAD_MULTIPART, FieldError.NO_USERNAME, FieldError.BAD_USERNAME,
    FieldError.DUPLICATE, FieldError.BAD_ENCODING, FieldError.BAD_CHARSET,
)

MAX_PARTS = 256
"""Multipart parts read before giving up: a login form has a handful."""
MAX_PART_HEADER = 8192
"""Bytes of headers one multipart part may carry."""


@dataclass(frozen=True, slots=True)
class LoginFields:
    """What the login body said.  ``password`` is hidden from ``repr`` so it cannot reach a log line."""

    username: str | None
    password: str | None = field(default=None, repr=False)
    error: str | None = None


_FORM = "application/x-www-form-urlencoded"
_MULTIPART = "multipart/form-data"
_USER, _PASS = "u", "p"


def extract(endpoint: LoginEndpoint, content_type: str, body: bytes) -> LoginFields:
    """The username and password of ``endpoint`` in ``body``; never raises on any input."""
    media, params = parse_header_value(content_type)
    if not media:
        # No (usable) Content-Type: sniff conservatively, as most backends fall back to form parsing.
        first = _FIRST_BYTE.match(body)
        media = "application/json" if first is not None and first.group(1) == b"{" else _FORM
    flags: set[FieldError] = set()
    declared = params.get("charset", "")
    if media == _FORM or media == _MULTIPART:
        charset = _pick_charset(declared, endpoint.charset, flags)
        if media == _FORM:
            found = _from_form(endpoint, charset, body, flags)
        else:
            found = _from_multipart(endpoint, charset, params.get("boundary", ""), body, flags)
    elif media.endswith(("/json", "+json")):
        # JSON is UTF-8 (RFC 8259) unless the request or the operator says otherwise; without
        # either, json.loads detects UTF-8/16/32 from the bytes itself.
        json_charset = None
        if declared or endpoint.charset:
            json_charset = _pick_charset(declared, endpoint.charset, flags)
        result = _from_json(endpoint, json_charset, body, flags)
        if isinstance(result, FieldError):
            return LoginFields(None, None, result)
        found = result
    else:
        return LoginFields(None, None, FieldError.UNSUPPORTED)
    username, password = found.get(_USER), found.get(_PASS)
    if username is None and FieldError.BAD_USERNAME not in flags:
        flags.add(FieldError.NO_USERNAME)
    error = next((code for code in _PRECEDENCE if code in flags), None)
    return LoginFields(username, password, error)


# ---- header values ---------------------------------------------------------------------------

def parse_header_value(value: str, escapes: bool = True) -> tuple[str, dict[str, str]]:
    """``type/sub; a=1; b="x;y"`` -> (``type/sub``, {a: 1, b: x;y}); lower-cased names, first wins.

    Shared by Content-Type and Content-Disposition.  Quoted strings honour backslash
    escapes (RFC 9110) unless ``escapes`` is false; a missing closing quote ends the
    value at the end of input.
    """
    head, _, rest = value.partition(";")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " \t;":
            i += 1
        j = i
        while j < n and rest[j] not in "=;":
            j += 1
        name = rest[i:j].strip().lower()
        if j >= n or rest[j] == ";":
            i = j
            continue
        j += 1
        while j < n and rest[j] in " \t":
            j += 1
        if j < n and rest[j] == '"':
            j += 1
            out: list[str] = []
            while j < n and rest[j] != '"':
                if escapes and rest[j] == "\\" and j + 1 < n:
                    j += 1
                out.append(rest[j])
                j += 1
            text = "".join(out)
            end = rest.find(";", j)
            j = n if end < 0 else end
        else:
            end = rest.find(";", j)
            end = n if end < 0 else end
            text = rest[j:end].strip()
            j = end
        if name and name not in params:
            params[name] = text
        i = j
    return head.strip().lower(), params


# ---- charsets --------------------------------------------------------------------------------

_CHARSET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,39}")
# Text codecs that do not just map bytes to characters: they would turn \u0061 or xn--
# into letters the backend never sees.
_REWRITING = frozenset({"unicode-escape", "raw-unicode-escape", "idna", "punycode", "undefined"})
# Bytes that delimit form bodies and multipart headers must mean themselves.
_PROBE = "az09=&+%;:-_.~\"\r\n "
# WHATWG labels Python lacks, and the WHATWG rule that "Shift_JIS" means Windows-31J (cp932):
# browsers send its extensions (髙, 﨑, ①), which Python's strict shift_jis would turn into U+FFFD,
# folding different people's names into one.
_LABELS = {"windows-31j": "cp932", "x-sjis": "cp932", "x-euc-jp": "euc_jp"}
_SUPERSET = {"shift_jis": "cp932"}


@functools.lru_cache(maxsize=64)
def usable_charset(name: str) -> str | None:
    """The canonical codec name for a request-declared charset, or None if the guard won't use it.

    Cached (bounded: the name comes from the client) because the same handful recur.
    """
    if not _CHARSET_NAME.fullmatch(name):
        return None
    try:
        canonical = codecs.lookup(_LABELS.get(name.lower(), name)).name
        canonical = _SUPERSET.get(canonical, canonical)
        if canonical in _REWRITING or _PROBE.encode(canonical) != _PROBE.encode("ascii"):
            return None
        b"".decode(canonical)  # LookupError for bytes-to-bytes codecs such as zlib
    except (LookupError, ValueError, TypeError):
        return None
    return canonical


def _pick_charset(declared: str, default: str | None, flags: set[FieldError]) -> str:
    if declared:
        chosen = usable_charset(declared)
        if chosen is not None:
            return chosen
        flags.add(FieldError.BAD_CHARSET)
    if default:
        chosen = usable_charset(default)
        if chosen is not None:
            return chosen
    return "utf-8"


def _decode(raw: bytes, charset: str, flags: set[FieldError]) -> str:
    try:
        return raw.decode(charset)
    except (UnicodeError, ValueError):
        flags.add(FieldError.BAD_ENCODING)
        return raw.decode(charset, "replace")


# ---- picking fields --------------------------------------------------------------------------

def _roles(endpoint: LoginEndpoint) -> dict[str, tuple[str, ...]]:
    roles: dict[str, tuple[str, ...]] = {endpoint.username: (_USER,)}
    if endpoint.password:
        roles[endpoint.password] = (*roles.get(endpoint.password, ()), _PASS)
    return roles


def _offer(found: dict[str, str], role: str, value: str, flags: set[FieldError]) -> None:
    """First value wins; a later, different value makes the field ambiguous (see module doc)."""
    first = found.get(role)
    if first is None:
        found[role] = value
    elif first != value:
        flags.add(FieldError.DUPLICATE)


# ---- application/x-www-form-urlencoded ------------------------------------------------------

_PAIR = re.compile(rb"[^&]+")


def _unquote(raw: bytes) -> bytes:
    return unquote_to_bytes(raw.replace(b"+", b" ")) if raw else raw


def _from_form(endpoint: LoginEndpoint, charset: str, body: bytes, flags: set[FieldError]) -> dict[str, str]:
    """Split on ``&`` (not ``;``: neither PHP nor servlets split there), unescape as bytes, decode names."""
    roles = _roles(endpoint)
    found: dict[str, str] = {}
    for match in _PAIR.finditer(body):  # one pair at a time: no list of a million fragments
        raw_name, _, raw_value = match.group().partition(b"=")
        name = _unquote(raw_name).decode(charset, "replace")
        for role in roles.get(name, ()):
            _offer(found, role, _decode(_unquote(raw_value), charset, flags), flags)
    return found


# ---- multipart/form-data ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Part:
    name: bytes            # raw bytes of the name= parameter, decoded later with the right charset
    charset: str | None    # the part's own Content-Type charset, if any
    start: int
    end: int


def _from_multipart(
    endpoint: LoginEndpoint, charset: str, boundary: str, body: bytes, flags: set[FieldError]
) -> dict[str, str]:
    if not 0 < len(boundary) <= 200:
        flags.add(FieldError.BAD_MULTIPART)
        return {}
    parts = list(_parts(body, boundary.encode("latin-1", "replace"), flags))
    # The WHATWG `_charset_` convention: a hidden field the browser fills with the form's
    # encoding.  It may come after the username, hence the second pass.
    default = charset
    for part in parts:
        if part.name == b"_charset_":
            stated = usable_charset(body[part.start : part.end].decode("latin-1").strip())
            if stated is not None:
                default = stated
            break
    roles = _roles(endpoint)
    found: dict[str, str] = {}
    for part in parts:
        cs = default
        if part.charset:
            cs = usable_charset(part.charset) or default
        for role in roles.get(part.name.decode(cs, "replace"), ()):
            _offer(found, role, _decode(body[part.start : part.end], cs, flags), flags)
    return found


def _delimiter_at(body: bytes, delim: bytes, at: int) -> int:
    """If a real delimiter line starts at ``at``, the index just after it; else -1.

    ``--boundary`` only delimits when followed by ``--`` (the close) or optional
    transport padding and a line end; ``--boundaryXYZ`` in content is content.
    """
    end = at + len(delim)
    if body.startswith(b"--", end):
        return end
    i = end
    while i < len(body) and body[i] in b" \t":
        i += 1
    if body.startswith(b"\r\n", i) or body.startswith(b"\n", i):
        return end
    return -1


def _next_delimiter(body: bytes, delim: bytes, start: int) -> tuple[int, int]:
    """(index of the newline before the next delimiter, index after it), or (-1, -1).

    Each search resumes after the previous hit, so the whole body is scanned once.
    """
    needle = b"\n" + delim
    pos = start
    while True:
        hit = body.find(needle, pos)
        if hit < 0:
            return -1, -1
        after = _delimiter_at(body, delim, hit + 1)
        if after >= 0:
            return hit, after
        pos = hit + 1


def _parts(body: bytes, boundary: bytes, flags: set[FieldError]) -> Iterator[_Part]:
    delim = b"--" + boundary
    if body.startswith(delim) and _delimiter_at(body, delim, 0) >= 0:
        pos = len(delim)
    else:
        _, pos = _next_delimiter(body, delim, 0)   # skip the preamble
        if pos < 0:
            flags.add(FieldError.BAD_MULTIPART)
            return
    count = 0
    while True:
        if body.startswith(b"--", pos):
            return  # the close delimiter: the epilogue is ignored
        eol = body.find(b"\n", pos)
        if eol < 0:
            flags.add(FieldError.BAD_MULTIPART)
            return
        count += 1
        if count > MAX_PARTS:
            flags.add(FieldError.TOO_MANY_PARTS)
            return
        # Headers run from after the delimiter line to the first empty line.
        window = body[eol : eol + MAX_PART_HEADER + 3]
        ends = [(i, size) for i, size in ((window.find(b"\n\r\n"), 3), (window.find(b"\n\n"), 2)) if i >= 0]
        if not ends:
            flags.add(FieldError.BAD_MULTIPART)
            return
        hend, size = min(ends)
        content_start = eol + hend + size
        nl, after = _next_delimiter(body, delim, content_start - 1)
        if nl < 0:
            flags.add(FieldError.BAD_MULTIPART)  # truncated: the unterminated part is dropped
            return
        content_end = nl - 1 if nl > 0 and body[nl - 1 : nl] == b"\r" else nl
        part = _part(window[1:hend], content_start, max(content_end, content_start))
        if part is not None:
            yield part
        pos = after


def _part(header_block: bytes, start: int, end: int) -> _Part | None:
    """A named, non-file part; None for files and parts without a name."""
    # latin-1 maps every byte to one character, so raw UTF-8 or Shift_JIS names survive
    # the trip through str and are re-encoded to their bytes below.
    text = re.sub(r"\r?\n[ \t]+", " ", header_block.decode("latin-1"))
    disposition = content_type = None
    for line in text.split("\n"):
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key == "content-disposition" and disposition is None:
            disposition = value.strip()
        elif key == "content-type" and content_type is None:
            content_type = value.strip()
    if disposition is None:
        return None
    # No backslash escapes here: browsers never send them (they write `"` as %22, per
    # WHATWG), while a Shift_JIS name such as 表 (0x95 0x5C) ends in a backslash byte.
    _, params = parse_header_value(disposition, escapes=False)
    if "name" not in params or "filename" in params or "filename*" in params:
        return None
    charset = parse_header_value(content_type)[1].get("charset") if content_type else None
    return _Part(params["name"].encode("latin-1"), charset, start, end)


# ---- application/json ------------------------------------------------------------------------

class _Obj(dict[str, object]):
    """A JSON object that remembers which keys were repeated with different values."""

    __slots__ = ("ambiguous",)

    def __init__(self) -> None:
        super().__init__()
        self.ambiguous: frozenset[str] = frozenset()


def _first_wins(pairs: list[tuple[str, object]]) -> _Obj:
    # json.loads keeps the LAST duplicate key; the guard's rule is first-wins-and-flag.
    obj = _Obj()
    repeated: set[str] = set()
    for key, value in pairs:
        if key not in obj:
            obj[key] = value
        elif obj[key] != value:
            repeated.add(key)
    if repeated:
        obj.ambiguous = frozenset(repeated)
    return obj


def _no_constants(name: str) -> object:
    raise ValueError("NaN and Infinity are not JSON")


MISSING = object()
"""What ``resolve_pointer`` returns when the pointer leads nowhere."""

_INDEX = re.compile(r"0|[1-9][0-9]{0,17}")


@functools.lru_cache(maxsize=256)
def parse_pointer(pointer: str) -> tuple[str, ...]:
    """RFC 6901: ``/a~1b/0`` -> (``a/b``, ``0``); raises ValueError for a malformed pointer.

    Cached: pointers come from the config, so there are few.
    """
    if pointer == "":
        return ()
    if not pointer.startswith("/"):
        raise ValueError("a JSON pointer starts with '/'")
    tokens = pointer[1:].split("/")
    for token in tokens:
        if re.search(r"~(?![01])", token):
            raise ValueError("'~' in a JSON pointer must be followed by 0 or 1")
    # ~1 first, then ~0, so that ~01 means the two characters "~1" (RFC 6901 section 4).
    return tuple(t.replace("~1", "/").replace("~0", "~") for t in tokens)


def _walk(doc: object, tokens: tuple[str, ...]) -> tuple[object, bool]:
    """(value or MISSING, whether any object on the way repeated the key taken)."""
    node, ambiguous = doc, False
    for token in tokens:
        if isinstance(node, dict):
            if isinstance(node, _Obj) and token in node.ambiguous:
                ambiguous = True
            if token not in node:
                return MISSING, ambiguous
            node = node[token]
        elif isinstance(node, list) and _INDEX.fullmatch(token) and int(token) < len(node):
            node = node[int(token)]
        else:
            return MISSING, ambiguous
    return node, ambiguous


def resolve_pointer(doc: object, tokens: tuple[str, ...]) -> object:
    """The value at ``tokens`` (from ``parse_pointer``) in a parsed JSON document, or MISSING."""
    return _walk(doc, tokens)[0]


def _from_json(
    endpoint: LoginEndpoint, charset: str | None, body: bytes, flags: set[FieldError]
) -> dict[str, str] | FieldError:
    try:
        locate = {
            _USER: _json_path(endpoint.username),
            _PASS: _json_path(endpoint.password) if endpoint.password else None,
        }
    except ValueError:
        return FieldError.BAD_POINTER
    try:
        text: str | bytes = body if charset is None else _decode(body, charset, flags).lstrip("\ufeff")
        # Numbers are kept as their source text, so {"user": 1234} and {"user": "1234"} agree.
        doc = json.loads(
            text, object_pairs_hook=_first_wins, parse_int=str, parse_float=str, parse_constant=_no_constants
        )
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return FieldError.BAD_JSON
    found: dict[str, str] = {}
    for role, tokens in locate.items():
        if tokens is None:
            continue
        value, ambiguous = _walk(doc, tokens)
        if ambiguous:
            flags.add(FieldError.DUPLICATE)
        if isinstance(value, str):
            found[role] = value
        elif role == _USER and value is not MISSING and value is not None:
            flags.add(FieldError.BAD_USERNAME)
    return found


def _json_path(name: str) -> tuple[str, ...]:
    """A pointer when the field starts with '/', else a top-level key."""
    return parse_pointer(name) if name.startswith("/") else (name,)


_FIRST_BYTE = re.compile(rb"[ \t\r\n]*(.)", re.DOTALL)

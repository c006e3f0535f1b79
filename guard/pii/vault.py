"""The token vault: what each token stands for, sealed in the store, usable only by the browser it went to.

A token is 128 random bits (``format_token(secrets.token_bytes(16))``): nothing
about the value can be learned from it, and it cannot be guessed.  The store
holds, under ``pii:<token>`` and for ``token_ttl``, the value AES-GCM sealed
under a key derived (HKDF) from the guard's secret, so whoever reads Redis (or
a dump of it) learns no PII.  Every instance that shares the store derives the
same key from the same shared secret, so a form rendered by one guard instance
is swapped back by another.

**Bound to a browser.**  The guard gives each browser a random 128-bit cookie
(``__Host-lgpii`` over TLS, else ``lgpii``; HttpOnly, SameSite=Lax) on the HTML
responses that may carry tokens, and seals each value with that cookie in the
AES-GCM associated data.  The cookie itself is stored nowhere: a token submitted
with another browser's cookie simply does not open (``FOREIGN``), and neither
does a record moved to another key.  SameSite=Lax rather than Strict: a browser
arriving from a link on another site must still send its cookie, or the guard
would issue a new one and orphan the tokens of the forms open in its other tabs.

**Bound to a field.**  A token issued for ``<input name=phone>`` only swaps back
as the field ``phone`` (``MOVED`` otherwise): a page script or a user moving a
token into a field the upstream echoes back (a message, a display name) cannot
make the upstream reveal it.  Values outside form fields (``data-*`` attributes,
JSON responses) reach the upstream through the page's own scripts, under names
the guard cannot know, so those tokens are bound to the browser only.

**Synchronous issue, batched writes.**  The HTML rewriter calls the tokenizer
synchronously, in the middle of a chunk; ``PageTokens`` draws the token at once
and queues the sealed ``Put``.  The proxy flushes the queue (one store batch)
before it sends the bytes that contain those tokens, so a browser never holds a
token the store does not know yet.  On submit, ``fetch`` reads every token of a
form in one batch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from guard.pii.element import Where
from guard.pii.token import TOKEN_PREFIX, format_token, is_token
from guard.store.base import Get, Put, Store

if TYPE_CHECKING:
    from guard.engine.clock import Clock

KEY_PREFIX = "pii:"
COOKIE = "lgpii"
SECURE_COOKIE = "__Host-lgpii"
_BROWSER_ID = re.compile(r"[A-Za-z0-9_-]{22}")
_AAD = b"loginguard pii v1\0"
_NONCE = 12


class TooManyTokens(Exception):
    """A page asked for more tokens than ``max_tokens_per_page``: the rewriter empties the value instead."""


def cookie_name(secure: bool) -> str:
    """``__Host-`` over TLS: the browser then refuses it without Secure, with a Domain, or off Path=/."""
    return SECURE_COOKIE if secure else COOKIE


def new_browser_id() -> str:
    """128 random bits, URL-safe: the value of the vault cookie."""
    return secrets.token_urlsafe(16)


def valid_browser_id(value: str | None) -> bool:
    return value is not None and _BROWSER_ID.fullmatch(value) is not None


def set_cookie(browser: str, secure: bool) -> str:
    """The ``Set-Cookie`` value: a session cookie (no Max-Age), so it outlives every token it binds."""
    cookie = f"{cookie_name(secure)}={browser}; Path=/; HttpOnly; SameSite=Lax"
    return cookie + "; Secure" if secure else cookie


class Verdict(StrEnum):
    """Why a submitted token did not swap back."""

    UNKNOWN = "unknown"    # not in the store: expired, never issued (forged), or written while it was down
    FOREIGN = "foreign"    # issued to another browser (its vault cookie): tampering
    MOVED = "moved"        # issued for another field: tampering


@dataclass(frozen=True, slots=True)
class Record:
    """An opened token.  ``field`` None: not bound to a field; ``codec``: the page's charset."""

    kind: str
    field: str | None
    codec: str | None
    value: str = dataclasses.field(repr=False)   # never in a repr, so never in a traceback or a log line


def _key(secret: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"loginguard/pii-vault").derive(secret)


class Vault:
    """Seals and opens token records; one per guard process (the key depends on the secret only)."""

    __slots__ = ("_aead", "clock", "store")

    def __init__(self, secret: bytes, store: Store, clock: Clock) -> None:
        if not secret:
            raise ValueError("the vault needs the guard's secret")
        self._aead = AESGCM(_key(secret))
        self.store = store
        self.clock = clock

    def page(self, browser: str | None, ttl: float, limit: int, *, secure: bool = False) -> PageTokens:
        """A tokenizer for one response to ``browser`` (None: a browser without a vault cookie yet)."""
        return PageTokens(self, browser, ttl, limit, secure)

    def seal(self, token: str, browser: str, record: Record) -> bytes:
        plain = json.dumps(
            {"k": record.kind, "f": record.field, "c": record.codec, "v": record.value},
            ensure_ascii=False, separators=(",", ":"),
        ).encode("utf-8")
        nonce = os.urandom(_NONCE)
        return nonce + self._aead.encrypt(nonce, plain, _aad(token, browser))

    def open(self, token: str, browser: str, blob: bytes) -> Record | None:
        """The record, or None when it was not sealed for this token and this browser."""
        try:
            plain = self._aead.decrypt(blob[:_NONCE], blob[_NONCE:], _aad(token, browser))
            doc = json.loads(plain)
            return Record(str(doc["k"]), doc["f"], doc["c"], str(doc["v"]))
        except (InvalidTag, ValueError, KeyError, TypeError):
            return None

    async def fetch(self, tokens: Iterable[str], browser: str) -> Lookup:
        """Every token of one submission, read in one store batch (raises ``StoreError``)."""
        wanted = sorted({t for t in tokens if is_token(t)})
        lookup = Lookup()
        if not wanted:
            return lookup
        blobs = await self.store.execute([Get(store_key(t)) for t in wanted], self.clock.now())
        for token, blob in zip(wanted, blobs, strict=True):
            if blob is None:
                lookup.records[token] = Verdict.UNKNOWN
                continue
            record = self.open(token, browser, bytes(blob))
            lookup.records[token] = record if record is not None else Verdict.FOREIGN
        return lookup


def store_key(token: str) -> str:
    return KEY_PREFIX + token[len(TOKEN_PREFIX):]


def _aad(token: str, browser: str) -> bytes:
    return _AAD + token.encode("ascii") + b"\0" + browser.encode("ascii")


class PageTokens:
    """The tokens of one response: issued synchronously, written to the store in batches by ``flush``.

    The same value in the same field gets the same token within a page (a page
    repeating a form writes one record, not two).  Past ``limit`` tokens,
    ``TooManyTokens`` makes the rewriter empty the value (fail closed), and
    ``refused`` counts them.
    """

    __slots__ = ("_browser", "_issued", "codec_of", "fresh", "limit", "pending", "refused", "secure", "ttl", "vault")

    def __init__(self, vault: Vault, browser: str | None, ttl: float, limit: int, secure: bool = False) -> None:
        self.vault = vault
        self._browser = browser
        self.fresh = browser is None
        """The browser had no vault cookie: ``cookie`` gives it one."""
        self.secure = secure
        self.ttl = ttl
        self.limit = limit
        self.pending: list[Put] = []
        self.refused = 0
        self.codec_of: Callable[[], str | None] | None = None
        """Set by the caller to the rewriter's ``codec``: recorded so a swap-back encodes like the page."""
        self._issued: dict[tuple[str, str | None, str], str] = {}

    @property
    def browser(self) -> str:
        """The vault cookie's value; for a browser without one, made on first use.

        Most pages issue no token, and a response to a browser without the cookie (every
        first visit, every load-balancer probe) would otherwise pay for 128 random bits
        it never sends.
        """
        if self._browser is None:
            self._browser = new_browser_id()
        return self._browser

    @property
    def cookie(self) -> str | None:
        """The ``Set-Cookie`` value that gives a fresh browser its id; None when it had one."""
        return set_cookie(self.browser, self.secure) if self.fresh else None

    @property
    def issued(self) -> int:
        return len(self._issued)

    def tokenize(self, kind: str, value: str, where: Where | None = None) -> str:
        """An HTML rewriter ``field_tokenizer``; with ``where`` None (JSON) the token binds to no field."""
        bound = where.field if where is not None and where.submitted else None
        memo = (kind, bound, value)
        token = self._issued.get(memo)
        if token is not None:
            return token
        if len(self._issued) >= self.limit:
            self.refused += 1
            raise TooManyTokens
        token = format_token(secrets.token_bytes(16))
        codec = self.codec_of() if self.codec_of is not None else None
        blob = self.vault.seal(token, self.browser, Record(kind, bound, codec, value))
        self.pending.append(Put(store_key(token), blob, self.ttl))
        self._issued[memo] = token
        return token

    def json_tokenize(self, kind: str, value: str) -> str:
        """The tokenizer for ``rewrite_json``: JSON values are bound to the browser only."""
        return self.tokenize(kind, value, None)

    async def flush(self) -> None:
        """Write the queued records in one batch (raises ``StoreError``; the queue is emptied either way)."""
        if not self.pending:
            return
        ops, self.pending = self.pending, []
        await self.vault.store.execute(ops, self.vault.clock.now())


@dataclass(slots=True)
class Lookup:
    """The records of one submission; ``resolve`` is the ``resolve_field`` callback of ``forms.swap_back``."""

    records: dict[str, Record | Verdict] = dataclasses.field(default_factory=dict)
    rejected: list[tuple[str, Verdict]] = dataclasses.field(default_factory=list)
    """``(field name, why)`` for each refused token, in submission order (names truncated)."""

    def resolve(self, token: str, field_name: str) -> str | None:
        found = self.records.get(token, Verdict.UNKNOWN)
        if isinstance(found, Verdict):
            self.rejected.append((field_name[:64], found))
            return None
        if found.field is not None and found.field != field_name:
            self.rejected.append((field_name[:64], Verdict.MOVED))
            return None
        return found.value

    @property
    def codec(self) -> str | None:
        """The charset of the page the tokens came from, when they agree (the form's charset)."""
        codecs = {r.codec for r in self.records.values() if isinstance(r, Record) and r.codec}
        return codecs.pop() if len(codecs) == 1 else None

    @property
    def tampered(self) -> list[tuple[str, Verdict]]:
        return [r for r in self.rejected if r[1] is not Verdict.UNKNOWN]

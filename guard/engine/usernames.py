"""Turn the many spellings of one account into one key, and keep that key (and passwords) out of clear text.

Counting ``Alice``, its full-width form, `` alice `` and ``alice@corp.example``
separately would let an attacker spread attempts over spellings the backend treats
as one account, and would split one owner's history.  The guard has no user
database, so unknown usernames are normalised exactly like known ones: a made-up
name must count too, or spraying random names would be invisible.

Steps, in order (each optional per ``UsernameConfig``): Unicode NFKC; strip and fold
white-space runs to one space; case-fold (``str.casefold``, which also folds ``ß``
and final sigma, unlike ``lower``); strip configured e-mail domains; then one alias
lookup.  With both NFKC and case folding on, NFKC runs again after folding
(Unicode's NFKC_Casefold shape), because folding can produce un-normalised text.

Nothing here is stored: ``username_key`` and ``password_fingerprint`` give keyed
HMACs for the store, logs and spraying detection.  Everything is pure except the
load-time ``load_aliases``, which reads one file.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import hmac
import unicodedata
from collections.abc import Mapping
from pathlib import Path

from guard.config import UsernameConfig

MIN_SECRET = 16
"""Bytes of HMAC key: shorter keys make the fingerprints guessable offline."""


class AliasError(ValueError):
    """A bad alias file line; names the file and line, never the usernames on it (they are PII)."""

    def __init__(self, source: str, line: int, message: str) -> None:
        super().__init__(f"{source}:{line}: {message}")
        self.source = source
        self.line = line


class Normalizer:
    """One account, one key.  Built once at config load; ``normalize`` is pure and cheap."""

    __slots__ = ("_aliases", "_casefold", "_domains", "_nfkc", "_strip")

    def __init__(self, cfg: UsernameConfig, aliases: Mapping[str, str] | None = None) -> None:
        self._nfkc = cfg.nfkc
        self._strip = cfg.strip
        self._casefold = cfg.case == "lower"
        # Domains are case-insensitive even when usernames keep their case.
        self._domains = frozenset(_fold(d.strip().lstrip("@").rstrip(".")) for d in cfg.strip_domains)
        self._aliases: dict[str, str] = {}
        # Keys and values go through the same steps, so the file may use any spelling.
        for alias, canonical in (aliases or {}).items():
            key, value = self._basic(alias), self._basic(canonical)
            if self._aliases.setdefault(key, value) != value:
                raise ValueError("two aliases normalise to the same name but map to different accounts")

    def normalize(self, raw: str) -> str:
        """The account key text for ``raw``.  Aliases are applied once, not transitively."""
        name = self._basic(raw)
        return self._aliases.get(name, name)

    def _basic(self, raw: str) -> str:
        name = unicodedata.normalize("NFKC", raw) if self._nfkc else raw
        if self._strip:
            name = " ".join(name.split())
        if self._casefold:
            name = name.casefold()
            if self._nfkc:
                name = unicodedata.normalize("NFKC", name)
        if self._domains and "@" in name:
            local, _, domain = name.rpartition("@")
            if local and _fold(domain).rstrip(".") in self._domains:
                name = local
        return name


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def parse_aliases(text: str, source: str = "<aliases>") -> dict[str, str]:
    """``alias,canonical`` per line; ``#`` comments and blank lines skipped; an optional header row.

    Quoted fields follow CSV rules (an alias may contain a comma) but a record may
    not span lines, so errors can name the one line at fault.
    """
    out: dict[str, str] = {}
    seen: dict[str, int] = {}
    first_row = True
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            row = next(csv.reader([stripped], strict=True))
        except csv.Error:
            raise AliasError(source, number, "not a valid CSV line") from None
        fields = [f.strip() for f in row]
        if first_row and [f.lower() for f in fields] == ["alias", "canonical"]:
            first_row = False
            continue
        first_row = False
        if len(fields) != 2:
            raise AliasError(source, number, f"expected 2 fields alias,canonical (got {len(fields)})")
        alias, canonical = fields
        if not alias or not canonical:
            raise AliasError(source, number, "alias and canonical must both be non-empty")
        if alias in seen:
            if out[alias] != canonical:
                raise AliasError(source, number, f"alias already mapped differently on line {seen[alias]}")
            continue
        seen[alias] = number
        out[alias] = canonical
    return out


def load_aliases(path: str | Path) -> dict[str, str]:
    """Read an alias CSV (UTF-8; a BOM is tolerated, spreadsheets add one).  At load, never per request."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        line = p.read_bytes()[: exc.start].count(b"\n") + 1
        raise AliasError(str(p), line, "not UTF-8") from None
    return parse_aliases(text, str(p))


# ---- keyed digests -------------------------------------------------------------------------------
# One secret serves both digests, so each message is prefixed with its purpose: without
# that, a user whose password equals their username would show equal digests in the store.

def _digest(secret: bytes, purpose: bytes, text: str) -> str:
    mac = _keyed(secret).copy()
    # surrogatepass: JSON bodies can carry lone surrogates ("\ud800"), which strict UTF-8 refuses.
    mac.update(purpose + b"\x00" + text.encode("utf-8", "surrogatepass"))
    return mac.hexdigest()[:32]


@functools.lru_cache(maxsize=8)
def _keyed(secret: bytes) -> hmac.HMAC:
    """HMAC-SHA256 with the key already set, to be copied for each message.

    Why: a login takes two digests, and ``hmac.digest`` sets the key up each time (with
    OpenSSL 3 it also looks the algorithm up): 4.0 us a digest, against 2.6 us for a copy
    of a keyed object (measured in-process).  The result is the same HMAC.  A process
    holds one secret, or a few across reloads, hence the small cache.
    """
    if len(secret) < MIN_SECRET:
        raise ValueError(f"the HMAC secret must be at least {MIN_SECRET} bytes")
    return hmac.new(secret, digestmod=hashlib.sha256)


def username_key(secret: bytes, normalized: str) -> str:
    """The store and log key of an account (128 bits of HMAC-SHA256): stable, opaque without the secret."""
    return _digest(secret, b"user", normalized)


def password_fingerprint(secret: bytes, password: str) -> str:
    """A keyed fingerprint of a password, only to see one password tried against many accounts (spraying).

    Keyed so a leaked store cannot be checked against a password dictionary; the
    password itself is never normalised, stored or logged.
    """
    return _digest(secret, b"password", password)

"""Geo facts about a client address (country, continent, ASN, location) from MaxMind databases.

Rules ask "which country, which network, how far from last time" on every login
request, so a lookup must be cheap and must never fail a request: unknown or
malformed addresses get the shared :data:`EMPTY` answer, and recent answers are kept
in a bounded LRU cache.  The databases change weekly (``geoipupdate``), and a guard
must pick up the new files without a restart and without trusting them blindly: a
replacement that does not open keeps the old reader.  Opening a database reads the
file, so the async watcher does it in a worker thread, never on the event loop.

This module knows nothing of guard.yaml; :class:`GeoSources` is what config wiring
hands it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import os
import stat
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import maxminddb
from maxminddb import Reader

log = logging.getLogger("guard.geo")

Kind = Literal["city", "country", "asn"]

DEFAULT_CACHE_SIZE = 65_536

# Mean Earth radius (IUGG).  The spherical model is off by at most ~0.5% against the
# ellipsoid, far below GeoIP's own accuracy radius.
EARTH_RADIUS_KM = 6371.0088

ASN_MAX = 2**32 - 1


class GeoError(Exception):
    """A configured geo file cannot be used; raised at startup so the operator sees which one."""

    def __init__(self, source: str | os.PathLike[str], problem: str) -> None:
        self.source = os.fspath(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")


@dataclass(frozen=True, slots=True)
class GeoSources:
    """Which database files to open; ``None`` leaves that kind out.

    ``city`` answers everything but the ASN; ``country`` is the smaller alternative
    (no location, so no impossible-travel) and, when both are given, fills in the
    country for addresses the City database has none for.
    """

    city: Path | None = None
    country: Path | None = None
    asn: Path | None = None


@dataclass(frozen=True, slots=True)
class GeoInfo:
    """What the databases say about one address; empty strings, 0 and None mean "not known".

    Unknown is a normal answer (private ranges, new allocations, partial records),
    so rules compare values rather than catch exceptions.  ``accuracy_radius`` is in
    km: impossible-travel checks subtract it, because a country-level record can be
    1,000 km from the client.
    """

    country: str = ""  # ISO 3166-1 alpha-2, upper case
    continent: str = ""  # two-letter continent code (AS, EU, NA, ...)
    city: str = ""  # English name, for notifications and reports
    asn: int = 0
    asn_org: str = ""
    latitude: float | None = None
    longitude: float | None = None
    accuracy_radius: int | None = None

    @property
    def has_location(self) -> bool:
        return self.latitude is not None and self.longitude is not None


EMPTY = GeoInfo()
"""The one answer for every address nothing is known about (compare with ``is`` or ``==``)."""


class GeoLookup(Protocol):
    """The seam the engine depends on, so rule tests can hand in a table instead of files."""

    def lookup(self, ip_text: str) -> GeoInfo: ...


# --- reading records -------------------------------------------------------------------

_NOTHING: dict[str, object] = {}  # shared, never written to


def _map(value: object) -> dict[str, object]:
    """``value`` if it is a map, else an empty one: a database is input, so its shape is checked."""
    return value if isinstance(value, dict) else _NOTHING


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _parse_ip(ip_text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address to look up; IPv4-mapped IPv6 becomes IPv4, because the IPv4 data sits elsewhere."""
    try:
        ip = ipaddress.ip_address(ip_text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped
        if mapped is not None:
            return mapped
        if ip.scope_id is not None:  # fe80::1%eth0: the zone is local, the data is not
            ip = ipaddress.IPv6Address(ip.packed)
    return ip


# --- opening files ---------------------------------------------------------------------

_EXPECTED_TYPE = {"city": "City", "country": "Country", "asn": "ASN"}

Signature = tuple[int, int, int, int]


def _signature(st: os.stat_result) -> Signature:
    """What "the file changed" means: a new inode (rename), or a new size or mtime (rewrite)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _type_problem(kind: Kind, database_type: str) -> str | None:
    """Catch swapped paths (an ASN file configured as city, ...) while accepting other vendors' names."""
    t = database_type.lower()
    has_geo = "city" in t or "country" in t
    if kind == "asn" and has_geo and "asn" not in t:
        return f"configured as the ASN database but its type is {database_type!r}"
    if kind != "asn" and "asn" in t and not has_geo:
        return f"configured as the {kind} database but its type is {database_type!r}"
    if kind == "city" and "country" in t and "city" not in t:
        return f"configured as the city database but its type is {database_type!r}; configure it as country"
    return None


def _open(kind: Kind, path: Path, mode: int) -> tuple[Reader, Signature]:
    """Open and sanity-check one database.  Blocking: call it off the event loop."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise GeoError(path, f"{kind} database not found") from None
    except OSError as exc:
        raise GeoError(path, f"{kind} database cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise GeoError(path, f"{kind} database is not a regular file")
    try:
        reader = maxminddb.open_database(path, mode)
    except OSError as exc:
        raise GeoError(path, f"{kind} database cannot be read ({exc.strerror})") from None
    except Exception as exc:
        # The file's bytes stay out of the message: only the kind of failure is reported.
        raise GeoError(path, f"not a valid MaxMind DB file ({type(exc).__name__})") from None
    try:
        problem = _type_problem(kind, str(reader.metadata().database_type))
    except Exception as exc:
        problem = f"unreadable metadata ({type(exc).__name__})"
    if problem is not None:
        reader.close()
        raise GeoError(path, problem)
    return reader, _signature(st)


class _Slot:
    """One configured database: its current reader and the file state it was read from."""

    __slots__ = ("kind", "missing", "path", "reader", "rejected", "signature")

    def __init__(self, kind: Kind, path: Path, reader: Reader, signature: Signature) -> None:
        self.kind: Kind = kind
        self.path = path
        self.reader = reader
        self.signature = signature
        self.rejected: Signature | None = None  # a bad file is reported once, not on every poll
        self.missing = False


@dataclass(slots=True)
class _Change:
    slot: _Slot
    signature: Signature | None  # None: the path could not be stat'ed
    reader: Reader | None
    error: str | None


@dataclass(slots=True)
class GeoStats:
    """Counters for /metrics and for tests; plain ints, read without locking."""

    hits: int = 0
    misses: int = 0
    reloads: int = 0
    reload_errors: int = 0


class GeoDB:
    """Up to three MaxMind readers behind one cached, reloadable ``lookup``.

    Construction opens the files (blocking: do it before serving, or use
    :meth:`open_async`) and raises :class:`GeoError` naming the first unusable path.
    Lookups, :meth:`maybe_reload` and :meth:`close` belong to one thread (the event
    loop's): a reload closes the old reader, which must not be in use elsewhere.

    With the default ``MODE_AUTO`` files are memory-mapped, so a new database must
    arrive by rename, as ``geoipupdate`` does it; rewriting a mapped file in place can
    crash the process.  ``mode=maxminddb.MODE_MEMORY`` trades RAM for that risk.
    """

    def __init__(
        self,
        sources: GeoSources,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
        mode: int = maxminddb.MODE_AUTO,
    ) -> None:
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0 (got {cache_size})")
        self._mode = mode
        self._cache_size = cache_size
        self._cache: OrderedDict[str, GeoInfo] = OrderedDict()
        self.stats = GeoStats()
        self._slots: list[_Slot] = []
        wanted: list[tuple[Kind, Path | None]] = [
            ("city", sources.city), ("country", sources.country), ("asn", sources.asn),
        ]
        try:
            for kind, path in wanted:
                if path is not None:
                    reader, sig = _open(kind, Path(path), mode)
                    self._slots.append(_Slot(kind, Path(path), reader, sig))
        except BaseException:
            self.close()
            raise
        self._city: Reader | None = None
        self._country: Reader | None = None
        self._asn: Reader | None = None
        self._bind()

    @classmethod
    async def open_async(
        cls, sources: GeoSources, *, cache_size: int = DEFAULT_CACHE_SIZE, mode: int = maxminddb.MODE_AUTO
    ) -> GeoDB:
        """Construct in a worker thread, for callers already on the event loop."""
        return await asyncio.to_thread(cls, sources, cache_size=cache_size, mode=mode)

    def _bind(self) -> None:
        """Copy the current readers into attributes, so a lookup does not search the slot list."""
        by_kind = {s.kind: s.reader for s in self._slots}
        self._city = by_kind.get("city")
        self._country = by_kind.get("country")
        self._asn = by_kind.get("asn")

    @property
    def enabled(self) -> bool:
        return bool(self._slots)

    # --- lookups -----------------------------------------------------------------------

    def lookup(self, ip_text: str) -> GeoInfo:
        """Everything known about ``ip_text``; :data:`EMPTY` for unknown or malformed input."""
        if not self._slots or not isinstance(ip_text, str):
            return EMPTY
        cache = self._cache
        info = cache.get(ip_text)
        if info is not None:
            cache.move_to_end(ip_text)
            self.stats.hits += 1
            return info
        ip = _parse_ip(ip_text)
        if ip is None:
            return EMPTY  # not cached: garbage must not push real clients out of the cache
        self.stats.misses += 1
        info = self._resolve(ip)
        if self._cache_size:
            cache[ip_text] = info
            if len(cache) > self._cache_size:
                cache.popitem(last=False)
        return info

    def _resolve(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> GeoInfo:
        geo = _get(self._city, ip)
        place = geo  # where country and continent come from
        if self._country is not None and _map(geo).get("country") is None:
            fallback = _get(self._country, ip)
            if fallback is not None and (geo is None or _map(fallback).get("country") is not None):
                place = fallback
        net = _get(self._asn, ip)
        if place is None and net is None:
            return EMPTY
        g, p, n = _map(geo), _map(place), _map(net)
        location = _map(g.get("location"))
        return GeoInfo(
            country=_text(_map(p.get("country")).get("iso_code")).upper(),
            continent=_text(_map(p.get("continent")).get("code")).upper(),
            city=_text(_map(_map(g.get("city")).get("names")).get("en")),
            asn=_int(n.get("autonomous_system_number")) or 0,
            asn_org=_text(n.get("autonomous_system_organization")),
            latitude=_float(location.get("latitude")),
            longitude=_float(location.get("longitude")),
            accuracy_radius=_int(location.get("accuracy_radius")),
        )

    def paths(self) -> list[Path]:
        """The watched files, e.g. for guard.filewatch if one watcher should drive every reload."""
        return [slot.path for slot in self._slots]

    def cache_len(self) -> int:
        return len(self._cache)

    # --- reload ------------------------------------------------------------------------

    def _poll(self) -> list[_Change]:
        """Stat every file and open the changed ones.  Blocking, and touches no shared state."""
        changes: list[_Change] = []
        for slot in self._slots:
            try:
                sig = _signature(os.stat(slot.path))
            except OSError as exc:
                changes.append(_Change(slot, None, None, f"cannot stat ({exc.strerror})"))
                continue
            if sig == slot.signature or sig == slot.rejected:
                continue
            try:
                reader, opened_sig = _open(slot.kind, slot.path, self._mode)
            except GeoError as exc:
                changes.append(_Change(slot, sig, None, exc.problem))
                continue
            changes.append(_Change(slot, opened_sig, reader, None))
        return changes

    def _apply(self, changes: list[_Change]) -> bool:
        """Swap in what :meth:`_poll` opened.  Runs on the lookup thread; never blocks."""
        swapped = False
        for ch in changes:
            slot = ch.slot
            if ch.reader is None:
                if ch.signature is None:
                    if not slot.missing:
                        slot.missing = True
                        self.stats.reload_errors += 1
                        log.error("geo database file is gone; keeping the loaded one",
                                  extra={"geo_kind": slot.kind, "path": str(slot.path), "error": ch.error})
                elif ch.signature != slot.rejected:
                    slot.rejected = ch.signature
                    self.stats.reload_errors += 1
                    log.error("geo database changed but cannot be used; keeping the loaded one",
                              extra={"geo_kind": slot.kind, "path": str(slot.path), "error": ch.error})
                continue
            slot.missing = False
            if ch.signature == slot.signature or slot not in self._slots:
                ch.reader.close()  # a concurrent poll already installed this file, or we were closed
                continue
            old, slot.reader = slot.reader, ch.reader
            slot.signature, slot.rejected = ch.signature or slot.signature, None
            old.close()
            swapped = True
            self.stats.reloads += 1
            meta = ch.reader.metadata()
            log.info("geo database reloaded",
                     extra={"geo_kind": slot.kind, "path": str(slot.path),
                            "database_type": meta.database_type, "build_epoch": meta.build_epoch})
        if swapped:
            self._bind()
            self._cache.clear()  # cached answers came from the old data
        return swapped

    def maybe_reload(self) -> bool:
        """Reload every database whose file changed; True if any did.  Blocking (for tests and CLIs)."""
        return self._apply(self._poll())

    async def maybe_reload_async(self) -> bool:
        """:meth:`maybe_reload` with the file work in a worker thread, for use on the event loop."""
        if not self._slots:
            return False
        return self._apply(await asyncio.to_thread(self._poll))

    async def watch(self, interval: float = 60.0) -> None:
        """Poll for changed files every ``interval`` seconds until cancelled.

        A failed check is logged and the loop goes on: a geo update must never be
        what takes the guard down.
        """
        if not interval > 0:
            raise ValueError(f"interval must be > 0 (got {interval})")
        while True:
            await asyncio.sleep(interval)
            try:
                await self.maybe_reload_async()
            except Exception:
                log.exception("geo database reload check failed")

    # --- housekeeping ------------------------------------------------------------------

    def describe(self) -> list[dict[str, object]]:
        """What is loaded, for the admin API and startup logs."""
        out: list[dict[str, object]] = []
        for slot in self._slots:
            meta = slot.reader.metadata()
            out.append({"kind": slot.kind, "path": str(slot.path), "database_type": meta.database_type,
                        "build_epoch": meta.build_epoch})
        return out

    def close(self) -> None:
        slots, self._slots = self._slots, []
        for slot in slots:
            slot.reader.close()
        self._cache.clear()
        self._city = self._country = self._asn = None

    def __enter__(self) -> GeoDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _get(reader: Reader | None, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> object:
    """One record or None; an IPv6 address in an IPv4-only database is simply not known."""
    if reader is None:
        return None
    try:
        return reader.get(ip)
    except (ValueError, maxminddb.InvalidDatabaseError):
        return None


# --- hosting networks ------------------------------------------------------------------

class HostingASNs:
    """ASNs of hosting and datacenter networks, where people rarely log in from but bots do.

    A plain text list (``16509``, ``AS16509``, ``# comments``) so operators can diff,
    review and extend it without touching code.
    """

    __slots__ = ("_asns", "source")

    def __init__(self, asns: Iterable[int] = (), source: str = "") -> None:
        self._asns = frozenset(asns)
        self.source = source

    @classmethod
    def parse(cls, text: str, source: str = "<text>") -> HostingASNs:
        """Parse the list; a bad line is a :class:`GeoError` naming ``source:line``."""
        asns: set[int] = set()
        for lineno, raw in enumerate(text.splitlines(), start=1):
            item = raw.split("#", 1)[0].strip()
            if not item:
                continue
            digits = item[2:] if item[:2].upper() == "AS" else item
            if not (digits.isascii() and digits.isdigit()):
                problem = f'expected an ASN such as 16509 or AS16509 (got "{item}")'
                raise GeoError(f"{source}:{lineno}", problem)
            asn = int(digits)
            if not 0 < asn <= ASN_MAX:
                # 0 is also our "unknown", so it would mark every unknown address as hosting.
                raise GeoError(f"{source}:{lineno}", f"ASN must be between 1 and {ASN_MAX} (got {asn})")
            asns.add(asn)
        return cls(asns, source)

    @classmethod
    def load(cls, path: Path) -> HostingASNs:
        """Read the list at startup (blocking); a missing file is a :class:`GeoError`."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise GeoError(path, "hosting ASN list not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise GeoError(path, f"hosting ASN list cannot be read ({type(exc).__name__})") from None
        return cls.parse(text, os.fspath(path))

    def contains(self, asn: int) -> bool:
        return asn in self._asns

    def __contains__(self, asn: object) -> bool:
        return asn in self._asns

    def __len__(self) -> int:
        return len(self._asns)

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self._asns))


# --- distances -------------------------------------------------------------------------

def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km between two points given in degrees."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    # Rounding can push a a hair past 1 for antipodal points; asin would then fail.
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(1.0, max(0.0, a))))


def travel_speed_kmh(km: float, seconds: float) -> float:
    """Speed needed to cover ``km`` in ``seconds``.

    Events may arrive out of order, so the sign of ``seconds`` is ignored.  Zero
    seconds is infinitely fast for any distance (two logins at once from two places),
    and 0 for no distance (one place), instead of a ZeroDivisionError.
    """
    if km <= 0:
        return 0.0
    s = abs(seconds)
    if s == 0:
        return math.inf
    return km / (s / 3600.0)


def min_distance_km(a: GeoInfo, b: GeoInfo) -> float | None:
    """The least distance the two answers allow, after both accuracy radii; None without locations.

    Using the centre-to-centre distance would flag a Tokyo user whose ISP is placed
    at the country centroid (radius 500 km) as travelling.
    """
    if a.latitude is None or a.longitude is None or b.latitude is None or b.longitude is None:
        return None
    km = haversine_km(a.latitude, a.longitude, b.latitude, b.longitude)
    return max(0.0, km - (a.accuracy_radius or 0) - (b.accuracy_radius or 0))

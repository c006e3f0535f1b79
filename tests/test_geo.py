"""guard.geo against real MMDB files written by geoip/build_test_dbs.py (no mocked reader)."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import logging
import math
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import maxminddb
import pytest

import guard.geo as geo_module
from guard.geo import (
    EMPTY,
    GeoDB,
    GeoError,
    GeoInfo,
    GeoSources,
    HostingASNs,
    haversine_km,
    min_distance_km,
    travel_speed_kmh,
)

ROOT = Path(__file__).resolve().parent.parent
GEOIP = ROOT / "geoip"


def _load_builder() -> ModuleType:
    # geoip/ is a folder of data and one script, not a package: load the script by path.
    spec = importlib.util.spec_from_file_location("build_test_dbs", GEOIP / "build_test_dbs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


builder = _load_builder()

CITY = GEOIP / "test-City.mmdb"
COUNTRY = GEOIP / "test-Country.mmdb"
ASN = GEOIP / "test-ASN.mmdb"

TOKYO_HOME = GeoInfo("JP", "AS", "Tokyo", 64500, "Example Home ISP JP", 35.6895, 139.6917, 20)


@pytest.fixture
def geo() -> Iterator[GeoDB]:
    with GeoDB(GeoSources(city=CITY, asn=ASN)) as db:
        yield db


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[GeoDB, Path]]:
    """A GeoDB over a private copy of the test databases, so a test may replace files."""
    live_dir = tmp_path / "live"
    builder.build(live_dir)
    with GeoDB(GeoSources(city=live_dir / "test-City.mmdb", asn=live_dir / "test-ASN.mmdb")) as db:
        yield db, live_dir


def _replace(src: Path, dst: Path) -> None:
    """Install a file the way geoipupdate does: copy beside the target, then rename over it."""
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _variant_blocks(cidr: str, place: object) -> tuple[object, ...]:
    """BLOCKS with one block moved to another place: the smallest real change to a database."""
    return tuple(dataclasses.replace(b, place=place) if b.cidr == cidr else b for b in builder.BLOCKS)


# --- lookups ----------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("ip", "country", "continent", "city", "asn", "org"),
    [
        ("10.1.2.3", "JP", "AS", "Tokyo", 64500, "Example Home ISP JP"),
        ("10.1.200.9", "JP", "AS", "Osaka", 64500, "Example Home ISP JP"),
        ("10.2.0.7", "JP", "AS", "Tokyo", 64510, "Example Cloud Hosting"),
        ("10.3.255.255", "TW", "AS", "Taipei", 64502, "Example Broadband TW"),
        ("10.4.0.0", "TH", "AS", "Bangkok", 64503, "Example Telecom TH"),
        ("10.5.1.1", "US", "NA", "New York", 64504, "Example Cable US"),
        ("10.5.200.1", "US", "NA", "San Francisco", 64510, "Example Cloud Hosting"),
        ("10.6.3.4", "DE", "EU", "Frankfurt am Main", 65010, "Example VPS Provider"),
        ("10.7.3.4", "BR", "SA", "São Paulo", 64506, "Example Net BR"),
        ("100.64.9.9", "JP", "AS", "Tokyo", 64501, "Example Mobile JP"),
        ("100.65.9.9", "JP", "AS", "Osaka", 64501, "Example Mobile JP"),
        ("100.66.9.9", "TH", "AS", "Bangkok", 64507, "Example Mobile TH"),
        ("192.0.2.1", "JP", "AS", "Tokyo", 64500, "Example Home ISP JP"),
        ("198.51.100.1", "TW", "AS", "Taipei", 64502, "Example Broadband TW"),
        ("198.51.100.200", "TH", "AS", "Bangkok", 64503, "Example Telecom TH"),
        ("203.0.113.5", "DE", "EU", "Frankfurt am Main", 65010, "Example VPS Provider"),
        ("203.0.113.250", "US", "NA", "San Francisco", 64510, "Example Cloud Hosting"),
        ("2001:db8:1::1", "JP", "AS", "Tokyo", 64500, "Example Home ISP JP"),
        ("2001:db8:1:8000::1", "JP", "AS", "Osaka", 64500, "Example Home ISP JP"),
        ("2001:db8:2:ffff::1", "JP", "AS", "Tokyo", 64510, "Example Cloud Hosting"),
        ("2001:DB8:3::abcd", "TW", "AS", "Taipei", 64502, "Example Broadband TW"),
        ("2001:db8:66::1", "TH", "AS", "Bangkok", 64507, "Example Mobile TH"),
        # IPv4-mapped IPv6 is the IPv4 client (dual-stack sockets report it this way)
        ("::ffff:10.1.2.3", "JP", "AS", "Tokyo", 64500, "Example Home ISP JP"),
        ("::ffff:a06:304", "DE", "EU", "Frankfurt am Main", 65010, "Example VPS Provider"),
        ("::FFFF:192.0.2.1", "JP", "AS", "Tokyo", 64500, "Example Home ISP JP"),
        # a zone id is local to the host and does not change the answer
        ("2001:db8:1::1%eth0", "JP", "AS", "Tokyo", 64500, "Example Home ISP JP"),
    ],
)
def test_lookup_table(
    geo: GeoDB, ip: str, country: str, continent: str, city: str, asn: int, org: str
) -> None:
    info = geo.lookup(ip)
    assert (info.country, info.continent, info.city, info.asn, info.asn_org) == (
        country, continent, city, asn, org,
    )
    assert info.has_location


def test_full_record_for_tokyo(geo: GeoDB) -> None:
    assert geo.lookup("10.1.0.1") == TOKYO_HOME
    assert geo.lookup("::ffff:10.1.0.1") == TOKYO_HOME


@pytest.mark.parametrize("block", builder.BLOCKS, ids=lambda b: b.cidr)
def test_every_block_answers_as_the_builder_says(geo: GeoDB, block: object) -> None:
    """First and last address of each block: catches tree-building mistakes at the edges."""
    import ipaddress

    cidr: str = block.cidr  # type: ignore[attr-defined]
    place = block.place  # type: ignore[attr-defined]
    network = block.network  # type: ignore[attr-defined]
    net = ipaddress.ip_network(cidr)
    for ip in (net.network_address, net.broadcast_address):
        info = geo.lookup(str(ip))
        assert info.country == (place.country if place else "")
        assert info.continent == (place.continent if place else "")
        assert info.city == (place.city if place else "")
        assert info.latitude == (place.latitude if place else None)
        assert info.longitude == (place.longitude if place else None)
        located = place is not None and place.latitude is not None
        assert info.accuracy_radius == (place.accuracy_radius if located else None)
        assert info.asn == (network.asn if network else 0)
        assert info.asn_org == (network.org if network else "")


def test_partial_records(geo: GeoDB) -> None:
    country_level = geo.lookup("10.8.1.1")
    assert (country_level.country, country_level.city, country_level.accuracy_radius) == ("JP", "", 500)
    continent_only = geo.lookup("2001:db8:9::1")
    assert continent_only == GeoInfo(continent="EU")
    assert not continent_only.has_location
    asn_only = geo.lookup("10.10.0.1")
    assert asn_only == GeoInfo(asn=64511, asn_org="Example Anycast CDN")


@pytest.mark.parametrize(
    "ip",
    ["10.200.0.1", "10.0.0.1", "100.127.0.1", "2001:db8:ffff::1", "8.8.8.8", "127.0.0.1", "::1", "::",
     "::ffff:8.8.8.8", "fe80::1%eth0"],
)
def test_unknown_addresses_get_the_shared_empty_answer(geo: GeoDB, ip: str) -> None:
    assert geo.lookup(ip) is EMPTY


@pytest.mark.parametrize(
    "bad",
    ["", " ", "garbage", "10.1.2.3 ", " 10.1.2.3", "10.1.2.3:8080", "[2001:db8:1::1]", "10.1.2.0/24",
     "1.2.3.4.5", "256.1.1.1", "10.01.2.3", "2001:db8:::1", "\x00", "10.1.2.3\n", "x" * 10_000,
     "\uff11\uff10.1.2.3", None, 167838211, b"10.1.2.3", ["10.1.2.3"]],
)
def test_garbage_never_raises_and_is_not_cached(geo: GeoDB, bad: object) -> None:
    assert geo.lookup(bad) is EMPTY  # type: ignore[arg-type]
    assert geo.cache_len() == 0


def test_country_database_alone_has_no_location() -> None:
    with GeoDB(GeoSources(country=COUNTRY)) as db:
        assert db.lookup("10.1.2.3") == GeoInfo(country="JP", continent="AS")
        assert db.lookup("2001:db8:6::1") == GeoInfo(country="DE", continent="EU")


def test_country_database_fills_in_for_the_city_database(tmp_path: Path) -> None:
    """An older City file without a block, next to a Country file that has it."""
    blocks = tuple(b for b in builder.BLOCKS if b.cidr != "10.3.0.0/16")
    old = builder.build(tmp_path / "old", blocks)
    with GeoDB(GeoSources(city=old["test-City.mmdb"], country=COUNTRY, asn=ASN)) as db:
        assert db.lookup("10.3.0.1") == GeoInfo(country="TW", continent="AS", asn=64502,
                                                asn_org="Example Broadband TW")
        assert db.lookup("10.1.2.3") == TOKYO_HOME  # the City answer wins where it has one


def test_no_databases_means_everything_is_unknown() -> None:
    with GeoDB(GeoSources()) as db:
        assert not db.enabled
        assert db.lookup("10.1.2.3") is EMPTY
        assert db.maybe_reload() is False


def test_describe_reports_loaded_files(geo: GeoDB) -> None:
    assert geo.paths() == [CITY, ASN]
    assert [(d["kind"], d["database_type"], d["build_epoch"]) for d in geo.describe()] == [
        ("city", "GeoLite2-City", builder.BUILD_EPOCH),
        ("asn", "GeoLite2-ASN", builder.BUILD_EPOCH),
    ]


# --- cache ------------------------------------------------------------------------------

def test_lru_cache_keeps_recent_and_evicts_oldest() -> None:
    with GeoDB(GeoSources(city=CITY, asn=ASN), cache_size=2) as db:
        a = db.lookup("10.1.0.1")
        db.lookup("10.3.0.1")
        assert db.lookup("10.1.0.1") is a  # hit: the very same object
        db.lookup("10.4.0.1")  # evicts 10.3.0.1, the least recently used
        assert db.cache_len() == 2
        assert (db.stats.hits, db.stats.misses) == (1, 3)
        db.lookup("10.1.0.1")
        assert (db.stats.hits, db.stats.misses) == (2, 3)
        db.lookup("10.3.0.1")
        assert (db.stats.hits, db.stats.misses) == (2, 4)


def test_unknown_answers_are_cached_too(geo: GeoDB) -> None:
    geo.lookup("8.8.8.8")
    geo.lookup("8.8.8.8")
    assert (geo.stats.hits, geo.stats.misses) == (1, 1)


def test_cache_can_be_disabled() -> None:
    with GeoDB(GeoSources(city=CITY), cache_size=0) as db:
        assert db.lookup("10.1.0.1").country == "JP"
        assert db.lookup("10.1.0.1").country == "JP"
        assert db.cache_len() == 0
        assert db.stats.misses == 2
    with pytest.raises(ValueError, match="cache_size"):
        GeoDB(GeoSources(), cache_size=-1)


# --- reload -----------------------------------------------------------------------------

def test_reload_picks_up_a_replaced_file(live: tuple[GeoDB, Path], tmp_path: Path) -> None:
    db, live_dir = live
    assert db.lookup("10.1.2.3").country == "JP"  # cached now
    assert db.maybe_reload() is False  # nothing changed yet
    new = builder.build(tmp_path / "new", _variant_blocks("10.1.0.0/17", builder.TAIPEI))
    _replace(new["test-City.mmdb"], live_dir / "test-City.mmdb")
    assert db.maybe_reload() is True
    assert db.cache_len() == 0
    info = db.lookup("10.1.2.3")
    assert (info.country, info.city, info.asn) == ("TW", "Taipei", 64500)  # the ASN file is unchanged
    assert db.lookup("10.1.200.1").city == "Osaka"
    assert db.stats.reloads == 1
    assert db.maybe_reload() is False


def test_reload_sees_an_in_place_rewrite(tmp_path: Path) -> None:
    """Same inode, new size and mtime still counts as a change.

    Read into memory here: rewriting a file in place under a memory map is what the
    README tells operators never to do.
    """
    target = tmp_path / "asn.mmdb"
    shutil.copyfile(ASN, target)
    blocks = tuple(b for b in builder.BLOCKS if b.cidr != "10.2.0.0/16")
    new = builder.build(tmp_path / "new", blocks)
    with GeoDB(GeoSources(asn=target), mode=maxminddb.MODE_MEMORY) as db:
        assert db.lookup("10.2.0.1").asn == 64510
        inode = target.stat().st_ino
        target.write_bytes(new["test-ASN.mmdb"].read_bytes())
        st = target.stat()
        assert st.st_ino == inode
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        assert db.maybe_reload() is True
        assert db.lookup("10.2.0.1") is EMPTY


@pytest.mark.parametrize(
    "content",
    [b"", b"SECRET-LOOKING-CONTENT " * 200, "truncated"],
    ids=["empty", "garbage", "truncated"],
)
def test_corrupt_replacement_keeps_the_old_reader(
    live: tuple[GeoDB, Path], content: bytes | str, caplog: pytest.LogCaptureFixture
) -> None:
    db, live_dir = live
    target = live_dir / "test-City.mmdb"
    bad = target.read_bytes()[:1500] if content == "truncated" else content
    assert isinstance(bad, bytes)
    incoming = live_dir / "incoming.mmdb"
    incoming.write_bytes(bad)
    caplog.set_level(logging.INFO, logger="guard.geo")
    _replace(incoming, target)

    assert db.maybe_reload() is False
    assert db.lookup("10.1.2.3") == TOKYO_HOME
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].__dict__["path"] == str(target)
    assert "SECRET" not in caplog.text
    assert db.stats.reload_errors == 1

    assert db.maybe_reload() is False  # the same bad file is reported once, not every poll
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1

    _replace(CITY, target)  # a good file arrives: it is used
    assert db.maybe_reload() is True
    assert db.lookup("10.1.2.3") == TOKYO_HOME


def test_replacement_of_the_wrong_type_is_refused(
    live: tuple[GeoDB, Path], caplog: pytest.LogCaptureFixture
) -> None:
    db, live_dir = live
    _replace(ASN, live_dir / "test-City.mmdb")
    with caplog.at_level(logging.ERROR, logger="guard.geo"):
        assert db.maybe_reload() is False
    assert "GeoLite2-ASN" in caplog.records[0].__dict__["error"]
    assert db.lookup("10.1.2.3") == TOKYO_HOME


def test_deleted_file_keeps_the_loaded_data(
    live: tuple[GeoDB, Path], caplog: pytest.LogCaptureFixture
) -> None:
    db, live_dir = live
    (live_dir / "test-ASN.mmdb").unlink()
    with caplog.at_level(logging.ERROR, logger="guard.geo"):
        assert db.maybe_reload() is False
        assert db.maybe_reload() is False
    assert len(caplog.records) == 1
    assert db.lookup("10.1.2.3") == TOKYO_HOME
    _replace(ASN, live_dir / "test-ASN.mmdb")
    assert db.maybe_reload() is True


class _OnMessage(logging.Handler):
    """Sets an event when a log message arrives; GeoDB logs reloads on the loop thread."""

    def __init__(self, message: str, event: asyncio.Event) -> None:
        super().__init__()
        self.message = message
        self.event = event

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == self.message:
            self.event.set()


async def test_async_reload_and_watcher(
    live: tuple[GeoDB, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, live_dir = live
    # Every file open during an async reload must happen off the event loop's thread.
    real_open = geo_module._open
    open_threads: list[int] = []

    def recording_open(*args: Any) -> Any:
        open_threads.append(threading.get_ident())
        return real_open(*args)

    monkeypatch.setattr(geo_module, "_open", recording_open)
    assert db.lookup("2001:db8:3::1").country == "TW"
    assert await db.maybe_reload_async() is False
    new = builder.build(tmp_path / "new", _variant_blocks("2001:db8:3::/48", builder.BANGKOK))
    _replace(new["test-City.mmdb"], live_dir / "test-City.mmdb")
    assert await db.maybe_reload_async() is True
    assert db.lookup("2001:db8:3::1").country == "TH"

    # The watcher: the same on a timer.  The test waits for the reload's log line.
    reloaded = asyncio.Event()
    handler = _OnMessage("geo database reloaded", reloaded)
    logger = logging.getLogger("guard.geo")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    task = asyncio.create_task(db.watch(0.01))
    try:
        _replace(CITY, live_dir / "test-City.mmdb")
        async with asyncio.timeout(5):
            await reloaded.wait()
    finally:
        task.cancel()
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        with pytest.raises(asyncio.CancelledError):
            await task
    assert db.lookup("2001:db8:3::1").country == "TW"
    assert db.stats.reloads == 2
    assert len(open_threads) == 2
    assert threading.get_ident() not in open_threads


async def test_open_async() -> None:
    db = await GeoDB.open_async(GeoSources(city=CITY, asn=ASN), cache_size=10)
    with db:
        assert db.lookup("10.1.2.3") == TOKYO_HOME
    with pytest.raises(GeoError, match="city database not found"):
        await GeoDB.open_async(GeoSources(city=GEOIP / "missing.mmdb"))


async def test_watch_rejects_a_bad_interval(geo: GeoDB) -> None:
    with pytest.raises(ValueError, match="interval"):
        await geo.watch(0)


# --- startup errors ---------------------------------------------------------------------

def test_missing_path_is_a_startup_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "GeoLite2-City.mmdb"
    with pytest.raises(GeoError) as exc:
        GeoDB(GeoSources(city=missing, asn=ASN))
    assert str(exc.value) == f"{missing}: city database not found"
    assert exc.value.source == str(missing)


def test_directory_and_corrupt_files_are_startup_errors(tmp_path: Path) -> None:
    with pytest.raises(GeoError, match="not a regular file"):
        GeoDB(GeoSources(asn=tmp_path))
    bad = tmp_path / "bad.mmdb"
    bad.write_bytes(b"PRIVATE " * 100)
    with pytest.raises(GeoError) as exc:
        GeoDB(GeoSources(city=bad))
    assert "not a valid MaxMind DB file" in str(exc.value)
    assert "PRIVATE" not in str(exc.value)


@pytest.mark.parametrize(
    ("sources", "problem"),
    [
        (GeoSources(city=ASN), "configured as the city database but its type is 'GeoLite2-ASN'"),
        (GeoSources(asn=CITY), "configured as the ASN database but its type is 'GeoLite2-City'"),
        (GeoSources(city=COUNTRY), "configure it as country"),
    ],
)
def test_swapped_paths_are_startup_errors(sources: GeoSources, problem: str) -> None:
    with pytest.raises(GeoError, match=problem):
        GeoDB(sources)


def test_city_database_is_accepted_as_country() -> None:
    with GeoDB(GeoSources(country=CITY)) as db:
        assert db.lookup("10.1.2.3").country == "JP"


# --- hosting ASNs -----------------------------------------------------------------------

def test_hosting_list_parsing() -> None:
    text = "# header\n\n16509\nAS14061   # DigitalOcean\n  as24940\n\t64510 # test\n16509\n"
    asns = HostingASNs.parse(text, "list.txt")
    assert sorted(asns) == [14061, 16509, 24940, 64510]
    assert len(asns) == 4
    assert asns.contains(14061) and 24940 in asns
    assert not asns.contains(0) and not asns.contains(64500)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("16509\nAmazon\n", 'list.txt:2: expected an ASN such as 16509 or AS16509 (got "Amazon")'),
        ("AS-16509\n", 'list.txt:1: expected an ASN such as 16509 or AS16509 (got "AS-16509")'),
        ("16509 14061\n", 'list.txt:1: expected an ASN such as 16509 or AS16509 (got "16509 14061")'),
        ("\uff11\uff16\uff15\uff10\uff19\n", "list.txt:1: expected an ASN"),
        ("0\n", "list.txt:1: ASN must be between 1 and 4294967295 (got 0)"),
        ("\n\nAS4294967296\n", "list.txt:3: ASN must be between 1 and 4294967295"),
    ],
)
def test_hosting_list_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(GeoError) as exc:
        HostingASNs.parse(text, "list.txt")
    assert str(exc.value).startswith(message)


def test_hosting_list_file(tmp_path: Path) -> None:
    shipped = HostingASNs.load(GEOIP / "hosting-asns.txt")
    assert shipped.contains(16509) and shipped.contains(14061)
    assert shipped.contains(64510) and shipped.contains(65010)  # the test databases' hosting ASNs
    assert not shipped.contains(64500)  # the test home ISP
    with pytest.raises(GeoError, match="hosting ASN list not found"):
        HostingASNs.load(tmp_path / "missing.txt")


# --- distances --------------------------------------------------------------------------

TOKYO = (35.6895, 139.6917)
OSAKA = (34.6937, 135.5023)
NEW_YORK = (40.7128, -74.0060)


@pytest.mark.parametrize(
    ("a", "b", "km"),
    [(TOKYO, OSAKA, 400.0), (TOKYO, NEW_YORK, 10_850.0), (OSAKA, TOKYO, 400.0)],
)
def test_haversine_known_distances(a: tuple[float, float], b: tuple[float, float], km: float) -> None:
    assert haversine_km(*a, *b) == pytest.approx(km, rel=0.01)


def test_haversine_edges() -> None:
    assert haversine_km(*TOKYO, *TOKYO) == 0.0
    assert haversine_km(0, 0, 0, 180) == pytest.approx(math.pi * 6371.0088)  # antipodes, no domain error
    assert haversine_km(90, 0, -90, 0) == pytest.approx(math.pi * 6371.0088)
    assert haversine_km(0, 179.5, 0, -179.5) == pytest.approx(111.2, rel=0.01)  # across the date line


@pytest.mark.parametrize(
    ("km", "seconds", "kmh"),
    [(400.0, 3600, 400.0), (400.0, 1800, 800.0), (400.0, -3600, 400.0), (400.0, 0, math.inf),
     (0.0, 0, 0.0), (0.0, 60, 0.0)],
)
def test_travel_speed(km: float, seconds: float, kmh: float) -> None:
    assert travel_speed_kmh(km, seconds) == kmh


def test_min_distance_subtracts_accuracy_radii(geo: GeoDB) -> None:
    tokyo, osaka = geo.lookup("10.1.0.1"), geo.lookup("10.1.200.1")
    d = min_distance_km(tokyo, osaka)
    assert d is not None
    assert d == pytest.approx(haversine_km(*TOKYO, *OSAKA) - 40)
    assert min_distance_km(tokyo, geo.lookup("10.8.0.1")) == 0.0  # country-level: 500 km radius
    assert min_distance_km(tokyo, geo.lookup("10.9.0.1")) is None
    assert min_distance_km(EMPTY, EMPTY) is None


# --- the committed test databases -------------------------------------------------------

def test_committed_databases_equal_a_fresh_build(tmp_path: Path) -> None:
    fresh = builder.build(tmp_path)
    for name, path in fresh.items():
        assert path.read_bytes() == (GEOIP / name).read_bytes(), (
            f"geoip/{name} is stale: run `python geoip/build_test_dbs.py` and commit the result"
        )


def test_builder_runs_as_a_script(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(GEOIP / "build_test_dbs.py"), str(tmp_path)], check=True,
                   capture_output=True)
    for name in builder.FILES:
        assert (tmp_path / name).read_bytes() == (GEOIP / name).read_bytes()


def test_readme_table_matches_the_data() -> None:
    readme = (GEOIP / "README.md").read_text(encoding="utf-8")
    assert builder.render_table() in readme, "geoip/README.md block table is stale: paste render_table()"

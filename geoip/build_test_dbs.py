"""Build the small, fake GeoLite2-shaped test databases that tests and the attack simulator use.

Tests must exercise the real ``maxminddb`` reader against real MMDB files, and CI
cannot download MaxMind data (it needs a licence key and the licence forbids
committing it).  So we write our own databases, with the GeoLite2 record layout,
for private and documentation address ranges only: nothing here describes a real
network, and every ASN is from the private-use or documentation ranges.

Run ``python geoip/build_test_dbs.py`` to rewrite ``geoip/test-*.mmdb``; the output
is byte-for-byte deterministic (fixed build epoch, fixed insertion order), so a test
rebuilds into a temporary folder and compares with the committed files.  The block
table in ``geoip/README.md`` is rendered by :func:`render_table` and checked by the
same test, so the documentation cannot drift from the data.

Needs the test-only dependency ``mmdb-writer`` (which brings ``netaddr``).
"""

from __future__ import annotations

import ipaddress
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmdb_writer import MmdbF64, MmdbU16, MmdbU32, MMDBWriter
from netaddr import IPSet  # type: ignore[import-untyped]  # netaddr ships no type hints

HERE = Path(__file__).resolve().parent

# A fixed build time (2025-01-01T00:00:00Z): the writer would otherwise stamp
# time.time() into the metadata and no two builds would be equal.
BUILD_EPOCH = 1735689600

DESCRIPTION = "loginguard TEST data: fake records for private and documentation ranges, not MaxMind data"

CITY_FILE = "test-City.mmdb"
COUNTRY_FILE = "test-Country.mmdb"
ASN_FILE = "test-ASN.mmdb"
FILES = (CITY_FILE, COUNTRY_FILE, ASN_FILE)


@dataclass(frozen=True, slots=True)
class Place:
    """Where a block is said to be; ``city=""`` is a country-level record, ``country=""`` continent-only."""

    label: str
    continent: str
    continent_name: str
    country: str = ""
    country_name: str = ""
    city: str = ""
    subdivision: tuple[str, str] | None = None  # (ISO 3166-2 suffix, English name)
    latitude: float | None = None
    longitude: float | None = None
    accuracy_radius: int = 0
    time_zone: str = ""
    in_eu: bool = False


@dataclass(frozen=True, slots=True)
class Network:
    asn: int
    org: str
    kind: str  # residential | mobile | hosting | cdn: only documentation, the DB has no such field


@dataclass(frozen=True, slots=True)
class Block:
    cidr: str
    place: Place | None  # None: in the ASN database only
    network: Network | None  # None: in the City/Country databases only


# Coordinates are the public city centres, rounded as GeoLite2 rounds them.
TOKYO = Place("JP Tokyo", "AS", "Asia", "JP", "Japan", "Tokyo", ("13", "Tokyo"),
              35.6895, 139.6917, 20, "Asia/Tokyo")
OSAKA = Place("JP Osaka", "AS", "Asia", "JP", "Japan", "Osaka", ("27", "Osaka"),
              34.6937, 135.5023, 20, "Asia/Tokyo")
JAPAN = Place("JP (country only)", "AS", "Asia", "JP", "Japan",
              latitude=35.69, longitude=139.69, accuracy_radius=500, time_zone="Asia/Tokyo")
TAIPEI = Place("TW Taipei", "AS", "Asia", "TW", "Taiwan", "Taipei", ("TPE", "Taipei"),
               25.0330, 121.5654, 20, "Asia/Taipei")
BANGKOK = Place("TH Bangkok", "AS", "Asia", "TH", "Thailand", "Bangkok", ("10", "Bangkok"),
                13.7563, 100.5018, 50, "Asia/Bangkok")
NEW_YORK = Place("US New York", "NA", "North America", "US", "United States", "New York",
                 ("NY", "New York"), 40.7128, -74.0060, 20, "America/New_York")
SAN_FRANCISCO = Place("US San Francisco", "NA", "North America", "US", "United States", "San Francisco",
                      ("CA", "California"), 37.7749, -122.4194, 10, "America/Los_Angeles")
FRANKFURT = Place("DE Frankfurt", "EU", "Europe", "DE", "Germany", "Frankfurt am Main", ("HE", "Hesse"),
                  50.1109, 8.6821, 20, "Europe/Berlin", in_eu=True)
SAO_PAULO = Place("BR São Paulo", "SA", "South America", "BR", "Brazil", "São Paulo", ("SP", "São Paulo"),
                  -23.5505, -46.6333, 50, "America/Sao_Paulo")
EUROPE = Place("EU (continent only)", "EU", "Europe")

# Private-use (64512+) and documentation (64496-64511, RFC 5398) ASNs only.
HOME_JP = Network(64500, "Example Home ISP JP", "residential")
MOBILE_JP = Network(64501, "Example Mobile JP", "mobile")
BROADBAND_TW = Network(64502, "Example Broadband TW", "residential")
TELECOM_TH = Network(64503, "Example Telecom TH", "residential")
CABLE_US = Network(64504, "Example Cable US", "residential")
NET_BR = Network(64506, "Example Net BR", "residential")
MOBILE_TH = Network(64507, "Example Mobile TH", "mobile")
CLOUD = Network(64510, "Example Cloud Hosting", "hosting")
CDN = Network(64511, "Example Anycast CDN", "cdn")
VPS = Network(65010, "Example VPS Provider", "hosting")

# 10.N.0.0/16 mirrors 2001:db8:N::/48 and 100.64+N.0.0/16 mirrors 2001:db8:64+N::/48, so a
# test author can pick the same place in either family.  Anything not listed is unknown
# (e.g. 10.0.0.0/16, 10.200.0.0/16, 2001:db8:ffff::/48).
BLOCKS: tuple[Block, ...] = (
    Block("10.1.0.0/17", TOKYO, HOME_JP),
    Block("10.1.128.0/17", OSAKA, HOME_JP),
    Block("10.2.0.0/16", TOKYO, CLOUD),
    Block("10.3.0.0/16", TAIPEI, BROADBAND_TW),
    Block("10.4.0.0/16", BANGKOK, TELECOM_TH),
    Block("10.5.0.0/17", NEW_YORK, CABLE_US),
    Block("10.5.128.0/17", SAN_FRANCISCO, CLOUD),
    Block("10.6.0.0/16", FRANKFURT, VPS),
    Block("10.7.0.0/16", SAO_PAULO, NET_BR),
    Block("10.8.0.0/16", JAPAN, HOME_JP),
    Block("10.9.0.0/16", EUROPE, None),
    Block("10.10.0.0/16", None, CDN),
    Block("100.64.0.0/16", TOKYO, MOBILE_JP),
    Block("100.65.0.0/16", OSAKA, MOBILE_JP),
    Block("100.66.0.0/16", BANGKOK, MOBILE_TH),
    Block("192.0.2.0/24", TOKYO, HOME_JP),
    Block("198.51.100.0/25", TAIPEI, BROADBAND_TW),
    Block("198.51.100.128/25", BANGKOK, TELECOM_TH),
    Block("203.0.113.0/25", FRANKFURT, VPS),
    Block("203.0.113.128/25", SAN_FRANCISCO, CLOUD),
    Block("2001:db8:1::/49", TOKYO, HOME_JP),
    Block("2001:db8:1:8000::/49", OSAKA, HOME_JP),
    Block("2001:db8:2::/48", TOKYO, CLOUD),
    Block("2001:db8:3::/48", TAIPEI, BROADBAND_TW),
    Block("2001:db8:4::/48", BANGKOK, TELECOM_TH),
    Block("2001:db8:5::/49", NEW_YORK, CABLE_US),
    Block("2001:db8:5:8000::/49", SAN_FRANCISCO, CLOUD),
    Block("2001:db8:6::/48", FRANKFURT, VPS),
    Block("2001:db8:7::/48", SAO_PAULO, NET_BR),
    Block("2001:db8:8::/48", JAPAN, HOME_JP),
    Block("2001:db8:9::/48", EUROPE, None),
    Block("2001:db8:a::/48", None, CDN),
    Block("2001:db8:64::/48", TOKYO, MOBILE_JP),
    Block("2001:db8:65::/48", OSAKA, MOBILE_JP),
    Block("2001:db8:66::/48", BANGKOK, MOBILE_TH),
)


def _names(en: str) -> dict[str, Any]:
    return {"en": en}


def _country_part(p: Place) -> dict[str, Any]:
    rec: dict[str, Any] = {"continent": {"code": p.continent, "names": _names(p.continent_name)}}
    if p.country:
        country: dict[str, Any] = {"iso_code": p.country, "names": _names(p.country_name)}
        if p.in_eu:
            country["is_in_european_union"] = True
        rec["country"] = country
        rec["registered_country"] = dict(country)
    return rec


def country_record(p: Place) -> dict[str, Any]:
    """A GeoLite2-Country record: continent, country and registered country."""
    return _country_part(p)


def city_record(p: Place) -> dict[str, Any]:
    """A GeoLite2-City record: the country record plus city, subdivision and location."""
    rec = _country_part(p)
    if p.city:
        rec["city"] = {"names": _names(p.city)}
    if p.subdivision is not None:
        rec["subdivisions"] = [{"iso_code": p.subdivision[0], "names": _names(p.subdivision[1])}]
    if p.latitude is not None and p.longitude is not None:
        # Explicit MMDB types: GeoLite2 stores these as double and uint16.  The writer's
        # "auto" typing would also let an int 100 share storage with a float 100.0.
        rec["location"] = {
            "accuracy_radius": MmdbU16(p.accuracy_radius),
            "latitude": MmdbF64(p.latitude),
            "longitude": MmdbF64(p.longitude),
            "time_zone": p.time_zone,
        }
    return rec


def asn_record(n: Network) -> dict[str, Any]:
    """A GeoLite2-ASN record (uint32 number, as in the real database)."""
    return {"autonomous_system_number": MmdbU32(n.asn), "autonomous_system_organization": n.org}


class _FixedEpochWriter(MMDBWriter):
    """The writer with a constant build epoch, so two builds give identical bytes."""

    def _build_meta(self) -> dict[str, Any]:
        meta = super()._build_meta()
        meta["build_epoch"] = BUILD_EPOCH
        return meta


def _tree_depth(cidr: str) -> int:
    """Prefix length in the IPv6 tree, where IPv4 sits below ::/96."""
    net = ipaddress.ip_network(cidr)
    return net.prefixlen + (96 if net.version == 4 else 0)


def _write(path: Path, database_type: str, rows: list[tuple[str, dict[str, Any]]]) -> None:
    writer = _FixedEpochWriter(
        ip_version=6,
        ipv4_compatible=True,  # IPv4 lives at ::/96, as in the GeoLite2 databases
        database_type=database_type,
        languages=["en"],
        description=DESCRIPTION,
    )
    # Shorter prefixes first: the writer splits an existing leaf for a more specific
    # network but would overwrite a subtree with a later, broader one.
    for cidr, record in sorted(rows, key=lambda r: _tree_depth(r[0])):
        writer.insert_network(IPSet([cidr]), record)
    # Write then rename, as geoipupdate does: a reader polling the folder never sees half a file.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        writer.to_db_file(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a service user must be able to read it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build(out_dir: Path, blocks: tuple[Block, ...] = BLOCKS) -> dict[str, Path]:
    """Write the three test databases into ``out_dir``; return them by file name.

    ``blocks`` is a parameter so a test can build a variant (one block changed) to
    check hot reload against a real file.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    # One record object per place/network: the writer then stores each record once.
    city_recs: dict[Place, dict[str, Any]] = {}
    country_recs: dict[Place, dict[str, Any]] = {}
    asn_recs: dict[Network, dict[str, Any]] = {}
    city_rows: list[tuple[str, dict[str, Any]]] = []
    country_rows: list[tuple[str, dict[str, Any]]] = []
    asn_rows: list[tuple[str, dict[str, Any]]] = []
    for b in blocks:
        if b.place is not None:
            city_rows.append((b.cidr, city_recs.setdefault(b.place, city_record(b.place))))
            country_rows.append((b.cidr, country_recs.setdefault(b.place, country_record(b.place))))
        if b.network is not None:
            asn_rows.append((b.cidr, asn_recs.setdefault(b.network, asn_record(b.network))))
    out = {CITY_FILE: out_dir / CITY_FILE, COUNTRY_FILE: out_dir / COUNTRY_FILE, ASN_FILE: out_dir / ASN_FILE}
    _write(out[CITY_FILE], "GeoLite2-City", city_rows)
    _write(out[COUNTRY_FILE], "GeoLite2-Country", country_rows)
    _write(out[ASN_FILE], "GeoLite2-ASN", asn_rows)
    return out


def render_table(blocks: tuple[Block, ...] = BLOCKS) -> str:
    """The Markdown table of blocks that geoip/README.md carries (a test keeps them equal)."""
    lines = [
        "| block | country | continent | city | lat, lon (radius km) | ASN | organisation | kind |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for b in blocks:
        p, n = b.place, b.network
        loc = "-"
        if p is not None and p.latitude is not None:
            loc = f"{p.latitude}, {p.longitude} ({p.accuracy_radius})"
        lines.append(
            "| " + " | ".join([
                f"`{b.cidr}`",
                (p.country or "-") if p else "-",
                p.continent if p else "-",
                (p.city or "-") if p else "-",
                loc,
                f"AS{n.asn}" if n else "-",
                n.org if n else "-",
                n.kind if n else "-",
            ]) + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    out_dir = Path(argv[1]) if len(argv) > 1 else HERE
    for path in build(out_dir).values():
        print(f"wrote {path} ({path.stat().st_size} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))

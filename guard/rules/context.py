"""What a rule condition can look at, gathered once per request before any rule runs.

Conditions are pure functions of a ``Context``.  The engine fills the context
from the request, the GeoIP lookup and one store batch; conditions declare in
``needs`` what they will read, so the batch asks for exactly that and nothing
else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from guard.geo import EMPTY, GeoInfo

if TYPE_CHECKING:
    from guard.engine.facts import RequestFacts


class Phase(IntEnum):
    """When a condition can be evaluated.  A rule runs in the latest phase of its conditions."""

    REQUEST = 0   # headers are in: path, method, headers, IP lists, geo
    LOGIN = 1     # a login body is parsed and the store batch is back: usernames, counters, history


KEY_KINDS = ("ip", "subnet", "asn", "country", "username", "device", "password", "global")


@dataclass(frozen=True, slots=True)
class CounterSpec:
    """One sliding-window counter, shared by every rule that names the same (key, metric, window)."""

    key: str       # one of KEY_KINDS
    metric: str    # attempts | failures | successes | distinct_usernames | distinct_ips
    window: float
    # Every login looks specs up in ``Context.counters`` a dozen times: the generated hash
    # built a tuple on each call, so it is computed once.
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.key, self.metric, self.window)))

    def __hash__(self) -> int:
        return self._hash

    @property
    def label(self) -> str:
        return f"{self.key}.{self.metric}.{self.window:g}s"


# The GeoIP answer type is the geo module's; the engine passes it through untouched.
GeoFacts = GeoInfo
NO_GEO = EMPTY


@dataclass(slots=True)
class AccountHistory:
    """What the guard remembers about one account (keyed by its username hash): never the username."""

    last_success: float = 0.0
    last_lat: float | None = None
    last_lon: float | None = None
    last_country: str = ""
    countries: dict[str, float] = field(default_factory=dict)   # country -> last success time
    subnets: dict[str, float] = field(default_factory=dict)     # subnet -> last success time

    MAX_SUBNETS = 16
    MAX_COUNTRIES = 32

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AccountHistory:
        h = cls()
        try:
            h.last_success = float(data.get("t", 0.0))
            lat, lon = data.get("lat"), data.get("lon")
            h.last_lat = None if lat is None else float(lat)
            h.last_lon = None if lon is None else float(lon)
            h.last_country = str(data.get("c", ""))
            h.countries = {str(k): float(v) for k, v in dict(data.get("cs", {})).items()}
            h.subnets = {str(k): float(v) for k, v in dict(data.get("ns", {})).items()}
        except (TypeError, ValueError):
            return cls()
        return h

    def to_json(self) -> dict[str, Any]:
        return {
            "t": self.last_success, "lat": self.last_lat, "lon": self.last_lon, "c": self.last_country,
            "cs": self.countries, "ns": self.subnets,
        }

    def record_success(self, now: float, subnet: str, geo: GeoFacts) -> None:
        self.last_success = now
        if geo.latitude is not None and geo.longitude is not None:
            self.last_lat, self.last_lon = geo.latitude, geo.longitude
        if geo.country:
            self.last_country = geo.country
            self.countries[geo.country] = now
            _trim(self.countries, self.MAX_COUNTRIES)
        self.subnets[subnet] = now
        _trim(self.subnets, self.MAX_SUBNETS)


def _trim(d: dict[str, float], cap: int) -> None:
    if len(d) > cap:
        for k, _ in sorted(d.items(), key=lambda kv: kv[1])[: len(d) - cap]:
            del d[k]


@dataclass(slots=True)
class Context:
    """Everything rules may read about one request.  Built by the engine, read by conditions."""

    req: RequestFacts
    now: float
    ip: str
    subnet: str
    geo: GeoFacts = NO_GEO
    login: str | None = None             # login endpoint id
    username: str | None = None          # normalised username (in memory only, never stored)
    user_key: str | None = None          # keyed hash of the username: what the store sees
    password_fp: str | None = None       # keyed hash of the password
    password_breached: bool = False
    body_error: str | None = None
    device: str | None = None            # device cookie id, when the browser sent a valid one
    device_known: bool = False
    counters: dict[CounterSpec, float] = field(default_factory=dict)
    account: AccountHistory | None = None
    flags: frozenset[str] = frozenset()  # "ip", "subnet", "account" flags that are set
    attack: bool = False
    honey: bool = False

"""Conditions on where the client is: country, continent, ASN, hosting networks, travel.

The per-account ones (impossible travel, a new country or subnet for this
account) compare against what the guard remembers of the account's earlier
*successful* logins, so failed attempts by an attacker never teach the guard
that an attacker's country is normal.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from guard.geo import haversine_km
from guard.rules.conditions.request import MAX_MATCH_INPUT, _compile
from guard.rules.context import Context, Phase
from guard.rules.regex import Matcher
from guard.rules.registry import NO_VALUES, CompileEnv, Condition, Values, register


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _codes(args: str | list[str], length: int, what: str) -> frozenset[str]:
    items = [args] if isinstance(args, str) else args
    out = set()
    for item in items:
        code = item.strip().upper()
        if len(code) != length or not code.isalpha():
            raise ValueError(f'expected {what} codes of {length} letters (got "{item}")')
        out.add(code)
    return frozenset(out)


class CountryIn(Condition):
    kind = "country"
    needs_geo = True

    def __init__(self, codes: frozenset[str]) -> None:
        self.codes = codes

    def test(self, ctx: Context) -> Values | None:
        c = ctx.geo.country
        return {"country": c} if c and c in self.codes else None


@register("country", str | list[str], "ISO 3166 country code(s) of the client IP")
def _country(args: str | list[str], env: CompileEnv) -> Condition:
    return CountryIn(_codes(args, 2, "ISO 3166-1 alpha-2 country"))


class ContinentIn(Condition):
    kind = "continent"
    needs_geo = True

    def __init__(self, codes: frozenset[str]) -> None:
        self.codes = codes

    def test(self, ctx: Context) -> Values | None:
        c = ctx.geo.continent
        return {"continent": c} if c and c in self.codes else None


@register("continent", str | list[str], "continent code(s): AF AN AS EU NA OC SA")
def _continent(args: str | list[str], env: CompileEnv) -> Condition:
    codes = _codes(args, 2, "continent")
    bad = codes - {"AF", "AN", "AS", "EU", "NA", "OC", "SA"}
    if bad:
        raise ValueError(f"unknown continent code(s) {', '.join(sorted(bad))}")
    return ContinentIn(codes)


class ASNIn(Condition):
    kind = "asn"
    needs_geo = True

    def __init__(self, asns: frozenset[int]) -> None:
        self.asns = asns

    def test(self, ctx: Context) -> Values | None:
        a = ctx.geo.asn
        return {"asn": a} if a and a in self.asns else None


def _asn_number(v: int | str) -> int:
    text = str(v).strip().upper().removeprefix("AS")
    if not text.isdigit() or not 0 < int(text) < 2**32:
        raise ValueError(f'expected an AS number such as 64500 or AS64500 (got "{v}")')
    return int(text)


@register("asn", int | str | list[int | str], "autonomous system number(s) of the client IP")
def _asn(args: int | str | list[int | str], env: CompileEnv) -> Condition:
    items = args if isinstance(args, list) else [args]
    return ASNIn(frozenset(_asn_number(a) for a in items))


class ASOrgMatches(Condition):
    kind = "asn_org"
    needs_geo = True

    def __init__(self, rx: Matcher) -> None:
        self.rx = rx

    def test(self, ctx: Context) -> Values | None:
        org = ctx.geo.asn_org
        return {"asn_org": org} if org and self.rx.search(org[:MAX_MATCH_INPUT]) else None


@register("asn_org", str, "a regular expression on the AS organisation name")
def _asn_org(args: str, env: CompileEnv) -> Condition:
    return ASOrgMatches(_compile(args))


class Hosting(Condition):
    kind = "hosting"
    needs_geo = True

    def __init__(self, want: bool, asns: frozenset[int]) -> None:
        self.want, self.asns = want, asns

    def test(self, ctx: Context) -> Values | None:
        hit = ctx.geo.asn in self.asns
        if hit == self.want:
            return {"asn": ctx.geo.asn} if hit else NO_VALUES
        return None

    def impossible(self) -> str | None:
        return "no hosting ASN list is configured (geoip.hosting_asns)" if self.want and not self.asns else None


@register("hosting", bool, "the client IP belongs to a hosting/datacenter ASN (geoip.hosting_asns)")
def _hosting(args: bool, env: CompileEnv) -> Condition:
    return Hosting(args, env.hosting_asns)


# ---- per-account geo ------------------------------------------------------------------------------

class TravelArgs(_Args):
    speed_kmh: float = Field(1000.0, gt=0, description="faster than an airliner is impossible")
    min_km: float = Field(300.0, ge=0, description="ignore jumps shorter than GeoIP's own error")


class ImpossibleTravel(Condition):
    kind = "impossible_travel"
    phase = Phase.LOGIN
    needs_account = True
    needs_geo = True

    def __init__(self, args: TravelArgs) -> None:
        self.speed, self.min_km = args.speed_kmh, args.min_km

    def test(self, ctx: Context) -> Values | None:
        acct, geo = ctx.account, ctx.geo
        if acct is None or acct.last_lat is None or acct.last_lon is None:
            return None
        if geo.latitude is None or geo.longitude is None:
            return None
        km = haversine_km(acct.last_lat, acct.last_lon, geo.latitude, geo.longitude)
        if km < self.min_km:
            return None
        hours = max(ctx.now - acct.last_success, 1.0) / 3600.0
        speed = km / hours
        if speed <= self.speed:
            return None
        return {"km": round(km), "kmh": round(speed), "from": acct.last_country, "to": geo.country}


@register("impossible_travel", TravelArgs, "distance since the last successful login, over time, above a speed")
def _travel(args: TravelArgs, env: CompileEnv) -> Condition:
    return ImpossibleTravel(args)


class NewArgs(_Args):
    days: float = Field(90.0, gt=0)


class NewCountry(Condition):
    """A country this account has not logged in from within ``days``; accounts without history never match."""

    kind = "new_country"
    phase = Phase.LOGIN
    needs_account = True
    needs_geo = True

    def __init__(self, days: float) -> None:
        self.seconds = days * 86400.0

    def test(self, ctx: Context) -> Values | None:
        acct, country = ctx.account, ctx.geo.country
        if acct is None or not acct.countries or not country:
            return None
        seen = acct.countries.get(country)
        if seen is not None and seen >= ctx.now - self.seconds:
            return None
        return {"country": country}


@register("new_country", NewArgs, "the client's country is new for this account (within days)")
def _new_country(args: NewArgs, env: CompileEnv) -> Condition:
    return NewCountry(args.days)


class NewSubnet(Condition):
    """A subnet this account has not logged in from within ``days``; accounts without history match."""

    kind = "new_subnet"
    phase = Phase.LOGIN
    needs_account = True

    def __init__(self, days: float) -> None:
        self.seconds = days * 86400.0

    def test(self, ctx: Context) -> Values | None:
        acct = ctx.account
        if acct is not None:
            seen = acct.subnets.get(ctx.subnet)
            if seen is not None and seen >= ctx.now - self.seconds:
                return None
        return {"subnet": ctx.subnet}


@register("new_subnet", NewArgs, "the client's subnet (/24, /64) is new for this account (within days)")
def _new_subnet(args: NewArgs, env: CompileEnv) -> Condition:
    return NewSubnet(args.days)

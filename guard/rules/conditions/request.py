"""Conditions on the request itself: login or not, path, method, headers, user agent, IP lists."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from guard.clientip import parse_ip
from guard.rules.context import Context
from guard.rules.regex import Matcher, compile_regex
from guard.rules.registry import NO_VALUES, CompileEnv, Condition, Values, register

# Attacker-controlled strings are cut before a regex sees them.  Rule regexes run on
# RE2 (guard.rules.regex), linear in this bound; the cut also bounds the UTF-8 copy.
MAX_MATCH_INPUT = 1024 * 1024  # RE2 is linear: the cut bounds work, not backtracking; padding hides nothing


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _compile(pattern: str) -> Matcher:
    return compile_regex(pattern)


# ---- login ----------------------------------------------------------------------------------------


class LoginIs(Condition):
    kind = "login"

    def __init__(self, want: bool, ids: frozenset[str]) -> None:
        self.want, self.ids = want, ids

    def test(self, ctx: Context) -> Values | None:
        if self.ids:
            return NO_VALUES if ctx.login in self.ids else None
        return NO_VALUES if (ctx.login is not None) == self.want else None


@register("login", bool | str | list[str], "true: login requests; false: other requests; ids: those endpoints")
def _login(args: bool | str | list[str], env: CompileEnv) -> Condition:
    if isinstance(args, bool):
        return LoginIs(args, frozenset())
    ids = frozenset([args] if isinstance(args, str) else args)
    return LoginIs(True, ids)


# ---- path -----------------------------------------------------------------------------------------


class PathArgs(_Args):
    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None

    @model_validator(mode="after")
    def _one(self) -> PathArgs:
        if sum(v is not None for v in (self.exact, self.prefix, self.regex)) != 1:
            raise ValueError("give exactly one of exact, prefix, regex")
        if self.regex is not None:
            _compile(self.regex)
        return self


class PathIs(Condition):
    kind = "path"

    def __init__(self, args: PathArgs) -> None:
        self.exact, self.prefix = args.exact, args.prefix
        self.rx = _compile(args.regex) if args.regex is not None else None

    def test(self, ctx: Context) -> Values | None:
        path = ctx.req.path
        if self.exact is not None:
            ok = path == self.exact
        elif self.prefix is not None:
            ok = path.startswith(self.prefix)
        else:
            assert self.rx is not None
            ok = self.rx.search(path[:MAX_MATCH_INPUT]) is not None
        return NO_VALUES if ok else None


def _exact_shorthand(value: Any) -> Any:
    if isinstance(value, str):
        return {"exact": value}
    if not isinstance(value, dict | PathArgs):
        raise ValueError("give a path (exact), or a mapping with one of exact, prefix, regex")
    return value


# One type, not the union ``str | PathArgs``: with a union pydantic reports every branch's error, so a
# bad regex also gave "Input should be a valid string", a second, spurious problem at the same line.
PathSpec = Annotated[PathArgs, BeforeValidator(_exact_shorthand, json_schema_input_type=str | PathArgs)]


@register("path", PathSpec, "the request path: a string (exact), or {exact|prefix|regex}")
def _path(args: PathArgs, env: CompileEnv) -> Condition:
    return PathIs(args)


# ---- method ---------------------------------------------------------------------------------------


class MethodIs(Condition):
    kind = "method"

    def __init__(self, methods: frozenset[str]) -> None:
        self.methods = methods

    def test(self, ctx: Context) -> Values | None:
        return NO_VALUES if ctx.req.method in self.methods else None


@register("method", str | list[str], "HTTP method(s)")
def _method(args: str | list[str], env: CompileEnv) -> Condition:
    items = [args] if isinstance(args, str) else args
    return MethodIs(frozenset(m.upper() for m in items))


# ---- headers --------------------------------------------------------------------------------------


class HeaderArgs(_Args):
    name: Annotated[str, Field(min_length=1, pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")]
    missing: bool | None = None
    equals: str | None = None
    matches: str | None = None

    @model_validator(mode="after")
    def _one(self) -> HeaderArgs:
        if sum(v is not None for v in (self.missing, self.equals, self.matches)) != 1:
            raise ValueError("give exactly one of missing, equals, matches")
        if self.matches is not None:
            _compile(self.matches)
        return self


class HeaderTest(Condition):
    kind = "header"

    def __init__(self, args: HeaderArgs) -> None:
        self.name = args.name
        self.missing, self.equals = args.missing, args.equals
        self.rx = _compile(args.matches) if args.matches is not None else None

    def test(self, ctx: Context) -> Values | None:
        value = ctx.req.headers.get(self.name)
        if self.missing is not None:
            ok = (value is None or value == "") == self.missing
        elif value is None:
            ok = False
        elif self.equals is not None:
            ok = value == self.equals
        else:
            assert self.rx is not None
            ok = self.rx.search(value[:MAX_MATCH_INPUT]) is not None
        return NO_VALUES if ok else None


@register("header", HeaderArgs, "a request header: {name, missing: true|false | equals | matches}")
def _header(args: HeaderArgs, env: CompileEnv) -> Condition:
    return HeaderTest(args)


# ---- user agent -----------------------------------------------------------------------------------

# Clients that announce themselves as tools, not browsers.  Real attackers fake
# browser UAs; this catches the lazy majority and costs one regex search.
TOOLING_UA = re.compile(
    r"(?i)\b(curl|wget|python-requests|python-urllib|python-httpx|aiohttp|httpx|go-http-client|java/|"
    r"okhttp|apache-httpclient|libwww-perl|pycurl|scrapy|node-fetch|axios|undici|postmanruntime|"
    r"insomnia|headlesschrome|phantomjs|hydra|sqlmap|nikto|masscan|zgrab|nuclei|httpie|powershell|"
    r"winhttp|ruby|php/|guzzle|colly|mechanize)\b"
)


class UAArgs(_Args):
    missing: bool | None = None
    tooling: bool | None = None
    matches: str | None = None

    @model_validator(mode="after")
    def _one(self) -> UAArgs:
        if sum(v is not None for v in (self.missing, self.tooling, self.matches)) != 1:
            raise ValueError("give exactly one of missing, tooling, matches")
        if self.matches is not None:
            _compile(self.matches)
        return self


class UserAgentTest(Condition):
    kind = "user_agent"

    def __init__(self, args: UAArgs) -> None:
        self.missing, self.tooling = args.missing, args.tooling
        self.rx = _compile(args.matches) if args.matches is not None else None

    def test(self, ctx: Context) -> Values | None:
        ua = ctx.req.headers.get("User-Agent") or ""
        if self.missing is not None:
            ok = (ua.strip() == "") == self.missing
        elif self.tooling is not None:
            ok = (TOOLING_UA.search(ua[:MAX_MATCH_INPUT]) is not None) == self.tooling
        else:
            assert self.rx is not None
            ok = self.rx.search(ua[:MAX_MATCH_INPUT]) is not None
        return NO_VALUES if ok else None


@register("user_agent", UAArgs, "the User-Agent: {missing: true} | {tooling: true} | {matches: regex}")
def _ua(args: UAArgs, env: CompileEnv) -> Condition:
    return UserAgentTest(args)


# ---- IP addresses and lists -----------------------------------------------------------------------


class IPIn(Condition):
    kind = "ip"

    def __init__(self, ipset: Any) -> None:
        self.ipset = ipset

    def test(self, ctx: Context) -> Values | None:
        return NO_VALUES if self.ipset.contains(ctx.ip) else None


@register("ip", str | list[str], "the client IP is in one of these addresses/CIDRs")
def _ip(args: str | list[str], env: CompileEnv) -> Condition:
    from guard.iplists import IPSet

    items = [args] if isinstance(args, str) else args
    for item in items:
        text = item.split("/", 1)[0]
        if parse_ip(text) is None:
            raise ValueError(f'not an IP address or CIDR (got "{item}")')
    return IPIn(IPSet.from_iterable(items))


class IPListIn(Condition):
    kind = "ip_list"

    def __init__(self, names: tuple[str, ...], env: CompileEnv) -> None:
        self.names = names
        self.env = env

    def test(self, ctx: Context) -> Values | None:
        lists = self.env.lists
        if lists is None:
            return None
        for name in self.names:
            ipset = lists.get(name)
            if ipset is not None and ipset.contains(ctx.ip):
                return {"list": name}
        return None


@register("ip_list", str | list[str], "the client IP is on one of these named lists")
def _ip_list(args: str | list[str], env: CompileEnv) -> Condition:
    names = (args,) if isinstance(args, str) else tuple(args)
    unknown = [n for n in names if n not in env.list_names]
    if unknown:
        known = ", ".join(sorted(env.list_names)) or "none are configured"
        raise ValueError(f"unknown IP list {', '.join(unknown)} (known: {known})")
    return IPListIn(names, env)

"""The guard.yaml schema: validated once at load, frozen, unknown keys rejected.

Every default here is the safe one for an operator who changes nothing; where a
default is a trade-off, the field description says which way it leans and why.
``load_config`` returns a ``Config`` or raises ``SourceError`` whose problems name
file, line, column and key.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from guard.challenge.settings import ChallengeSettings, keys_from_env
from guard.observe.settings import ObserveConfig
from guard.pii.settings import PIIConfig
from guard.rules.regex import compile_regex
from guard.store.redisurl import parse_redis_url
from guard.units import ByteSize, Duration, ListenAddress
from guard.yamlsource import Located, Problem, SourceError, load_file, load_text, problems_from_validation


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class TLSConfig(_Model):
    """TLS termination on a listener."""

    cert: Path = Field(description="PEM certificate chain")
    key: Path = Field(description="PEM private key")

    @model_validator(mode="after")
    def _files_exist(self) -> TLSConfig:
        for name in ("cert", "key"):
            path: Path = getattr(self, name)
            if not path.is_file():
                raise ValueError(f"{name}: file {str(path)!r} does not exist")
        return self


class UpstreamTLS(_Model):
    verify: bool = Field(True, description="verify the upstream's certificate (https upstreams)")
    ca_bundle: Path | None = Field(None, description="PEM bundle of CAs to trust instead of the system store")
    server_name: str | None = Field(None, description="SNI / hostname to verify, when it differs from the URL")


class AdminConfig(_Model):
    listen: ListenAddress = Field(
        "127.0.0.1:9090", validate_default=True, description="admin listener (health, metrics, API)"
    )
    token: str | None = Field(
        None, description="bearer token for the admin API; or GUARD_ADMIN_TOKEN in the environment"
    )


class StoreConfig(_Model):
    backend: Literal["memory", "redis"] = "memory"
    url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="one server: redis://, rediss:// or unix:// URL; Sentinel: "
        "redis+sentinel://[user:password@]host:port[,host:port...]/<master>[/<db>] (the credentials are the "
        "master's); Cluster: redis+cluster://[user:password@]host:port[,host:port...] (a batch is atomic per "
        "slot, see guard/store/cluster.py); or GUARD_REDIS_URL",
    )
    fail_open: bool = Field(
        True,
        description="when the store is unreachable: true lets logins through (logged), "
        "false answers login requests with 503",
    )
    key_prefix: str = Field("lg:", description="prefix of every key, so several guards can share one Redis")
    timeout: Duration = Field(0.25, gt=0, description="per-operation timeout against Redis")
    retry_after: Duration = Field(
        0.5, gt=0, description="after a store failure, how long requests skip the store before retrying"
    )
    max_keys: int = Field(
        1_000_000, ge=1000, description="memory backend: at most this many keys; keys not used lately go first"
    )
    max_members: int = Field(
        10_000, ge=10, description="memory backend: distinct-member sets stop growing at this size"
    )
    pool_size: int = Field(32, ge=1, le=1024, description="Redis connections per worker")

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://", "unix://", "redis+sentinel://", "redis+cluster://")):
            raise ValueError(f'expected a redis://, rediss:// or unix:// URL (got "{_redact(v)}")')
        try:
            parse_redis_url(v)
        except ValueError as exc:
            raise ValueError(f'{exc} (got "{_redact(v)}")') from None
        return v


class Limits(_Model):
    max_header_size: ByteSize = Field(16 * 1024, ge=1024, le=1024 * 1024, description="request line + headers")
    max_body_size: ByteSize = Field(
        1024 * 1024, ge=1024, description="bodies the guard must read (logins): larger gets 413"
    )
    max_connections: int = Field(10_000, ge=1, description="open client connections per worker")
    max_pending_upstream: int = Field(
        1024, ge=1, description="requests waiting for an upstream connection before 503"
    )
    upstream_connections: int = Field(256, ge=1, description="keep-alive pool size to the upstream per worker")
    max_queue_time: Duration = Field(
        2.0, gt=0, le=60,
        description="a request not started this long after its head arrived gets a 503 at once: under "
        "overload the guard serves fresh requests rather than ones their clients are giving up on",
    )
    max_loop_lag: Duration = Field(
        0.1, ge=0, le=10,
        description="while the event loop has run this late on every tick for about 75 ms, new requests "
        "get a 503 at once, so the admitted ones finish in bounded time (0: off)",
    )


class Timeouts(_Model):
    client_header: Duration = Field(10.0, gt=0, description="time to receive the request line and headers")
    client_body: Duration = Field(30.0, gt=0, description="time to receive a body the guard reads")
    client_idle: Duration = Field(75.0, gt=0, description="keep-alive idle time between requests")
    upstream_connect: Duration = Field(5.0, gt=0, description="connect to the upstream (else 504)")
    upstream_read: Duration = Field(60.0, gt=0, description="wait for upstream response headers (else 504)")
    upstream_idle: Duration = Field(
        300.0, gt=0, description="longest silence while streaming a response body"
    )
    shutdown_grace: Duration = Field(30.0, ge=0, description="SIGTERM: how long in-flight requests may finish")


class LogConfig(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    requests: bool = Field(True, description="one JSON line per request decision")
    file: Path | None = Field(None, description="write JSON lines here instead of stderr")


class Brand(_Model):
    name: str = Field("loginguard", description="shown on the guard's own pages")
    color: str = Field("#1f6feb", pattern=r"^#[0-9a-fA-F]{3,8}$")
    support: str = Field("", description="support text shown on error pages")


def _regex(value: str) -> str:
    """Refused at load unless RE2 compiles it: these patterns see request paths and Location headers."""
    compile_regex(value)   # ValueError with the reason; pydantic locates it
    return value


Regex = Annotated[str, AfterValidator(_regex)]


class JsonOutcome(_Model):
    pointer: str = Field(pattern=r"^(/.*)?$", description="JSON pointer into the response body, e.g. /ok")
    success: str | int | bool = Field(description="the value that means success")


class OutcomeConfig(_Model):
    """How the upstream says a login worked.  The first signal that is configured and present decides.

    The default fits the common legacy form: a redirect (302/303) after a good
    password, the form again (200) after a bad one.
    """

    success_status: tuple[int, ...] = (301, 302, 303, 307, 308)
    failure_status: tuple[int, ...] = (200, 400, 401, 403, 422)
    success_location: Regex | None = Field(None, description="a redirect is a success only if Location matches")
    failure_location: Regex | None = Field(None, description="a redirect whose Location matches is a failure")
    success_body: str | None = Field(
        None, min_length=1, description="text in the first 64 KB of the body that means success"
    )
    failure_body: str | None = Field(
        None, min_length=1, description="text in the first 64 KB of the body that means failure"
    )
    success_cookie: str | None = Field(None, min_length=1, description="a Set-Cookie of this name means success")
    json_field: JsonOutcome | None = Field(None, description="a field of a JSON response body")

    @model_validator(mode="after")
    def _statuses(self) -> OutcomeConfig:
        both = set(self.success_status) & set(self.failure_status)
        if both:
            raise ValueError(f"status codes {sorted(both)} are in both success_status and failure_status")
        bad = [c for c in (*self.success_status, *self.failure_status) if not 100 <= c <= 599]
        if bad:
            raise ValueError(f"not HTTP status codes: {bad}")
        return self


class LoginEndpoint(_Model):
    """A login form of the upstream: where it is, where the username is, how success looks."""

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # match before path: the path's validator reads it, so a bad regex is located at the path's line
    match: Literal["exact", "prefix", "regex"] = "exact"
    path: str = Field(description="path to match (regex: the whole path, on RE2)")
    methods: tuple[str, ...] = ("POST",)
    username: str = Field(
        "username", min_length=1,
        description="form or multipart field name; a JSON pointer (/user/email) for JSON bodies",
    )
    password: str | None = Field(
        "password", description="field holding the password (only ever used as a keyed fingerprint)"
    )
    charset: str | None = Field(
        None, description="body charset when the request does not say (default utf-8); e.g. shift_jis"
    )
    outcome: OutcomeConfig = OutcomeConfig()
    notify: bool = Field(True, description="tell the account owner of logins from a new device or place")

    @field_validator("path")
    @classmethod
    def _path_regex(cls, v: str, info: ValidationInfo) -> str:
        return _regex(v) if info.data.get("match") == "regex" else v

    @field_validator("methods")
    @classmethod
    def _upper(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(m.upper() for m in v)

    @field_validator("charset")
    @classmethod
    def _charset(cls, v: str | None) -> str | None:
        from guard.engine.loginbody import usable_charset

        if v is not None and usable_charset(v) is None:
            raise ValueError(f"unknown or unusable charset {v!r} (use utf-8, shift_jis, euc-jp, iso-8859-1, ...)")
        return v

    @model_validator(mode="after")
    def _pointers(self) -> LoginEndpoint:
        from guard.engine.loginbody import parse_pointer

        for name in ("username", "password"):
            value = getattr(self, name)
            if value and value.startswith("/"):
                try:
                    parse_pointer(value)
                except ValueError as exc:
                    raise ValueError(f"{name}: bad JSON pointer {value!r}: {exc}") from None
        return self


class UsernameConfig(_Model):
    """How usernames become one key per account, so aliases and case tricks count together."""

    case: Literal["lower", "preserve"] = "lower"
    strip: bool = Field(True, description="remove surrounding white space (and fold inner runs)")
    nfkc: bool = Field(True, description="Unicode NFKC: full-width and half-width forms count as one")
    strip_domains: tuple[str, ...] = Field(
        (), description="e-mail domains that map to the bare id: alice@corp.example -> alice"
    )
    aliases: Path | None = Field(None, description="CSV file of alias,canonical pairs (e-mail vs member id)")


def _cidr(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f'not an IP address or CIDR (got "{value}")') from None
    return value


Cidr = Annotated[str, AfterValidator(_cidr), Field(description="an IP address or CIDR")]


class IPListConfig(_Model):
    """A named IP list: from a file (reloaded when it changes) or a URL (refreshed with conditional GET)."""

    file: Path | None = None
    url: str | None = Field(None, pattern=r"^https?://")
    refresh: Duration = Field(3600.0, ge=60, description="URL lists: how often to check for a new version")
    max_bytes: ByteSize = Field(64 * 1024 * 1024, ge=1024)

    @model_validator(mode="after")
    def _one_source(self) -> IPListConfig:
        if (self.file is None) == (self.url is None):
            raise ValueError("give exactly one of file or url")
        if self.file is not None and not self.file.is_file():
            raise ValueError(f"file {str(self.file)!r} does not exist")
        return self


class GeoIPConfig(_Model):
    city: Path | None = Field(None, description="GeoLite2/GeoIP2 City database (.mmdb)")
    country: Path | None = Field(None, description="Country database, when no City database is given")
    asn: Path | None = Field(None, description="GeoLite2 ASN database")
    hosting_asns: Path | None = Field(None, description="text file of hosting/datacenter AS numbers")
    reload_interval: Duration = Field(60.0, ge=1, description="how often to look for updated databases")

    @model_validator(mode="after")
    def _files_exist(self) -> GeoIPConfig:
        for name in ("city", "country", "asn", "hosting_asns"):
            path: Path | None = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: file {str(path)!r} does not exist")
        return self

    @property
    def enabled(self) -> bool:
        return any(p is not None for p in (self.city, self.country, self.asn))


class ScoringConfig(_Model):
    """Anomaly scoring: the summed score of matching rules takes the highest action whose threshold it reaches."""

    log: float | None = Field(None, gt=0)
    challenge: float | None = Field(50.0, gt=0)
    block: float | None = Field(100.0, gt=0)


class AttackConfig(_Model):
    """The global failure-rate spike detector: what catches a botnet where every IP stays under every limit.

    The baseline is learned from the guard's own counters: the failure rate over
    ``baseline`` is the normal; the rate over ``window`` is now.  An attack is on
    while now exceeds ``factor`` times normal (and ``min_failures``), and stays on
    for ``hold`` after that, so rules keyed on it do not flap.
    """

    enabled: bool = True
    window: Duration = Field(300.0, gt=0)
    baseline: Duration = Field(6 * 3600.0, gt=0)
    factor: float = Field(3.0, gt=1)
    min_failures: int = Field(5, ge=1)
    min_sources: int = Field(
        4, ge=1, description="failures must come from at least this many subnets: one user's typos are no attack"
    )
    floor_per_hour: float = Field(
        12.0, ge=0, description="the baseline is never taken as lower than this many failures per hour"
    )
    hold: Duration = Field(900.0, ge=0)

    @model_validator(mode="after")
    def _windows(self) -> AttackConfig:
        if self.baseline <= self.window:
            raise ValueError("baseline must be longer than window")
        return self


class BansConfig(_Model):
    history: Duration = Field(30 * 86400.0, gt=0, description="how long earlier bans count toward escalation")
    poll_interval: Duration = Field(0.5, ge=0.05, le=10, description="how often each worker syncs the ban list")


class Config(_Model):
    """guard.yaml"""

    listen: ListenAddress = Field("127.0.0.1:8080", validate_default=True, description="public listener host:port")
    upstream: str = Field(description="the protected service: http:// or https:// URL")
    upstream_tls: UpstreamTLS = UpstreamTLS()
    host_header: str = Field(
        "keep",
        description='"keep" forwards the client\'s Host, "upstream" uses the upstream URL\'s host, '
        "anything else is sent as the Host",
    )
    tls: TLSConfig | None = Field(None, description="terminate TLS on the public listener")
    forwarded_header: Literal["x-forwarded-for", "forwarded"] = Field(
        "x-forwarded-for",
        description="the one header your trusted proxies write; the other is the client's and is ignored",
    )
    proxy_protocol: bool = Field(
        False, description="expect a PROXY protocol v1 or v2 header on every public connection"
    )
    proxy_protocol_from: tuple[Cidr, ...] | None = Field(
        None,
        description="with proxy_protocol: the balancers' addresses; a connection from any other peer is closed "
        "unread, since its PROXY header would choose its own client address.  Unset: any peer is believed "
        "(guard check warns)",
    )
    trusted_proxies: tuple[Cidr, ...] = Field(
        (), description="peers whose X-Forwarded-For / Forwarded headers are believed"
    )
    admin: AdminConfig = AdminConfig()
    store: StoreConfig = StoreConfig()
    limits: Limits = Limits()
    timeouts: Timeouts = Timeouts()
    log: LogConfig = LogConfig()
    brand: Brand = Brand()
    logins: tuple[LoginEndpoint, ...] = ()
    usernames: UsernameConfig = UsernameConfig()
    rules: tuple[Path, ...] = Field((), description="rule files or folders, loaded in order")
    ip_lists: dict[str, IPListConfig] = Field({}, description="named IP lists that rules refer to")
    geoip: GeoIPConfig = GeoIPConfig()
    scoring: ScoringConfig = ScoringConfig()
    attack: AttackConfig = AttackConfig()
    bans: BansConfig = BansConfig()
    honey_accounts: tuple[str, ...] = Field(
        (), description="decoy usernames: any login attempt with one flags its source"
    )
    breached_passwords: Path | None = Field(
        None, description="sorted SHA-1 list (Pwned Passwords format), searched without loading it"
    )
    secret_key: str | None = Field(
        None, min_length=16,
        description="keys username and password fingerprints; or GUARD_SECRET_KEY; default: generated and "
        "shared through the store",
    )
    shadow: bool = Field(False, description="decide and log, but let every request through")
    challenge: ChallengeSettings | None = Field(
        None, description="the second factor behind the challenge action; without it, challenge blocks"
    )
    observe: ObserveConfig = ObserveConfig()
    forced_reset_url: str | None = Field(
        None, pattern=r"^(https?://|/)",
        description="accounts put on the forced-reset list (guard reset add) are sent here on their next "
        "successful login, instead of into their session",
    )
    pii: PIIConfig = Field(
        PIIConfig(), description="PII in pages: tokenized in hidden fields by default, swapped back on submit"
    )
    observe_score: float = Field(
        30.0, ge=0, description="exposure ledger: a successful login whose rule score reaches this is flagged"
    )
    state_dir: Path = Field(
        Path("var"),
        description="where the memory store keeps what must survive a restart (fingerprint key, exposure "
        "ledger); relative to the config file",
    )

    @field_validator("proxy_protocol_from")
    @classmethod
    def _proxy_protocol_from(cls, v: tuple[str, ...] | None, info: ValidationInfo) -> tuple[str, ...] | None:
        if v is not None and info.data.get("proxy_protocol") is False:
            raise ValueError("only applies with proxy_protocol: true (without it no PROXY header is read at all)")
        if v == ():
            raise ValueError("empty: no peer could connect; list the balancers' addresses, or leave it out")
        return v

    @field_validator("upstream")
    @classmethod
    def _upstream_url(cls, v: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f'expected an http:// or https:// URL with a host (got "{v}")')
        if parts.query or parts.fragment:
            raise ValueError("the upstream URL cannot have a query or fragment")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _redis_needs_a_key(self) -> Config:
        if self.store.backend == "redis" and not self.secret_key:
            raise ValueError(
                "store.backend redis needs secret_key (or GUARD_SECRET_KEY): a key kept in Redis would let "
                "whoever reads Redis reverse the username and password fingerprints stored next to it"
            )
        return self

    @model_validator(mode="after")
    def _unique_logins(self) -> Config:
        seen: set[str] = set()
        for ep in self.logins:
            if ep.id in seen:
                raise ValueError(f'duplicate login endpoint id "{ep.id}"')
            seen.add(ep.id)
        return self


def _redact(url: str) -> str:
    """Hide a password in a URL before it reaches an error message."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


redact_url = _redact

# Environment variables that override config keys: secrets stay out of the file.
ENV_OVERRIDES: Mapping[str, tuple[str, ...]] = {
    "GUARD_REDIS_URL": ("store", "url"),
    "GUARD_ADMIN_TOKEN": ("admin", "token"),
    "GUARD_UPSTREAM": ("upstream",),
    "GUARD_LISTEN": ("listen",),
    "GUARD_SECRET_KEY": ("secret_key",),
}


def _apply_env(doc: Located, env: Mapping[str, str]) -> None:
    if not isinstance(doc.data, dict):
        return
    if isinstance(doc.data.get("challenge"), dict):
        doc.data["challenge"] = keys_from_env(doc.data["challenge"], env)
    for var, path in ENV_OVERRIDES.items():
        value = env.get(var)
        if value is None or value == "":
            continue
        node: Any = doc.data
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = value


def _resolve_paths(cfg_dir: Path, data: Any) -> None:
    """Relative file paths in the config are relative to the config file, not the cwd."""
    if not isinstance(data, dict):
        return
    lists = data.get("ip_lists")
    if isinstance(lists, dict):
        for spec in lists.values():
            if isinstance(spec, dict) and isinstance(spec.get("file"), str) and not os.path.isabs(spec["file"]):
                spec["file"] = str(cfg_dir / spec["file"])
    obs = data.get("observe")
    if isinstance(obs, dict):
        for section, key in (("decision_log", "path"), ("ledger", "path"), (None, "multiproc_dir")):
            holder = obs.get(section) if section else obs
            if isinstance(holder, dict):
                v = holder.get(key)
                if isinstance(v, str) and v and not os.path.isabs(v):
                    holder[key] = str(cfg_dir / v)
    sd = data.get("state_dir", "var")
    if isinstance(sd, str) and not os.path.isabs(sd):
        data["state_dir"] = str(cfg_dir / sd)
    bp = data.get("breached_passwords")
    if isinstance(bp, str) and not os.path.isabs(bp):
        data["breached_passwords"] = str(cfg_dir / bp)
    rules = data.get("rules")
    if isinstance(rules, list):
        data["rules"] = [str(cfg_dir / r) if isinstance(r, str) and not os.path.isabs(r) else r for r in rules]
    for section, keys in (
        ("tls", ("cert", "key")), ("upstream_tls", ("ca_bundle",)), ("log", ("file",)), ("usernames", ("aliases",)),
        ("geoip", ("city", "country", "asn", "hosting_asns")),
    ):
        sub = data.get(section)
        if isinstance(sub, dict):
            for k in keys:
                v = sub.get(k)
                if isinstance(v, str) and v and not os.path.isabs(v):
                    sub[k] = str(cfg_dir / v)


def validate(doc: Located, env: Mapping[str, str] | None = None, base_dir: Path | None = None) -> Config:
    env = os.environ if env is None else env
    if not isinstance(doc.data, dict):
        raise SourceError([Problem(doc.file, 1, 1, "", "the config must be a mapping of keys to values")])
    _apply_env(doc, env)
    if base_dir is not None:
        _resolve_paths(base_dir, doc.data)
    try:
        return Config.model_validate(doc.data)
    except ValidationError as exc:
        raise SourceError(problems_from_validation(doc, exc)) from None


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read, interpolate ``${VAR}``, apply GUARD_* overrides, validate."""
    doc = load_file(path, env)
    return validate(doc, env, Path(path).resolve().parent)


def load_config_or_report(path: str | os.PathLike[str]) -> Config | None:
    """``load_config`` for the command line: every located problem on stderr and None, never a traceback."""
    try:
        return load_config(path)
    except SourceError as exc:
        for p in exc.problems:
            print(p, file=sys.stderr)
        return None


def load_config_text(text: str, file: str = "<string>", env: Mapping[str, str] | None = None) -> Config:
    return validate(load_text(text, file, env), env)

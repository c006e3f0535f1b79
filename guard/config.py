"""The guard.yaml schema: validated once at load, frozen, unknown keys rejected.

Every default here is the safe one for an operator who changes nothing; where a
default is a trade-off, the field description says which way it leans and why.
``load_config`` returns a ``Config`` or raises ``SourceError`` whose problems name
file, line, column and key.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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
    listen: ListenAddress = Field("127.0.0.1:9090", validate_default=True, description="admin listener (health, metrics, API)")
    token: str | None = Field(
        None, description="bearer token for the admin API; or GUARD_ADMIN_TOKEN in the environment"
    )


class StoreConfig(_Model):
    backend: Literal["memory", "redis"] = "memory"
    url: str = Field("redis://127.0.0.1:6379/0", description="redis:// or rediss:// URL; or GUARD_REDIS_URL")
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
        1_000_000, ge=1000, description="memory backend: at most this many keys; least recently used go first"
    )
    max_members: int = Field(
        10_000, ge=10, description="memory backend: distinct-member sets stop growing at this size"
    )
    pool_size: int = Field(32, ge=1, le=1024, description="Redis connections per worker")

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f'expected a redis://, rediss:// or unix:// URL (got "{_redact(v)}")')
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


class LoginEndpoint(_Model):
    """A login form of the upstream.  Detection of the username and the outcome come with the rules."""

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    path: str = Field(description="path to match")
    match: Literal["exact", "prefix", "regex"] = "exact"
    methods: tuple[str, ...] = ("POST",)

    @field_validator("methods")
    @classmethod
    def _upper(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(m.upper() for m in v)


def _cidr(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f'not an IP address or CIDR (got "{value}")') from None
    return value


Cidr = Annotated[str, AfterValidator(_cidr), Field(description="an IP address or CIDR")]


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
    proxy_protocol: bool = Field(
        False, description="expect a PROXY protocol v1 or v2 header on every public connection"
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
    rules: tuple[Path, ...] = Field((), description="rule files or folders, loaded in order")
    shadow: bool = Field(False, description="decide and log, but let every request through")

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
}


def _apply_env(doc: Located, env: Mapping[str, str]) -> None:
    if not isinstance(doc.data, dict):
        return
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
    rules = data.get("rules")
    if isinstance(rules, list):
        data["rules"] = [str(cfg_dir / r) if isinstance(r, str) and not os.path.isabs(r) else r for r in rules]
    for section, keys in (("tls", ("cert", "key")), ("upstream_tls", ("ca_bundle",)), ("log", ("file",))):
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


def load_config_text(text: str, file: str = "<string>", env: Mapping[str, str] | None = None) -> Config:
    return validate(load_text(text, file, env), env)

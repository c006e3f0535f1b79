"""The ``challenge:`` section of guard.yaml: validated once, frozen, unknown keys rejected.

Each field's description names the threat it addresses, so an operator who
loosens a limit knows what they are trading.  Secrets (sealing keys, SMTP and
webhook credentials) may come from the environment instead of the file:
``GUARD_CHALLENGE_KEYS`` (comma-separated) through ``keys_from_env``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, model_validator

from guard.units import ByteSize, Duration

KEY_BYTES = 32
"""AES-256: a sealing key is exactly 32 random bytes."""

ENV_KEYS = "GUARD_CHALLENGE_KEYS"


class _Model(BaseModel):
    # hide_input_in_errors: a validation error must not print a key or a password it refused.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, hide_input_in_errors=True)


def decode_key(text: str) -> bytes:
    """A 32-byte key from base64 (standard or URL-safe, padding optional); the error never echoes it."""
    raw = text.strip()
    try:
        key = base64.urlsafe_b64decode(raw.replace("+", "-").replace("/", "_") + "=" * (-len(raw) % 4))
    except (binascii.Error, ValueError):
        raise ValueError(
            "a challenge key must be base64 (generate one with guard.challenge.keys.new_key())"
        ) from None
    if len(key) != KEY_BYTES:
        raise ValueError(f"a challenge key must decode to {KEY_BYTES} bytes (got {len(key)})")
    return key


def _split_keys(value: Any) -> Any:
    """Accept a list or one comma-separated string (the form an environment variable has)."""
    if isinstance(value, str):
        return [part for part in (p.strip() for p in value.split(",")) if part]
    return value


def _check_keys(keys: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
    seen: set[bytes] = set()
    for k in keys:
        raw = decode_key(k.get_secret_value())
        if raw in seen:
            raise ValueError("the same key is listed twice")
        seen.add(raw)
    return keys


Keys = Annotated[tuple[SecretStr, ...], BeforeValidator(_split_keys), AfterValidator(_check_keys)]

_PATH = re.compile(r"^/(?!/)[A-Za-z0-9._~!$&'()*+,;=:@/%-]*$")


def _local_path(value: str) -> str:
    """A path on this origin: ``/x`` but never ``//evil.example`` (an open redirect)."""
    if not _PATH.fullmatch(value) or "\\" in value:  # fullmatch: "$" would let a final newline in
        raise ValueError(f'expected a path on this site such as /login (got "{value}")')
    return value


LocalPath = Annotated[str, AfterValidator(_local_path)]

_LOGO = re.compile(r"^data:image/(png|jpeg|gif|webp|svg\+xml);base64,[A-Za-z0-9+/]+=*$")


class Limit(_Model):
    """At most ``count`` events per ``window`` (a fixed window from the first event)."""

    count: int = Field(ge=1)
    window: Duration = Field(gt=0)


class GuessBudget(Limit):
    """``Limit`` with ceilings: a budget an operator can loosen, never switch off."""

    count: int = Field(ge=1, le=1000)
    window: Duration = Field(gt=0, le=86400)


class SendLimits(_Model):
    """Sending is rate-limited so the guard cannot be turned into a spam cannon against owners."""

    per_account: Limit = Field(
        Limit(count=5, window=900.0),
        description="codes actually sent to one account; over it, sending stops silently (never shown, so "
        "it cannot reveal that a password was right); bounds mail/SMS bombing of an owner",
    )
    per_source: Limit = Field(
        Limit(count=20, window=900.0),
        description="holds and resends per client address, counted for right and wrong passwords alike; "
        "over it the client is told to wait; bounds an attacker's use of the guard as a sender",
    )


class EmailSettings(_Model):
    """SMTP delivery of codes (aiosmtplib)."""

    host: str = Field(description="SMTP relay host")
    port: int = Field(587, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = Field(
        "starttls",
        description="starttls (required, not opportunistic: a stripped STARTTLS must fail, not "
        "fall back to clear text), tls (implicit, port 465), none (tests and local relays only)",
    )
    username: str | None = None
    password: SecretStr | None = None
    sender: str = Field(description="From: address", pattern=r"^[^@\s<>]+@[^@\s<>]+$")
    timeout: Duration = Field(10.0, gt=0, le=120, description="whole send; a hung relay cannot hold a task")
    verify_certs: bool = True
    lookup_url: str | None = Field(
        None,
        pattern=r"^https?://",
        description="when the login id is not an e-mail address: GET this URL ({login} and {account} are "
        "replaced, URL-quoted) and read the address at lookup_pointer",
    )
    lookup_pointer: str = Field("/email", pattern=r"^(/.*)?$")
    lookup_token: SecretStr | None = Field(
        None, description="sent as Authorization: Bearer to the lookup URL"
    )
    lookup_timeout: Duration = Field(3.0, gt=0, le=60)


class WebhookSettings(_Model):
    """A signed JSON POST (SMS gateways, chat apps, a company push service)."""

    url: str = Field(pattern=r"^https?://")
    secret: SecretStr = Field(
        description="HMAC-SHA256 key; receivers verify X-Guard-Signature over timestamp and body, so a "
        "forged or replayed request to the gateway is refused",
        min_length=16,
    )
    timeout: Duration = Field(5.0, gt=0, le=60)
    include_login: bool = Field(
        True,
        description="send the login id as typed (the gateway usually needs it to find the phone or chat)",
    )
    health_url: str | None = Field(
        None, pattern=r"^https?://", description="GET for the periodic health check"
    )


class TotpSettings(_Model):
    """RFC 6238 codes from the user's authenticator app, for enrolled accounts."""

    enabled: bool = True
    digits: Literal[6, 8] = 6
    period: int = Field(30, ge=15, le=120)
    algorithm: Literal["sha1", "sha256", "sha512"] = "sha1"
    window: int = Field(
        1, ge=0, le=2, description="steps accepted either side of now (clock skew); each step widens guessing"
    )
    issuer: str = Field("loginguard", description="shown in the authenticator app")
    self_enrol: bool = Field(
        False,
        description="right after a passed step-up challenge, offer accounts without an app to set one up "
        "(QR code). Off by default: whoever passes an e-mail or webhook code can bind an app, and the app "
        "then comes first in channels.order, so someone holding the password and the mailbox for ten "
        "minutes would keep a second factor of their own. Never offered in before_upstream mode (the "
        "password is unchecked there) nor to an account that already has an app (no replacing it)",
    )
    self_enrol_ttl: Duration = Field(
        600.0,
        ge=60,
        le=1800,
        description="how long the offer waits; the upstream's held answer waits with it, and is gone after",
    )


class ChannelSettings(_Model):
    order: tuple[Literal["totp", "email", "webhook"], ...] = Field(
        ("totp", "email", "webhook"),
        description="the first channel that can reach the account is used; totp only for enrolled accounts",
    )
    email: EmailSettings | None = None
    webhook: WebhookSettings | None = None
    totp: TotpSettings = TotpSettings()
    health_interval: Duration = Field(
        30.0,
        ge=1,
        description="how often channels are probed; a failed probe shows every new challenge the "
        "'could not send' page (probes, not logins, decide, so the state reveals nothing about a password)",
    )


class BrandSettings(_Model):
    title: str = Field("Sign-in verification", max_length=120, pattern=r"^[^\r\n\x00]*$")
    name: str = Field("loginguard", max_length=120, pattern=r"^[^\r\n\x00]*$")
    logo: str | None = Field(
        None,
        description="a data: URL (png, jpeg, gif, webp, svg+xml); no external assets, so nothing leaks "
        "the visit to a third party and the CSP stays closed",
    )
    color: str = Field("#1f6feb", pattern=r"^#[0-9a-fA-F]{6}$")
    support: str = Field("", max_length=500, description="plain text shown on every page (escaped)")

    @model_validator(mode="after")
    def _logo_is_data_url(self) -> BrandSettings:
        if self.logo is not None and not _LOGO.match(self.logo):
            raise ValueError("logo must be a data:image/...;base64, URL")
        return self


class DeviceSettings(_Model):
    """Trusted-device cookies, issued after a passed challenge."""

    enabled: bool = True
    idle: Duration = Field(
        30 * 86400.0,
        gt=0,
        description="a device unused this long is new again; bounds a stolen cookie's life",
    )
    lifetime: Duration = Field(90 * 86400.0, gt=0, description="absolute limit since the first challenge")
    rotate_after: Duration = Field(86400.0, gt=0, description="reissue the cookie when older than this")

    @model_validator(mode="after")
    def _order(self) -> DeviceSettings:
        if not self.rotate_after <= self.idle <= self.lifetime:
            raise ValueError("expected rotate_after <= idle <= lifetime")
        return self


class NotifySettings(_Model):
    enabled: bool = True
    limit: Limit = Field(Limit(count=3, window=3600.0), description="notifications per account")
    timezone: str = Field("UTC", description="IANA zone for the time in the message, e.g. Asia/Tokyo")


class ChallengeSettings(_Model):
    """Second factor on risky logins, without a validity oracle."""

    keys: Keys = Field(
        min_length=1,
        description="base64 32-byte keys, newest first; the first seals, all open (rotation); or "
        "GUARD_CHALLENGE_KEYS. Protects held session cookies and TOTP secrets in a store dump",
    )
    mode: Literal["step_up", "before_upstream"] = Field(
        "step_up",
        description="step_up: the upstream checks the password first; before_upstream: the "
        "request is held and forwarded only after the code (logins with side effects)",
    )
    hold_ttl: Duration = Field(600.0, ge=30, le=3600, description="how long a held answer waits for its code")
    code_ttl: Duration = Field(300.0, ge=30, le=1800, description="a code's life; short limits guessing time")
    code_digits: int = Field(6, ge=6, le=10, description="10^digits codes; below 6 is guessable in max_tries")
    max_tries: int = Field(5, ge=1, le=10, description="wrong codes per hold before it is destroyed")
    max_resends: int = Field(3, ge=0, le=10, description="new codes per hold")
    account_guesses: GuessBudget = Field(
        GuessBudget(count=10, window=900.0),
        description="wrong codes per account over all its holds; max_tries alone would give an attacker "
        "max_tries guesses on every hold they open. Over it, verification for the account is refused "
        "(the page of a wrong code, so nothing is learnt) and the source is flagged like an exhausted hold. "
        "Counted for right and wrong passwords alike (no oracle), so whoever knows a login id can spend it: "
        "a trusted device skips the challenge and is not locked out",
    )
    max_held_body: ByteSize = Field(
        256 * 1024,
        ge=1024,
        le=8 * 1024 * 1024,
        description="larger held bodies are dropped (status and headers kept) rather than refused, so an "
        "oversized failure page cannot make the two outcomes look different",
    )
    path: LocalPath = Field("/.loginguard/challenge", description="where the code form posts")
    restart_path: LocalPath = Field("/", description="'sign in again' link on terminal pages")
    send_limits: SendLimits = SendLimits()
    channels: ChannelSettings = ChannelSettings()
    brand: BrandSettings = BrandSettings()
    languages: tuple[Literal["en", "ja"], ...] = Field(("en", "ja"), min_length=1)
    default_language: Literal["en", "ja"] = "en"
    devices: DeviceSettings = DeviceSettings()
    notify: NotifySettings = NotifySettings()
    dispatch_delay: Duration = Field(
        0.02,
        ge=0,
        le=1,
        description="codes go out this long after the page is answered, so sending (done only for right "
        "passwords) cannot slow that answer down measurably",
    )

    @model_validator(mode="after")
    def _ttls(self) -> ChallengeSettings:
        if self.code_ttl > self.hold_ttl:
            raise ValueError("code_ttl cannot be longer than hold_ttl")
        if self.default_language not in self.languages:
            raise ValueError("default_language must be one of languages")
        return self


def keys_from_env(data: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """``data`` with ``keys`` taken from ``GUARD_CHALLENGE_KEYS`` when that is set (secrets out of files)."""
    out = dict(data)
    value = env.get(ENV_KEYS)
    if value:
        out["keys"] = value
    return out

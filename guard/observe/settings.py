"""The ``observe:`` section of guard.yaml: decision log, exposure ledger, dashboard, attack webhook.

Validated once at load like the rest of the config (frozen, unknown keys are
errors).  Defaults lean towards what is safe to ship to a log pipeline: the
decision log keeps usernames as keyed hashes, and nothing here can switch on
logging of passwords, cookies or query strings (observers never receive them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from guard.units import ByteSize, Duration


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class DecisionLogSettings(_Model):
    """One JSON line per request decision, for Loki / Elasticsearch."""

    enabled: bool = True
    path: Path | None = Field(
        None, description="file to write (rotated by size); unset: stderr, for container log shipping"
    )
    max_bytes: ByteSize = Field(
        100 * 1024 * 1024, ge=4096, description="rotate the file when it would grow past this size"
    )
    backups: int = Field(5, ge=0, le=1000, description="rotated files kept: path.1 (newest) .. path.N")
    usernames: Literal["hash", "omit"] = Field(
        "hash",
        description="hash: the keyed username hash (joins with the ledger and the store, reveals nothing); "
        "omit: no user field at all.  Clear usernames never reach the log: observers do not receive them",
    )
    flush_interval: Duration = Field(0.5, gt=0, le=60, description="how often buffered lines are written")
    queue: int = Field(
        100_000, ge=100,
        description="lines buffered between flushes; past this, lines are dropped and counted ",
    )


class LedgerSettings(_Model):
    """Where exposure-ledger rows live: they must survive a restart, so never only in memory."""

    backend: Literal["auto", "file", "redis"] = Field(
        "auto", description="auto: Redis when store.backend is redis, else the file"
    )
    path: Path | None = Field(
        None,
        description="append-only JSON-lines file (file backend); default: <state_dir>/exposure-ledger.jsonl",
    )
    max_entries: int = Field(
        500_000, ge=100, description="oldest rows are dropped past this many (the file is compacted)"
    )
    key: str = Field("ledger", pattern=r"^[A-Za-z0-9:_.-]{1,64}$",
                     description="Redis stream name (after the prefix)")
    flush_interval: Duration = Field(1.0, gt=0, le=60)


class DashboardSettings(_Model):
    refresh: Duration = Field(2.0, ge=0.25, le=60, description="seconds between live updates (SSE, polling)")
    recent: int = Field(2000, ge=10, le=100_000, description="recent decisions kept for the API and the page")
    series: int = Field(900, ge=60, le=86_400, description="seconds of per-second history kept")
    top_capacity: int = Field(
        500, ge=10, le=100_000, description="keys kept per top-talker table (IPs, subnets, ...): caps memory"
    )
    top_window: Duration = Field(900.0, ge=10, description="top talkers count the last one to two windows")


class WebhookSettings(_Model):
    """A Slack-compatible incoming webhook told when an attack starts and ends."""

    url: str | None = Field(
        None, pattern=r"^https?://",
        description="incoming-webhook URL; it is a secret: use ${VAR} interpolation, it is never logged",
    )
    timeout: Duration = Field(5.0, gt=0, le=60)
    min_interval: Duration = Field(
        60.0, ge=0, description="at most one start and one end message per this many seconds (flapping guard)"
    )


class ObserveConfig(_Model):
    """guard.yaml ``observe:``."""

    decision_log: DecisionLogSettings = DecisionLogSettings()
    ledger: LedgerSettings = LedgerSettings()
    dashboard: DashboardSettings = DashboardSettings()
    webhook: WebhookSettings = WebhookSettings()
    multiproc_dir: Path | None = Field(
        None,
        description="shared folder of the worker processes for metrics and live views; "
        "default: PROMETHEUS_MULTIPROC_DIR (set by the supervisor)",
    )

    @field_validator("multiproc_dir")
    @classmethod
    def _dir(cls, v: Path | None) -> Path | None:
        if v is not None and v.exists() and not v.is_dir():
            raise ValueError(f"not a directory: {str(v)!r}")
        return v


def observe_settings(config: Any) -> ObserveConfig:
    """The ``observe`` section of a ``Config``, or the defaults while ``Config`` has none."""
    found = getattr(config, "observe", None)
    return found if isinstance(found, ObserveConfig) else ObserveConfig()

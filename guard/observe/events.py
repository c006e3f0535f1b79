"""What the guard tells its observers: one seam between deciding and reporting.

The engine and the adapters call an ``Observer``; metrics, the decision log, the
dashboard's live feed, top talkers and the exposure ledger are observers.  The
calls are synchronous and must be cheap (they run on the request path): an
observer that needs I/O buffers and flushes on its own schedule.  Nothing passed
here is a password or a PII value: usernames arrive as keyed hashes, and the
exposure ledger receives the login id already sealed (encrypted) by the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # annotations only: the engine imports this module, so a runtime import would be a cycle
    from guard.engine.decision import Decision
    from guard.engine.facts import RequestFacts


@dataclass(frozen=True, slots=True)
class RequestEvent:
    """One finished request, as the decision log and metrics see it."""

    ts: float
    req: RequestFacts
    decision: Decision
    status: int
    upstream_s: float | None
    overhead_s: float
    user_key: str | None = None      # keyed hash of the normalised username (logins only)
    country: str = ""
    asn: int = 0
    score: float = 0.0


@dataclass(frozen=True, slots=True)
class ExposureEntry:
    """A valid password presented from a flagged source: a row of the exposure ledger."""

    ts: float
    user_key: str
    login_sealed: str                # the login id, AES-GCM sealed: only the report can open it
    ip: str
    country: str
    asn: int
    flags: tuple[str, ...]           # why the source is flagged: "score", "banned", "list:<name>", "honey", ...
    seen: bool                       # True: the upstream's success reached the source; False: the guard held it
    endpoint: str = ""
    rules: tuple[str, ...] = field(default=())


class Observer(Protocol):
    def request(self, event: RequestEvent) -> None: ...

    def ban(self, subject: str, seconds: float, reason: str, removed: bool = False) -> None: ...

    def challenge(self, event: str, channel: str = "") -> None:
        """``issued``, ``passed``, ``failed``, ``expired``, ``exhausted``, ``send_failed``."""

    def pii(self, path: str, kind: str, mode: str, count: int) -> None: ...

    def pii_page(self, path: str, scanned: bool) -> None:
        """An HTML body under the PII policy: read by the rewriter, or passed on unread."""

    def tamper(self, path: str, field_name: str) -> None: ...

    def store_op(self, seconds: float, ok: bool) -> None: ...

    def reload(self, ok: bool) -> None: ...

    def attack(self, active: bool, failures: float, rate_per_min: float, baseline_per_min: float) -> None: ...

    def exposure(self, entry: ExposureEntry) -> None: ...


class NullObserver:
    """Observes nothing: the default, and what ``guard test`` uses."""

    def request(self, event: RequestEvent) -> None:
        return None

    def ban(self, subject: str, seconds: float, reason: str, removed: bool = False) -> None:
        return None

    def challenge(self, event: str, channel: str = "") -> None:
        return None

    def pii(self, path: str, kind: str, mode: str, count: int) -> None:
        return None

    def pii_page(self, path: str, scanned: bool) -> None:
        return None

    def tamper(self, path: str, field_name: str) -> None:
        return None

    def store_op(self, seconds: float, ok: bool) -> None:
        return None

    def reload(self, ok: bool) -> None:
        return None

    def attack(self, active: bool, failures: float, rate_per_min: float, baseline_per_min: float) -> None:
        return None

    def exposure(self, entry: ExposureEntry) -> None:
        return None


class Fanout:
    """Several observers behind one; an observer that raises is isolated from the others."""

    def __init__(self, *observers: Observer) -> None:
        self.observers = list(observers)

    def _each(self, name: str, *args: object, **kw: object) -> None:
        for o in self.observers:
            try:
                getattr(o, name)(*args, **kw)
            except Exception:  # an observer bug must never fail a request
                import logging

                logging.getLogger("guard.observe").exception("observer %s failed", type(o).__name__)

    def request(self, event: RequestEvent) -> None:
        self._each("request", event)

    def ban(self, subject: str, seconds: float, reason: str, removed: bool = False) -> None:
        self._each("ban", subject, seconds, reason, removed=removed)

    def challenge(self, event: str, channel: str = "") -> None:
        self._each("challenge", event, channel)

    def pii(self, path: str, kind: str, mode: str, count: int) -> None:
        self._each("pii", path, kind, mode, count)

    def pii_page(self, path: str, scanned: bool) -> None:
        self._each("pii_page", path, scanned)

    def tamper(self, path: str, field_name: str) -> None:
        self._each("tamper", path, field_name)

    def store_op(self, seconds: float, ok: bool) -> None:
        self._each("store_op", seconds, ok)

    def reload(self, ok: bool) -> None:
        self._each("reload", ok)

    def attack(self, active: bool, failures: float, rate_per_min: float, baseline_per_min: float) -> None:
        self._each("attack", active, failures, rate_per_min, baseline_per_min)

    def exposure(self, entry: ExposureEntry) -> None:
        self._each("exposure", entry)

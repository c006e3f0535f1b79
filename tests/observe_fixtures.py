"""Factories for the observability tests: events, a real engine, an admin app with the API installed."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from guard.config import Config, load_config_text
from guard.engine import Engine
from guard.engine.decision import PASS, Action, Decision, Reason
from guard.engine.facts import RequestFacts
from guard.http.admin import Health, make_app
from guard.http.adminapi import AdminDeps, install
from guard.observe.events import ExposureEntry, RequestEvent
from guard.observe.hub import Observability
from guard.observe.settings import ObserveConfig
from guard.store.memory import MemoryStore

TOKEN = "t0ken-for-tests-0123456789abcdef"

RULES = """
rules:
  - id: many-users
    description: many usernames from one ip
    when:
      velocity: {key: ip, metric: distinct_usernames, window: 10m, over: 3}
    action: ban
    ban: {duration: 10m}
  - id: admin-path
    description: no one gets /admin
    when: {path: {prefix: /admin}}
    action: block
"""


def make_config(tmp_path: Path, rules: str = RULES) -> Config:
    (tmp_path / "rules.yaml").write_text(rules)
    text = (
        "upstream: http://127.0.0.1:9\n"
        f"rules: [{tmp_path / 'rules.yaml'}]\n"
        "logins:\n  - {id: login, path: /login}\n"
        "attack: {enabled: false}\n"
        f"state_dir: {tmp_path / 'state'}\n"
    )
    return load_config_text(text, env={})


def make_engine(tmp_path: Path) -> Engine:
    return Engine(make_config(tmp_path), MemoryStore("t:", 10_000, 1000), secret=b"k" * 32)


def event(
    ip: str = "198.51.100.7",
    action: Action = Action.PASS,
    rules: tuple[str, ...] = (),
    status: int = 200,
    path: str = "/",
    login: str | None = None,
    outcome: str | None = None,
    user_key: str | None = None,
    country: str = "",
    asn: int = 0,
    ts: float | None = None,
    shadow: bool = False,
    upstream_s: float | None = None,
    overhead_s: float = 0.00004,
    **req: Any,
) -> RequestEvent:
    facts = RequestFacts(client_ip=ip, method="POST" if login else "GET", path=path, login=login, **req)
    facts.outcome = outcome
    if action is Action.PASS and not rules:
        decision = PASS
    else:
        reasons = tuple(Reason(r, f"{r} fired", 10.0, {"count": 5}) for r in rules)
        decision = Decision(action, reasons, status=status if action.blocks else 0, shadow=shadow)
    return RequestEvent(
        ts=time.time() if ts is None else ts, req=facts, decision=decision, status=status,
        upstream_s=upstream_s if upstream_s is not None else None if action.blocks else 0.012,
        overhead_s=overhead_s, user_key=user_key,
        country=country, asn=asn,
    )


def exposure(user: str, country: str, seen: bool, ts: float, sealed: str = "", ip: str = "203.0.113.5",
             flags: tuple[str, ...] = ("score",)) -> ExposureEntry:
    return ExposureEntry(ts=ts, user_key=user, login_sealed=sealed, ip=ip, country=country, asn=64500,
                         flags=flags, seen=seen, endpoint="login")


def observability(tmp_path: Path, **extra: Any) -> Observability:
    settings = ObserveConfig.model_validate({
        "decision_log": {"path": str(tmp_path / "decisions.log")},
        "ledger": {"path": str(tmp_path / "ledger.jsonl"), "flush_interval": 0.05},
        "dashboard": {"refresh": 0.25},
        **extra,
    })
    return Observability(settings, multiproc=False)


def admin_app(engine: Engine, obs: Observability, token: str | None = TOKEN,
              reload: Callable[[], Awaitable[None]] | None = None) -> web.Application:
    async def no_reload() -> None:
        return None

    app = make_app(Health(engine.store))
    install(app, AdminDeps.from_hub(obs, engine, token, reload or no_reload, version="test"))
    return app

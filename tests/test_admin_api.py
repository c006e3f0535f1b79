"""The admin API over a real Engine: auth on every route, bans, decisions, top, rules, reload, OpenAPI."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import openapi_spec_validator
import pyotp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from guard.challenge import Challenges, ChallengeSettings
from guard.challenge.channels.totp import record_key
from guard.challenge.keys import new_key
from guard.engine import Engine
from guard.engine.decision import Action
from guard.http.adminapi import DISABLED, account_key
from guard.observe.hub import Observability
from guard.store import Get
from guard.yamlsource import Problem, SourceError
from tests.observe_fixtures import TOKEN, admin_app, event, exposure, make_engine, observability

Client = TestClient[web.Request, web.Application]
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    eng = make_engine(tmp_path)
    await eng.start()
    yield eng
    await eng.close()


@pytest.fixture
async def obs(tmp_path: Path, engine: Engine) -> AsyncIterator[Observability]:
    o = observability(tmp_path)
    await o.start(engine)
    yield o
    await o.close()


@pytest.fixture
async def client(aiohttp_client: Callable[..., Awaitable[Client]], engine: Engine,
                 obs: Observability) -> Client:
    return await aiohttp_client(admin_app(engine, obs))


def protected_routes(app: web.Application) -> list[tuple[str, str]]:
    """Every (method, path) the router serves, from the router itself, so a new route cannot slip by."""
    out = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter", "")
        if path in ("/healthz", "/readyz") or route.method == "HEAD":
            continue
        path = path.replace("{subject:.+}", "ip%3A1.2.3.4").replace("{login:.+}", "alice%40example.com")
        out.append((route.method, path))
    return out


async def test_every_protected_route_refuses_without_or_with_a_wrong_token(client: Client) -> None:
    routes = protected_routes(client.app)
    assert len(routes) >= 14 and ("GET", "/metrics") in routes and ("GET", "/dashboard") in routes
    for method, path in routes:
        async with client.request(method, path) as resp:
            assert resp.status == 401, (method, path)
            if path != "/dashboard":
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        for header in (f"Bearer {TOKEN}x", "Bearer " + TOKEN[:-1], "Bearer nope"):
            async with client.request(method, path, headers={"Authorization": header}) as resp:
                assert resp.status == 403, (method, path, header)
    for probe in ("/healthz", "/readyz", ):
        async with client.get(probe) as resp:
            assert resp.status == 200
    async with client.get("/no/such/route") as resp:      # unknown paths reveal nothing without a token
        assert resp.status == 401


async def test_no_token_configured_disables_the_api(aiohttp_client: Callable[..., Awaitable[Client]],
                                                    engine: Engine, obs: Observability,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GUARD_ADMIN_TOKEN", raising=False)
    client = await aiohttp_client(admin_app(engine, obs, token=None))
    for method, path in protected_routes(client.app):
        async with client.request(method, path, headers=AUTH) as resp:
            assert resp.status == 403, path
            assert (await resp.json())["error"] == DISABLED
    async with client.get("/healthz") as resp:
        assert resp.status == 200


async def test_token_from_the_environment(aiohttp_client: Callable[..., Awaitable[Client]], engine: Engine,
                                          obs: Observability, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GUARD_ADMIN_TOKEN", "env-token-0123456789")
    client = await aiohttp_client(admin_app(engine, obs, token=None))
    async with client.get("/api/health", headers={"Authorization": "Bearer env-token-0123456789"}) as resp:
        assert resp.status == 200


async def test_bans_add_list_remove(client: Client, engine: Engine) -> None:
    body = {"subject": "ip:203.0.113.7", "seconds": 3600, "reason": "manual: stuffing"}
    async with client.post("/api/bans", json=body, headers=AUTH) as resp:
        assert resp.status == 201
        assert (await resp.json())["ban"]["subject"] == "ip:203.0.113.7"
    v6 = {"subject": "2001:db8::/64", "seconds": 60}
    async with client.post("/api/bans", json=v6, headers=AUTH) as resp:
        assert resp.status == 201
    assert engine.bans.lookup("203.0.113.7") is not None
    async with client.get("/api/bans", headers=AUTH) as resp:
        bans = (await resp.json())["bans"]
    assert {b["subject"] for b in bans} == {"ip:203.0.113.7", "net:2001:db8::/64"}
    assert next(b for b in bans if b["subject"] == "ip:203.0.113.7")["reason"] == "manual: stuffing"
    async with client.delete("/api/bans/ip%3A203.0.113.7", headers=AUTH) as resp:
        assert await resp.json() == {"subject": "ip:203.0.113.7", "removed": True}
    async with client.delete("/api/bans/net%3A2001%3Adb8%3A%3A%2F64", headers=AUTH) as resp:
        assert (await resp.json())["removed"] is True
    async with client.delete("/api/bans/ip%3A203.0.113.7", headers=AUTH) as resp:
        assert (await resp.json())["removed"] is False
    assert await engine.store.bans(engine.clock.now()) == []
    for bad in ({"subject": "not-an-ip", "seconds": 5}, {"subject": "1.2.3.4", "seconds": -1},
                {"subject": "1.2.3.4", "seconds": 5, "extra": 1}):
        async with client.post("/api/bans", json=bad, headers=AUTH) as resp:
            assert resp.status == 400, bad


async def test_decisions_top_rules(client: Client, obs: Observability) -> None:
    f = obs.fanout
    for _ in range(3):
        f.request(event(ip="203.0.113.9", action=Action.BLOCK, rules=("admin-path",), status=403,
                        path="/admin", country="JP", asn=64500))
    f.request(event(ip="198.51.100.1", login="login", outcome="failure", user_key="f" * 32, country="TW"))
    f.request(event(ip="192.0.2.1"))
    async with client.get("/api/decisions?action=block&limit=2", headers=AUTH) as resp:
        rows = (await resp.json())["decisions"]
    assert len(rows) == 2 and all(r["action"] == "block" and r["rules"] == ["admin-path"] for r in rows)
    async with client.get("/api/decisions?ip=192.0.2.1", headers=AUTH) as resp:
        assert [r["action"] for r in (await resp.json())["decisions"]] == ["pass"]
    async with client.get("/api/decisions?rule=admin-path", headers=AUTH) as resp:
        assert len((await resp.json())["decisions"]) == 3
    async with client.get("/api/top?by=country", headers=AUTH) as resp:
        top = (await resp.json())["top"]
    assert top[0] == {"key": "JP", "count": 3, "name": "Japan"}
    async with client.get("/api/top?by=username", headers=AUTH) as resp:
        assert (await resp.json())["top"] == [{"key": "f" * 16, "count": 1}]
    async with client.get("/api/top?by=password", headers=AUTH) as resp:
        assert resp.status == 400
    async with client.get("/api/rules", headers=AUTH) as resp:
        rules = {r["id"]: r for r in (await resp.json())["rules"]}
    assert rules["admin-path"]["hits"] == {"enforce": 3, "shadow": 0}
    assert rules["many-users"]["hits"] == {"enforce": 0, "shadow": 0}
    assert rules["many-users"]["action"] == "ban"


async def test_reload_ok_and_rejected(aiohttp_client: Callable[..., Awaitable[Client]], engine: Engine,
                                      obs: Observability) -> None:
    calls: list[int] = []

    async def reload() -> None:
        calls.append(1)
        if len(calls) > 1:
            raise SourceError([Problem("rules.yaml", 3, 5, "rules[0].when", "unknown condition")])

    client = await aiohttp_client(admin_app(engine, obs, reload=reload))
    async with client.post("/api/reload", headers=AUTH) as resp:
        assert resp.status == 200
    async with client.post("/api/reload", headers=AUTH) as resp:
        assert resp.status == 422
        assert "unknown condition" in (await resp.json())["problems"][0]
    async with client.get("/metrics", headers=AUTH) as resp:
        text = await resp.text()
    values = {(s.name, tuple(s.labels.items())): s.value
              for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert values[("guard_rule_reloads_total", (("result", "ok"),))] == 1
    assert values[("guard_rule_reloads_total", (("result", "error"),))] == 1


async def test_health_exposures_summary_metrics(client: Client, obs: Observability, engine: Engine) -> None:
    obs.fanout.exposure(exposure("u1", "JP", True, 1000.0))
    obs.fanout.exposure(exposure("u2", "TH", False, 1001.0))
    await engine.ban("ip:203.0.113.66", 600, "many-users")
    async with client.get("/api/health", headers=AUTH) as resp:
        health = await resp.json()
    assert health["status"] == "ok" and health["store"] == "up" and health["attack"] is False
    async with client.get("/api/exposures", headers=AUTH) as resp:
        ex = await resp.json()
    assert (ex["accounts"], ex["seen"], ex["withheld"]) == (2, 1, 1)
    assert ex["countries"][0]["name"] in ("Japan", "Thailand")
    async with client.get("/api/summary", headers=AUTH) as resp:
        summary = await resp.json()
    assert summary["bans_total"] == 1 and summary["bans"][0]["subject"] == "ip:203.0.113.66"
    async with client.get("/metrics", headers=AUTH) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        names = {f.name for f in text_string_to_metric_families(await resp.text())}
    assert {"guard_requests", "guard_bans", "guard_overhead_seconds"} <= names
    # the engine told the observers about the ban: metrics count it under its rule id
    assert "guard_bans_total{reason=\"many-users\"} 1.0" in obs.metrics.render().decode()


async def test_stream_sends_summary_events(client: Client, obs: Observability) -> None:
    obs.fanout.request(event(ip="203.0.113.9", action=Action.BLOCK, rules=("admin-path",), status=403))
    async with client.get("/api/stream", headers=AUTH) as resp:
        assert resp.headers["Content-Type"] == "text/event-stream"
        events: list[dict[str, Any]] = []
        buf = b""
        async with asyncio.timeout(5):
            while len(events) < 2:
                buf += await resp.content.readany()
                while b"\n\n" in buf:
                    chunk, buf = buf.split(b"\n\n", 1)
                    data = [ln[5:].strip() for ln in chunk.split(b"\n") if ln.startswith(b"data:")]
                    if data:
                        events.append(json.loads(b"\n".join(data)))
    assert events[0]["top"]["ip"][0]["key"] == "203.0.113.9"
    assert events[0]["recent"][0]["action"] == "block"


async def test_openapi_document_is_valid_and_complete(client: Client) -> None:
    async with client.get("/api/openapi.json", headers=AUTH) as resp:
        doc = await resp.json()
    openapi_spec_validator.validate(doc)
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    for route in client.app.router.routes():
        if route.method == "HEAD":
            continue
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter", "")
        path = path.replace("{subject:.+}", "{subject}").replace("{login:.+}", "{login}")
        assert (route.method, path) in documented, (route.method, path)


async def test_dashboard_needs_the_token_but_offers_a_form(client: Client) -> None:
    async with client.get("/dashboard") as resp:
        assert resp.status == 401
        form = await resp.text()
        csp = resp.headers["Content-Security-Policy"]
    assert "<form" in form and "sessionStorage" in form and "api/" not in form.split("<script>")[0]
    assert "default-src 'none'" in csp and "unsafe-inline" not in csp and "connect-src 'self'" in csp
    async with client.get("/dashboard", headers=AUTH) as resp:
        assert resp.status == 200
        page = await resp.text()
    assert "/api/stream" in page and "http://" not in page and "https://" not in page   # no CDN
    assert " on" + "click=" not in page


async def test_totp_enrolment_put_and_delete(client: Client, engine: Engine) -> None:
    """PUT imports an authenticator secret (sealed, under the login's account key), DELETE removes it."""
    async with client.put("/api/totp/alice%40example.com", json={"secret": SECRET}, headers=AUTH) as resp:
        assert resp.status == 409  # no challenge configured: nothing to enrol into
    svc = Challenges(ChallengeSettings.model_validate({"keys": [new_key()]}), engine.store)
    engine.challenges = svc
    try:
        key = account_key(engine, "alice@example.com")
        async with client.put("/api/totp/alice%40example.com", json={"secret": SECRET}, headers=AUTH) as resp:
            assert resp.status == 200 and await resp.json() == {"enrolled": True}
        now = engine.clock.now()
        assert await svc.enrolments.check(key, pyotp.TOTP(SECRET).at(now), now, commit=True)
        (blob,) = await engine.store.execute([Get(record_key(key))], now)
        assert blob is not None and SECRET.encode() not in blob and base64.b32decode(SECRET) not in blob  # sealed
        for body in ({"secret": "not base32!"}, {"secret": SECRET, "extra": 1}, {"secret": "GEZDGNBV"}, [SECRET],
                     {"secret": "A" * 300}):
            async with client.put("/api/totp/alice%40example.com", json=body, headers=AUTH) as resp:
                assert resp.status == 400, body
                assert SECRET not in await resp.text()
        async with client.put("/api/totp/" + "a" * 321, json={"secret": SECRET}, headers=AUTH) as resp:
            assert resp.status == 400
        async with client.delete("/api/totp/alice%40example.com", headers=AUTH) as resp:
            assert await resp.json() == {"removed": True}
        assert not await svc.enrolments.enrolled(key, now)
        async with client.delete("/api/totp/alice%40example.com", headers=AUTH) as resp:
            assert await resp.json() == {"removed": False}
    finally:
        engine.challenges = None
        await svc.aclose()

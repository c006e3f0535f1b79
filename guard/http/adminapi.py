"""The admin API, ``/metrics`` and the dashboard, installed onto the admin listener's app.

Auth is one middleware in front of everything but the probes: a bearer token
(``admin.token`` or ``GUARD_ADMIN_TOKEN``), compared in constant time so the
answer's timing says nothing about how much of a guess was right.  No header
is 401, a wrong token 403, and with no token configured every protected route
is 403: an admin API must never be open because someone forgot a setting.
Unknown paths answer the same way, so probing without a token maps nothing.

The dashboard needs the token too, but a browser's first navigation cannot
send a header.  So ``GET /dashboard`` without one is refused (401) with a small
form as the body; it keeps the token in ``sessionStorage`` and fetches the
real page with the header.  Both pages run under a strict CSP (inline code
only by hash, connections only to this origin).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web

from guard.engine.core import Engine
from guard.http.adminspec import document
from guard.observe.countries import country_name
from guard.observe.events import Observer
from guard.observe.ledger import Ledger
from guard.observe.live import DIMENSIONS, LiveView, filter_recent
from guard.observe.metrics import CONTENT_TYPE, Metrics
from guard.observe.reports import summary as ledger_summary
from guard.observe.settings import ObserveConfig
from guard.observe.share import LiveShare
from guard.store.base import StoreError

if TYPE_CHECKING:
    from guard.observe.hub import Observability

log = logging.getLogger("guard.admin")

PUBLIC = frozenset({"/healthz", "/readyz"})
MAX_STREAMS = 32
MAX_BAN_SECONDS = 10 * 365 * 86400.0
MAX_LOGIN = 320  # the longest e-mail address (RFC 5321 limits), and so the longest login id we accept
MAX_SECRET = 256  # base32 characters: 1280 bits, far past any authenticator's secret
LEDGER_CACHE_S = 15.0
DISABLED = "admin API disabled: set admin.token"
HOSTILE = frozenset({"block", "ban", "challenge", "tarpit", "unavailable"})


@dataclass(slots=True)
class AdminDeps:
    """What the admin routes need; built once per worker by whoever builds the admin app."""

    engine: Engine
    live: LiveView
    metrics: Metrics
    ledger: Ledger
    reload: Callable[[], Awaitable[None]]
    token: str | None
    observe: ObserveConfig = field(default_factory=ObserveConfig)
    observer: Observer | None = None     # told about reloads made through the API (bans: the engine tells)
    share: LiveShare | None = None       # the guard-wide live view under --workers N
    version: str = ""

    @classmethod
    def from_hub(cls, hub: Observability, engine: Engine, token: str | None,
                 reload: Callable[[], Awaitable[None]], version: str = "") -> AdminDeps:
        """From a ``guard.observe.hub.Observability``: the usual way."""
        return cls(engine=engine, live=hub.live, metrics=hub.metrics, ledger=hub.ledger, reload=reload,
                   token=token, observe=hub.settings, observer=hub.fanout, share=hub.share, version=version)


@dataclass(slots=True)
class _State:
    deps: AdminDeps
    pages: _Pages
    streams: set[asyncio.Event] = field(default_factory=set)
    ledger_cache: tuple[float, dict[str, Any]] | None = None
    started: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class _Pages:
    dashboard: bytes
    login: bytes
    csp: str


STATE = web.AppKey("adminapi", _State)


# ---- auth ----------------------------------------------------------------------------------------------


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status,
                             headers={"Cache-Control": "no-store"})


def auth_middleware(token: str | None, login_page: Callable[[], web.Response]) -> Any:
    """Bearer-token check for every path but ``PUBLIC``; see the module docstring for the answers."""
    expected = token.encode() if token else None

    @web.middleware
    async def middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        if request.path in PUBLIC:
            return await handler(request)
        if expected is None:
            return _error(403, DISABLED)
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            if request.path == "/dashboard" and request.method == "GET":
                return login_page()
            return web.json_response({"error": "bearer token required"}, status=401,
                                     headers={"WWW-Authenticate": 'Bearer realm="loginguard admin"'})
        # aiohttp decodes header bytes as UTF-8 with surrogateescape: any bytes compare, none raise
        if not hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), expected):
            return _error(403, "wrong token")
        return await handler(request)

    return middleware


# ---- pages -----------------------------------------------------------------------------------------------

_INLINE = re.compile(rb"<(script|style)>(.*?)</\1>", re.S)


def _load_pages() -> _Pages:
    static = resources.files("guard.http").joinpath("static")
    dashboard = static.joinpath("dashboard.html").read_bytes()
    login = static.joinpath("dashboard-login.html").read_bytes()
    hashes: dict[bytes, set[str]] = {b"script": set(), b"style": set()}
    for page in (dashboard, login):
        for kind, body in _INLINE.findall(page):
            hashes[kind].add("'sha256-" + base64.b64encode(hashlib.sha256(body).digest()).decode() + "'")
    csp = (
        "default-src 'none'; "
        f"script-src {' '.join(sorted(hashes[b'script']))}; "
        f"style-src {' '.join(sorted(hashes[b'style']))}; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    return _Pages(dashboard, login, csp)


def _page(body: bytes, csp: str, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="text/html", charset="utf-8", headers={
        "Content-Security-Policy": csp, "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
    })


# ---- handlers ---------------------------------------------------------------------------------------------


def _state(request: web.Request) -> _State:
    return request.app[STATE]


async def _view(st: _State, recent: int = 2000) -> dict[str, Any]:
    share = st.deps.share
    if share is not None:
        return await share.view(recent=recent)
    return st.deps.live.snapshot(recent=recent)


async def metrics(request: web.Request) -> web.Response:
    metrics = _state(request).deps.metrics
    metrics.flush()   # on the loop: the request path's counts are plain ints it owns
    body = await asyncio.to_thread(metrics.exposition)  # reads the mmap files: off the loop
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"})


def _ban_json(b: Any, now: float) -> dict[str, Any]:
    return {"subject": b.subject, "until": b.until, "remaining": max(0.0, round(b.until - now, 1)),
            "reason": b.reason, "created": b.created}


async def _bans(st: _State) -> list[dict[str, Any]]:
    engine = st.deps.engine
    now = engine.clock.now()
    bans = await engine.store.bans(now)
    return [_ban_json(b, now) for b in sorted(bans, key=lambda b: b.until)]


async def list_bans(request: web.Request) -> web.Response:
    return web.json_response({"bans": await _bans(_state(request))})


async def add_ban(request: web.Request) -> web.Response:
    from guard.bancli import subject_of

    st = _state(request)
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "body must be JSON")
    if not isinstance(body, dict) or set(body) - {"subject", "seconds", "reason"}:
        return _error(400, "expected an object with subject, seconds and reason")
    try:
        subject = subject_of(str(body.get("subject", "")))
        seconds = float(body.get("seconds", 0))
    except (ValueError, TypeError) as exc:
        return _error(400, str(exc))
    if not 0 < seconds <= MAX_BAN_SECONDS:
        return _error(400, f"seconds must be in (0, {MAX_BAN_SECONDS:g}]")
    reason = str(body.get("reason") or "manual")[:200]
    ban = await st.deps.engine.ban(subject, seconds, reason)   # the engine tells its observer
    log.info("ban added through the admin API", extra={"subject": subject, "seconds": seconds})
    return web.json_response({"ban": _ban_json(ban, st.deps.engine.clock.now())}, status=201)


async def resets(request: web.Request) -> web.Response:
    """Put accounts on the forced-reset list (``on: false`` takes them off); login ids never logged."""
    st = _state(request)
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "body must be JSON")
    logins = body.get("logins") if isinstance(body, dict) else None
    if not isinstance(logins, list) or not all(isinstance(x, str) and 0 < len(x) <= 320 for x in logins):
        return _error(400, "expected an object with logins: a list of login ids")
    if len(logins) > 100_000:
        return _error(400, "at most 100000 logins per call")
    if st.deps.engine.config.forced_reset_url is None:
        return _error(409, "forced_reset_url is not configured")
    n = await st.deps.engine.set_forced_reset(list(logins), on=bool(body.get("on", True)))
    log.info("forced-reset list changed through the admin API", extra={"accounts": n})
    return web.json_response({"accounts": n})


async def del_ban(request: web.Request) -> web.Response:
    from guard.bancli import subject_of

    st = _state(request)
    try:
        subject = subject_of(request.match_info["subject"])
    except ValueError as exc:
        return _error(400, str(exc))
    removed = await st.deps.engine.unban(subject)
    return web.json_response({"subject": subject, "removed": removed})


def account_key(engine: Engine, login: str) -> str:
    """The opaque key the engine files a login id under (normalised as on a login, keyed hash)."""
    from guard.engine.usernames import Normalizer, username_key

    norm = engine.rt.normalizer or Normalizer(engine.config.usernames, None)
    return username_key(engine._secret, norm.normalize(login))


def _totp_target(request: web.Request) -> tuple[Any, str, float] | web.Response:
    """(the challenge service's TOTP enrolments, the path's account key, now), or the error to answer with."""
    engine = _state(request).deps.engine
    svc = engine.challenges
    if svc is None or "totp" not in svc.channels:
        return _error(409, "TOTP is not configured: set challenge (channels.totp.enabled is the default)")
    login = request.match_info["login"]
    if not 0 < len(login) <= MAX_LOGIN:
        return _error(400, f"the login id must be 1 to {MAX_LOGIN} characters")
    return svc.enrolments, account_key(engine, login), engine.clock.now()


async def totp_put(request: web.Request) -> web.Response:
    """Import an account's authenticator secret (base32), replacing any it had; the login id is never logged."""
    from guard.challenge.channels.totp import decode_secret

    target = _totp_target(request)
    if isinstance(target, web.Response):
        return target
    enrolments, key, now = target
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "body must be JSON")
    secret = body.get("secret") if isinstance(body, dict) and set(body) == {"secret"} else None
    if not isinstance(secret, str) or len(secret) > MAX_SECRET:
        return _error(400, 'expected {"secret": "<base32>"}')
    try:
        decode_secret(secret)
    except ValueError as exc:  # the message names the problem, never the secret
        return _error(400, f"secret: {exc}")
    try:
        await enrolments.enroll(key, secret, now)
    except StoreError:
        return _error(503, "the store is unavailable")
    log.info("TOTP enrolment imported through the admin API")
    return web.json_response({"enrolled": True})


async def totp_delete(request: web.Request) -> web.Response:
    """Remove an account's authenticator: its next challenge uses the other channels."""
    target = _totp_target(request)
    if isinstance(target, web.Response):
        return target
    enrolments, key, now = target
    try:
        removed = await enrolments.remove(key, now)
    except StoreError:
        return _error(503, "the store is unavailable")
    log.info("TOTP enrolment removed through the admin API", extra={"removed": removed})
    return web.json_response({"removed": removed})


def _int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    try:
        return max(lo, min(hi, int(request.query.get(name, default))))
    except ValueError:
        raise web.HTTPBadRequest(text=json.dumps({"error": f"{name} must be an integer"}),
                                 content_type="application/json") from None


async def decisions(request: web.Request) -> web.Response:
    q = request.query
    limit = _int(request, "limit", 100, 1, 1000)
    view = await _view(_state(request))
    rows = filter_recent(view["recent"], q.get("action") or None, q.get("ip") or None, q.get("rule") or None,
                         limit)
    return web.json_response({"decisions": rows})


def _top_rows(view: dict[str, Any], by: str, limit: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for key, count in view["top"].get(by, [])[:limit]:
        row: dict[str, Any] = {"key": key, "count": count}
        if by == "country":
            row["name"] = country_name(key)
        elif by == "asn":
            row["name"] = f"AS{key}"
        elif by == "username":
            row["key"] = key[:16]
        rows.append(row)
    return rows


async def top(request: web.Request) -> web.Response:
    by = request.query.get("by", "ip")
    if by not in DIMENSIONS:
        return _error(400, f"by must be one of {', '.join(DIMENSIONS)}")
    limit = _int(request, "limit", 20, 1, 500)
    view = await _view(_state(request), recent=0)
    return web.json_response({"by": by, "top": _top_rows(view, by, limit)})


def _rules(st: _State, view: dict[str, Any]) -> list[dict[str, Any]]:
    hits: dict[str, dict[str, int]] = view["rules"]
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for r in st.deps.engine.rt.rules.rules:
        seen.add(r.id)
        out.append({"id": r.id, "description": r.description, "action": r.action.value, "phase": str(r.phase),
                    "file": os.path.basename(r.file), "line": r.line, "score": r.score, "shadow": r.shadow,
                    "hits": hits.get(r.id, {"enforce": 0, "shadow": 0})})
    for rid, h in hits.items():   # built-ins: banned, score, store-unavailable
        if rid not in seen:
            out.append({"id": rid, "description": "built-in", "action": "", "phase": "", "file": "",
                        "line": 0, "score": 0.0, "shadow": False, "hits": h})
    return out


async def rules(request: web.Request) -> web.Response:
    st = _state(request)
    return web.json_response({"rules": _rules(st, await _view(st, recent=0))})


async def reload(request: web.Request) -> web.Response:
    from guard.yamlsource import SourceError

    st = _state(request)
    try:
        await st.deps.reload()
    except SourceError as exc:
        if st.deps.observer is not None:
            st.deps.observer.reload(False)
        return _error(422, "reload rejected; the old config stays live",
                      problems=[str(p) for p in exc.problems])
    if st.deps.observer is not None:
        st.deps.observer.reload(True)
    return web.json_response({"status": "ok"})


async def health(request: web.Request) -> web.Response:
    st = _state(request)
    engine = st.deps.engine
    try:
        async with asyncio.timeout(1.0):
            status = await engine.status()
        store_ok = status.store_ok
    except Exception:
        store_ok = False
    view = await _view(st, recent=0)
    dl = st.deps.metrics
    return web.json_response({
        "status": "ok" if store_ok else "degraded", "store": "up" if store_ok else "down",
        "attack": engine.attack_in_progress, "bans_cached": len(engine.bans),
        "rules": len(engine.rt.rules.rules), "workers": view.get("workers", 1),
        "multiprocess": dl.multiproc is not None,
        "decision_log_dropped": dl.drop_counts.get("decision_log", 0),
        "ledger_dropped": st.deps.ledger.dropped,
        "uptime_s": round(time.time() - st.started, 1), "version": st.deps.version,
    })


async def _exposures(st: _State, since: float | None = None) -> dict[str, Any]:
    now = time.monotonic()
    if since is None and st.ledger_cache is not None and now - st.ledger_cache[0] < LEDGER_CACHE_S:
        return st.ledger_cache[1]
    rows = await st.deps.ledger.read(since)
    result = await asyncio.to_thread(ledger_summary, rows)
    if since is None:
        st.ledger_cache = (now, result)
    return result


async def exposures(request: web.Request) -> web.Response:
    since = request.query.get("since")
    try:
        when = float(since) if since else None
    except ValueError:
        return _error(400, "since must be epoch seconds")
    return web.json_response(await _exposures(_state(request), when))


async def _summary(st: _State) -> dict[str, Any]:
    view = await _view(st, recent=2000)
    recent = [r for r in view["recent"] if r["action"] in HOSTILE or r.get("shadow")][:30]
    rules_ = sorted(_rules(st, view), key=lambda r: -(r["hits"]["enforce"] + r["hits"]["shadow"]))[:10]
    try:
        bans = await _bans(st)
    except Exception:   # the store is down: the page still shows the rest
        bans = []
    return {
        "ts": time.time(), "attack": view["attack"] | {"engine": st.deps.engine.attack_in_progress},
        "totals": view["totals"], "series": view["series"],
        "top": {d: _top_rows(view, d, 10) for d in DIMENSIONS}, "rules": rules_,
        "bans": bans[:200], "bans_total": len(bans), "recent": recent,
        "exposures": await _exposures(st), "workers": view.get("workers", 1),
        "refresh": st.deps.observe.dashboard.refresh,
    }


async def summary(request: web.Request) -> web.Response:
    return web.json_response(await _summary(_state(request)), headers={"Cache-Control": "no-store"})


async def stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events: a ``summary`` event per refresh interval until the client or the server leaves."""
    st = _state(request)
    if len(st.streams) >= MAX_STREAMS:
        return _error(503, "too many open dashboards")
    stop = asyncio.Event()
    st.streams.add(stop)
    resp = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no",
    })
    try:
        await resp.prepare(request)
        refresh = st.deps.observe.dashboard.refresh
        await resp.write(f"retry: {int(refresh * 1000)}\n\n".encode())
        while not stop.is_set():
            data = json.dumps(await _summary(st), separators=(",", ":"))
            await resp.write(f"event: summary\ndata: {data}\n\n".encode())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), refresh)
    except (ConnectionResetError, ConnectionError):
        pass
    finally:
        st.streams.discard(stop)
    return resp


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(document(_state(request).deps.version or "0"))


async def dashboard(request: web.Request) -> web.Response:
    pages = _state(request).pages
    return _page(pages.dashboard, pages.csp)


async def _close_streams(app: web.Application) -> None:
    for stop in list(app[STATE].streams):
        stop.set()


def install(app: web.Application, deps: AdminDeps) -> None:
    """Add the auth middleware and every admin route to the admin listener's app (before it starts)."""
    if not deps.token:
        deps.token = os.environ.get("GUARD_ADMIN_TOKEN") or None
    if not deps.token:
        log.warning("admin API disabled: set admin.token or GUARD_ADMIN_TOKEN (only the probes answer)")
    pages = _load_pages()
    app[STATE] = _State(deps, pages)
    app.middlewares.append(auth_middleware(deps.token, lambda: _page(pages.login, pages.csp, status=401)))
    r = app.router
    r.add_get("/metrics", metrics)
    r.add_get("/api/bans", list_bans)
    r.add_post("/api/bans", add_ban)
    r.add_delete("/api/bans/{subject:.+}", del_ban)
    r.add_get("/api/decisions", decisions)
    r.add_get("/api/top", top)
    r.add_get("/api/rules", rules)
    r.add_post("/api/reload", reload)
    r.add_get("/api/health", health)
    r.add_get("/api/summary", summary)
    r.add_get("/api/exposures", exposures)
    r.add_post("/api/resets", resets)
    r.add_put("/api/totp/{login:.+}", totp_put)
    r.add_delete("/api/totp/{login:.+}", totp_delete)
    r.add_get("/api/stream", stream)
    r.add_get("/api/openapi.json", openapi)
    r.add_get("/dashboard", dashboard)
    app.on_shutdown.append(_close_streams)

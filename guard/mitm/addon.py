"""The mitmproxy addon ("WAF plugin"): the guard's engine driven by mitmproxy's HTTP hooks.

    mitmdump --mode reverse:http://127.0.0.1:8000 -s guard/mitm/addon.py --set guard_config=guard.yaml

A thin adapter, like ``guard.http.proxy`` (the reference behaviour): it turns a
flow into ``RequestFacts``, asks the engine, and turns the ``Decision`` back into
mitmproxy terms.  Which hook does what, and why there:

* ``requestheaders``: client IP (trusted hops only), bans, IP lists, geo and
  stateless rules, before the body is read: a refused request never reaches the
  upstream, and one announcing a large or chunked body is closed rather than
  read.  Non-login bodies are streamed; login bodies are buffered.
* ``request``: a login body is whole: the login rules and the store batch.
* ``responseheaders``: stream everything except login responses (the outcome
  classifier reads them) and, when a rewriter is plugged in, HTML.
* ``response``: the login outcome feeds the counters; the access log line.
* ``error``: the access log line of a flow that never got a response.

Failure policy, the same as the aiohttp adapter's: an exception in a hook
becomes the branded 500 page, never a forwarded request (mitmproxy would
otherwise log the exception and forward the flow unguarded); until a valid
``guard_config`` is loaded and the engine has started, every request gets 503.
"""

# No ``from __future__ import annotations`` here: mitmproxy executes this file as a
# script without registering it in ``sys.modules``, and dataclasses resolve string
# annotations through ``sys.modules[cls.__module__]`` (the e2e test would catch it).

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from mitmproxy import ctx, exceptions, http
from mitmproxy.addonmanager import Loader
from mitmproxy.proxy.mode_specs import ReverseMode

import guard.mitm as _package
from guard import __version__
from guard.accesslog import RequestLog
from guard.clientip import TrustedProxies, forwarding_chains, normalize, parse_ip, resolve
from guard.config import Brand, Config, load_config
from guard.engine import PASS, Action, Decision, Engine, RequestFacts, ResponseFacts
from guard.engine.runtime import Runtime, build_runtime
from guard.forwarding import Forwarding, added, dropped
from guard.http.admin import AdminServer, Health, make_app
from guard.http.adminapi import AdminDeps, install
from guard.http.pages import _PAGE_HEADERS, Pages, wants_json
from guard.http.settings import MAX_TARPIT
from guard.http.target import match_path
from guard.observe.hub import Observability, decision_log_settings
from guard.store import make_store
from guard.yamlsource import SourceError

log = logging.getLogger("guard.mitm")

HtmlRewriter = Callable[[RequestFacts, http.Response], Awaitable[None]]
"""Rewrites a buffered ``text/html`` response in place (PII hidden fields plug in here)."""

# Config keys whose change needs a restart of mitmdump: they shape the store
# connection, the admin socket and the log file, which live as long as the addon.
RESTART_KEYS = ("store", "admin", "log")


@dataclass(frozen=True, slots=True)
class Settings:
    """What the hooks read from the config, compiled once and swapped as one reference on reload."""

    config: Config
    trusted: TrustedProxies
    pages: Pages
    max_body: int

    @classmethod
    def build(cls, config: Config) -> "Settings":
        return cls(config, TrustedProxies(config.trusted_proxies), Pages(config.brand),
                   config.limits.max_body_size)


@dataclass(slots=True)
class FlowState:
    """The guard's view of one flow between hooks.

    Kept in a dict by flow id rather than in ``flow.metadata``: metadata is saved
    with the flow (``-w``, mitmweb) and must stay serialisable.
    """

    facts: RequestFacts
    decision: Decision = PASS
    overhead: float = 0.0    # seconds spent in the guard's hooks (decisions, store, tarpit)
    status: int = 0          # status of the guard's own answer; 0 while the flow is forwarded


def page(pages: Pages, status: int, accept: str = "") -> http.Response:
    """The branded page for ``status`` as a mitmproxy response: ``Pages.response`` without aiohttp."""
    body = pages.body(status, wants_json(accept))
    headers = {"Content-Type": body.content_type, "Server": pages.server_name, **dict(_PAGE_HEADERS)}
    return http.Response.make(status, body.data, headers)


def forwarding_headers(headers: http.Headers, fwd: Forwarding) -> None:
    """What the upstream is told about the client: ``guard.forwarding`` decides, as for ``guard run``.

    Read before anything is dropped: a trusted hop's chain is extended, not restarted.
    """
    extra = added(fwd, headers.get_all)
    for name in dropped(fwd.trusted):
        if name in headers:
            del headers[name]
    for name, value in extra:
        headers.add(name, value)


class GuardAddon:
    """One guard per mitmproxy process: engine, store, request log and admin listener."""

    def __init__(self, rewrite_html: HtmlRewriter | None = None) -> None:
        """``rewrite_html`` set makes HTML responses buffered and passed to it; None streams them."""
        self.rewrite_html = rewrite_html
        self.settings: Settings | None = None
        self.engine: Engine | None = None
        self.request_log: RequestLog | None = None
        self.admin_port = 0
        self._runtime: Runtime | None = None     # compiled by configure, handed to the engine by running
        self._admin: AdminServer | None = None
        self._obs: Observability | None = None
        self._health: Health | None = None
        self._flows: dict[str, FlowState] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed_pages = Pages(Brand())      # for the 503s before a config is loaded

    # ---- lifecycle ------------------------------------------------------------------------------

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "guard_config", str, "",
            "loginguard: path to guard.yaml (required: without it, mitmdump refuses to start and "
            "requests get 503 until it is set).",
        )

    def configure(self, updated: set[str]) -> None:
        """Validate and compile the config here, so a bad file is refused with file:line at once.

        At startup mitmdump exits on the refusal; later (``set guard_config`` in
        mitmweb or the console) the option is rolled back and the running
        config stays.  Compiling reads rule and list files on the event loop: a
        start-up and reload cost, never a per-request one.
        """
        if "guard_config" not in updated:
            return
        path: str = ctx.options.guard_config
        if not path:
            return
        try:
            config = load_config(path)
            runtime = build_runtime(config)
        except SourceError as exc:
            # (mitmproxy's exception classes have untyped constructors)
            raise exceptions.OptionsError(f"guard_config: {exc}") from None  # type: ignore[no-untyped-call]
        if getattr(config, "challenge", None) is not None:
            log.warning("loginguard: the challenge flow is not available under mitmproxy yet; "
                        "the challenge action answers with the block page")
        if self.engine is None:
            if self._runtime is not None:
                self._runtime.close()
            self._runtime = runtime
            self.settings = Settings.build(config)
            return
        runtime.close()  # Engine.reload compiles again off the event loop, and restarts list fetchers
        self._spawn(self._reload(config))

    def running(self) -> asyncio.Task[None]:
        """Start the engine and the admin listener.

        A plain function returning a task, not a coroutine function: mitmproxy
        awaits what a hook returns at start-up, but calls ``running`` (and
        ``done``) synchronously on a script it reloads, and refuses coroutine
        functions there.
        """
        return self._spawn(self._start())

    def done(self) -> asyncio.Task[None]:
        """Drain readiness, then close the admin listener, the engine (and store) and the log."""
        task = asyncio.get_running_loop().create_task(self._stop(), name="loginguard-stop")
        _package.stopping = task
        return task

    async def _start(self) -> None:
        previous = _package.stopping
        if previous is not None:
            with contextlib.suppress(Exception):
                await previous  # a reloaded script: the old instance must let go of ports first
            if _package.stopping is previous:
                _package.stopping = None
        settings = self.settings
        if settings is None or self.engine is not None:
            if settings is None:
                log.error("loginguard: guard_config is not set (--set guard_config=guard.yaml); "
                          "requests are answered 503 until it is")
            return
        config = settings.config
        runtime, self._runtime = self._runtime, None
        try:
            store = make_store(config.store)
            engine = Engine(config, store, runtime=runtime)
            await engine.start()
            self.engine = engine
            # the same observers as ``guard run``: decision log, metrics, live view, ledger, webhook
            obs = self._obs = Observability.from_config(config, decision_log=decision_log_settings(config))
            await obs.start(engine)
            self.request_log = RequestLog(obs.fanout, engine)
            self._health = Health(store)
            app = make_app(self._health)
            deps = AdminDeps.from_hub(obs, engine, config.admin.token, self._reload_from_disk, __version__)
            install(app, deps)  # /metrics, the admin API and the dashboard
            self._admin = AdminServer(app, config.admin.listen, reuse_port=False)
            await self._admin.start()
            self.admin_port = self._admin.port
        except BaseException:
            await self._stop()
            raise
        log.info("loginguard: guarding with %s (admin on %s)", ctx.options.guard_config, self.admin_port)

    async def _stop(self) -> None:
        """Close in dependency order; one failing step (a store that will not close) skips no other."""
        if self._health is not None:
            self._health.draining = True
        admin, obs, engine = self._admin, self._obs, self.engine
        self._admin = self._obs = self.engine = self.request_log = None  # from here on, requests get 503
        # observers flush (decision log, ledger) before the store they may write to goes
        for resource in (admin, obs, engine):
            if resource is not None:
                try:
                    await resource.close()
                except Exception:
                    log.exception("loginguard: closing %s failed", type(resource).__name__)
        if self._runtime is not None:
            self._runtime.close()
            self._runtime = None
        self._flows.clear()

    async def _reload(self, config: Config) -> None:
        """``set guard_config`` while running: the file was validated already; only a race can fail."""
        try:
            await self._apply(config)
        except SourceError as exc:
            log.error("loginguard: reload refused, the running rules stay: %s", exc)

    async def _reload_from_disk(self) -> None:
        """``POST /api/reload``: read ``guard_config`` again; a ``SourceError`` becomes the API's 422."""
        path: str = ctx.options.guard_config
        await self._apply(await asyncio.to_thread(load_config, path))

    async def _apply(self, config: Config) -> None:
        """Swap rules, lists and logins (the engine compiles off the loop), then the hooks' settings."""
        engine, old = self.engine, self.settings
        if engine is None or old is None:
            return
        await engine.reload(config)
        self.settings = Settings.build(config)
        later = [k for k in RESTART_KEYS if getattr(old.config, k) != getattr(config, k)]
        if later:
            log.warning("loginguard: changes to %s take effect only after a restart", ", ".join(later))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task kept referenced until it ends (the loop holds tasks only weakly)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---- hooks ----------------------------------------------------------------------------------

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.error is not None or not flow.live or flow.is_replay:
            return
        engine, settings = self.engine, self.settings
        if engine is None or settings is None:
            flow.response = page(self._closed_pages, 503, flow.request.headers.get("Accept", ""))
            return
        t0 = time.perf_counter()
        try:
            await self._headers_phase(flow, engine, settings)
        except Exception:
            log.exception("loginguard: request headers phase failed")
            self._fail(flow)
        finally:
            self._account(flow, t0)

    async def request(self, flow: http.HTTPFlow) -> None:
        state = self._flows.get(flow.id)
        if state is None and flow.live and not flow.request.stream and not flow.is_replay:
            # Seen first here: the flow began under an instance mitmproxy has since reloaded.
            await self.requestheaders(flow)
            state = self._flows.get(flow.id)
        if state is None or state.facts.login is None or flow.response is not None or not flow.live:
            return
        engine, settings = self.engine, self.settings
        if engine is None or settings is None:
            self._answer(flow, state, 503)
            return
        t0 = time.perf_counter()
        try:
            await self._login_phase(flow, state, engine, settings)
        except Exception:
            log.exception("loginguard: login phase failed")
            self._fail(flow)
        finally:
            self._account(flow, t0)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = self._flows.get(flow.id)
        resp = flow.response
        if state is None or resp is None or state.status:
            return  # not ours, or the guard's own page (mitmproxy replays this hook for it)
        if state.facts.login is not None:
            resp.stream = False  # the outcome classifier reads status, headers and the body's head
        elif self.rewrite_html is not None and _is_html(resp):
            resp.stream = False
        else:
            resp.stream = True

    async def response(self, flow: http.HTTPFlow) -> None:
        state = self._flows.pop(flow.id, None)
        resp = flow.response
        if state is None or resp is None:
            return
        t0 = time.perf_counter()
        upstream_s: float | None = None
        if not state.status:
            upstream_s = _upstream_seconds(flow.request, resp)
            try:
                engine = self.engine
                facts = state.facts
                if facts.login is not None and engine is not None:
                    head = b""
                    peek = engine.response_peek(facts.login)
                    if peek:
                        # decoded (mitmproxy inflates any coding); outcome reads it with the original headers
                        head = (resp.get_content(strict=False) or b"")[:peek]
                    await engine.on_response(facts, ResponseFacts(resp.status_code, resp.headers, head))
                if self.rewrite_html is not None and not resp.stream and _is_html(resp):
                    await self.rewrite_html(facts, resp)
            except Exception:
                log.exception("loginguard: response phase failed")
                resp = self._answer(flow, state, 500)
                upstream_s = None
            finally:
                state.overhead += time.perf_counter() - t0
        self._record(state, resp.status_code, upstream_s)

    def error(self, flow: http.HTTPFlow) -> None:
        state = self._flows.pop(flow.id, None)
        if state is None:
            return
        log.debug("loginguard: flow %s failed: %s", flow.id, flow.error)
        self._record(state, state.status or 502, None)

    # ---- phases (the hooks above catch their exceptions: a failure is a 500, never a forward) ----

    async def _headers_phase(self, flow: http.HTTPFlow, engine: Engine, settings: Settings) -> None:
        req = flow.request
        headers = req.headers
        peer = _peer(flow)
        trusted = _trusted(settings, peer)
        xff, fwd_list = forwarding_chains(settings.config.forwarded_header, headers.get_all)
        client_ip, _ = resolve(peer, settings.trusted, xff, fwd_list)
        raw_path, _, query = req.path.partition("?")
        path = match_path(raw_path)
        login = engine.match_login(req.method, path)
        scheme = "https" if flow.client_conn.tls_established else "http"
        if trusted and headers.get("X-Forwarded-Proto", "").lower() == "https":
            scheme = "https"  # a trusted hop terminated TLS
        facts = RequestFacts(
            client_ip, req.method, path, query, req.host_header or "", scheme, headers, peer, login,
            content_type=headers.get("Content-Type", "") if login is not None else "",
        )
        state = self._flows[flow.id] = FlowState(facts)
        decision = state.decision = await engine.on_request(facts)
        # mitmproxy sends a response set here only after reading the whole request body,
        # so a body too large to buffer is refused by closing the connection instead.
        length = _content_length(req)
        too_large = length is not None and length > settings.max_body
        if not decision.forwards:
            if too_large or (length is None and "chunked" in headers.get("Transfer-Encoding", "")):
                self._close(flow, state, _refusal_status(decision))
            else:
                self._refuse(flow, state, decision)
        elif login is not None:
            if too_large:
                self._close(flow, state, 413)
            else:
                req.stream = False  # buffered: ``request`` sees it whole (overrides stream_large_bodies)
        else:
            if decision.action is Action.TARPIT and decision.delay > 0 and not decision.shadow:
                await asyncio.sleep(min(decision.delay, MAX_TARPIT))
            if isinstance(flow.client_conn.proxy_mode, ReverseMode):
                forwarding_headers(headers, _forwarding(settings, facts))
            req.stream = True

    async def _login_phase(
        self, flow: http.HTTPFlow, state: FlowState, engine: Engine, settings: Settings
    ) -> None:
        facts = state.facts
        body = flow.request.raw_content or b""
        if len(body) > settings.max_body:
            self._answer(flow, state, 413)  # chunked: no length was declared up front
            return
        facts.body = body
        try:
            later = await engine.on_login(facts)
        finally:
            facts.body = None  # the password has been fingerprinted: do not keep it around
        if not later.forwards:
            self._refuse(flow, state, later)
            return
        decision = state.decision = state.decision if later.action is Action.PASS else later
        if decision.action is Action.TARPIT and decision.delay > 0 and not decision.shadow:
            await asyncio.sleep(min(decision.delay, MAX_TARPIT))
        if isinstance(flow.client_conn.proxy_mode, ReverseMode):
            forwarding_headers(flow.request.headers, _forwarding(settings, facts))

    # ---- helpers --------------------------------------------------------------------------------

    def _fail(self, flow: http.HTTPFlow) -> None:
        """The failure policy: a bug answers the branded 500 page (no exception text), never forwards."""
        state = self._flows.get(flow.id)
        if flow.error is not None:
            return  # already closed
        if state is not None:
            self._answer(flow, state, 500)
        else:
            flow.request.stream = False
            flow.response = page(self._closed_pages, 500, flow.request.headers.get("Accept", ""))

    def _account(self, flow: http.HTTPFlow, t0: float) -> None:
        state = self._flows.get(flow.id)
        if state is not None:
            state.overhead += time.perf_counter() - t0
            _mark(flow, state)

    def _refuse(self, flow: http.HTTPFlow, state: FlowState, decision: Decision) -> None:
        state.decision = decision
        self._answer(flow, state, _refusal_status(decision))

    @staticmethod
    def _close(flow: http.HTTPFlow, state: FlowState, status: int) -> None:
        """Refuse without an answer; the access log shows the status the page would have had."""
        state.status = status
        flow.kill()  # type: ignore[no-untyped-call]  # (untyped in mitmproxy)

    def _answer(self, flow: http.HTTPFlow, state: FlowState, status: int) -> http.Response:
        pages = self.settings.pages if self.settings is not None else self._closed_pages
        flow.request.stream = False  # mitmproxy refuses a response together with a streamed request
        resp = flow.response = page(pages, status, flow.request.headers.get("Accept", ""))
        state.status = status
        return resp

    def _record(self, state: FlowState, status: int, upstream_s: float | None) -> None:
        if self.request_log is not None:
            self.request_log.record(state.facts, state.decision, status, upstream_s, state.overhead)


def _peer(flow: http.HTTPFlow) -> str:
    """The socket peer, canonical (``::ffff:1.2.3.4`` is ``1.2.3.4``), so bans and counters agree."""
    peername = flow.client_conn.peername
    if not peername:
        return ""
    host = str(peername[0])
    return normalize(host) or host


def _trusted(settings: Settings, peer: str) -> bool:
    """Whether the peer's forwarding headers are believed (and kept for the upstream)."""
    if settings.trusted.empty:
        return False
    ip = parse_ip(peer)
    return ip is not None and ip in settings.trusted


def _forwarding(settings: Settings, facts: RequestFacts) -> Forwarding:
    """This hop, for the forwarding headers: the Host the client asked for, the chain the trusted hops write."""
    return Forwarding(facts.peer, _trusted(settings, facts.peer), facts.scheme, facts.host or None,
                      settings.config.forwarded_header)


def _refusal_status(decision: Decision) -> int:
    return decision.status or (503 if decision.action is Action.UNAVAILABLE else 403)


def _content_length(req: http.Request) -> int | None:
    value = req.headers.get("Content-Length")
    if value is None or not value.strip().isdigit():
        return None  # chunked, or malformed (mitmproxy has refused the malformed ones already)
    return int(value)


def _is_html(resp: http.Response) -> bool:
    content_type: str = resp.headers.get("Content-Type", "")
    return content_type.lower().startswith(("text/html", "application/xhtml+xml"))


def _upstream_seconds(req: http.Request, resp: http.Response) -> float:
    """From the request's last byte to the response head: the upstream's share of the wait."""
    start = req.timestamp_end or req.timestamp_start
    return max(0.0, resp.timestamp_start - start)


def _mark(flow: http.HTTPFlow, state: FlowState) -> None:
    """What the guard decided, where mitmweb shows it (plain values: metadata is saved with flows)."""
    decision = state.decision
    flow.metadata["loginguard"] = {
        "client_ip": state.facts.client_ip,
        "login": state.facts.login,
        "action": decision.action.value,
        "reasons": decision.reason_ids(),
        "status": state.status,
    }


addons = [GuardAddon()]

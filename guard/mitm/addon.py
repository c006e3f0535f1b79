"""The mitmproxy addon ("WAF plugin"): the guard's engine driven by mitmproxy's HTTP hooks.

    mitmdump --mode reverse:http://127.0.0.1:8000 -s guard/mitm/addon.py --set guard_config=guard.yaml

A thin adapter, like ``guard.http.proxy`` (the reference behaviour): it turns a
flow into ``RequestFacts``, asks the engine, and turns the ``Decision`` back into
mitmproxy terms.  Which hook does what, and why there:

* ``requestheaders``: client IP (trusted hops only), bans, IP lists, geo and
  stateless rules, before the body is read: a refused request never reaches the
  upstream, and one announcing a large or chunked body is closed rather than
  read.  Non-login bodies are streamed; login bodies, the challenge's code
  form and submissions that may carry PII tokens are buffered.
* ``request``: a login body is whole: the login rules and the store batch, and
  a challenged login held (before_upstream); the code form answered by the
  addon (``guard.mitm.challenge``); PII tokens swapped back (``guard.mitm.pii``).
* ``responseheaders``: stream everything except login responses (the outcome
  classifier reads them) and bodies the PII policy rewrites.
* ``response``: the login outcome feeds the counters (or, step-up, the answer
  is held behind the interstitial); PII rewritten; the access log line.
* ``error``: the access log line of a flow that never got a response.

Failure policy, the same as the aiohttp adapter's: an exception in a hook
becomes the branded 500 page, never a forwarded request (mitmproxy would
otherwise log the exception and forward the flow unguarded); until a valid
``guard_config`` is loaded and the engine has started, every request gets 503.
"""

# No ``from __future__ import annotations`` here: mitmproxy executes this file as a
# script without registering it in ``sys.modules``, and dataclasses resolve string
# annotations through ``sys.modules[cls.__module__]`` (the e2e test would catch it).
# Nor a module-level name that is a hook's (``response``, ``request``, ``error``...):
# mitmproxy calls the script module's own functions as hooks too.

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from enum import Enum
from typing import Any

from mitmproxy import ctx, exceptions, http
from mitmproxy.addonmanager import Loader
from mitmproxy.proxy.mode_specs import ReverseMode

import guard.mitm as _package
import guard.mitm.pii as pii_hooks
from guard import __version__
from guard.accesslog import RequestLog
from guard.challenge.flow import MAX_FORM, login_of
from guard.challenge.service import Challenges, Login
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
from guard.mitm import messages
from guard.mitm.challenge import ChallengeHooks, Release
from guard.observe.hub import Observability, decision_log_settings
from guard.pii.flow import PIIRuntime, Plan
from guard.pii.vault import Vault
from guard.store import make_store
from guard.yamlsource import SourceError

log = logging.getLogger("guard.mitm")

# Config keys whose change needs a restart of mitmdump: they shape the store
# connection, the admin socket, the log file and the challenge service (its keys,
# channels and health probes), which live as long as the addon.
RESTART_KEYS = ("store", "admin", "log", "challenge")


@dataclass(frozen=True, slots=True)
class Settings:
    """What the hooks read from the config, compiled once and swapped as one reference on reload."""

    config: Config
    trusted: TrustedProxies
    pages: Pages
    max_body: int
    pii: PIIRuntime | None = None     # None: PII off, or the engine (and its vault) not started yet

    @classmethod
    def build(cls, config: Config, engine: Engine | None = None, vault: Vault | None = None) -> "Settings":
        pii = PIIRuntime(config.pii, engine, vault) if engine is not None and config.pii.enabled else None
        return cls(config, TrustedProxies(config.trusted_proxies), Pages(config.brand),
                   config.limits.max_body_size, pii)


class Stage(Enum):
    """What the addon itself does with a flow besides deciding it."""

    FORWARD = "forward"    # the usual: decided, then forwarded (or refused)
    ANSWER = "answer"      # the challenge's code form: answered by the addon, never by the upstream
    STEP_UP = "step_up"    # a challenged login: the upstream's answer is held behind the interstitial


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
    stage: Stage = Stage.FORWARD
    login: Login | None = None             # STEP_UP: whose code it is
    release: Release | None = None         # a passed code forwarded the held login: its answer gets cookies
    submission: pii_hooks.Submission | None = None  # a body to swap PII tokens back in, in ``request``
    plan: Plan | None = None               # how the response body goes through the PII policy


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

    def __init__(self) -> None:
        self.settings: Settings | None = None
        self.engine: Engine | None = None
        self.request_log: RequestLog | None = None
        self.admin_port = 0
        self._runtime: Runtime | None = None     # compiled by configure, handed to the engine by running
        self._admin: AdminServer | None = None
        self._obs: Observability | None = None
        self._health: Health | None = None
        self._challenge: ChallengeHooks | None = None
        self._vault: Vault | None = None
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
            # PII tokens are sealed under a key from the engine's secret, shared through the store so
            # every instance (``guard run`` too) agrees; the engine has no public accessor for it yet.
            self._vault = Vault(engine._secret, store, engine.clock)
            self.settings = Settings.build(config, engine, self._vault)
            # the same observers as ``guard run``: decision log, metrics, live view, ledger, webhook
            obs = self._obs = Observability.from_config(config, decision_log=decision_log_settings(config))
            await obs.start(engine)
            self.request_log = RequestLog(obs.fanout, engine)
            if config.challenge is not None:
                svc = Challenges(config.challenge, store, clock=engine.clock)
                self._challenge = ChallengeHooks(svc, engine)
                await svc.start()
                svc.observer = obs.fanout   # send failures are metrics
                engine.challenges = svc     # trusted devices and login notifications, from the engine
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
        admin, challenge, obs, engine = self._admin, self._challenge, self._obs, self.engine
        self._admin = self._obs = self.engine = self.request_log = None  # from here on, requests get 503
        self._challenge = None
        # pending code deliveries end, and observers flush (decision log, ledger), before the store goes
        for resource in (admin, challenge, obs, engine):
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
        self.settings = Settings.build(config, engine, self._vault)
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
        if state is None or flow.response is not None or not flow.live:
            return
        if state.facts.login is None and state.stage is Stage.FORWARD and state.submission is None:
            return
        engine, settings = self.engine, self.settings
        if engine is None or settings is None:
            self._answer(flow, state, 503)
            return
        t0 = time.perf_counter()
        try:
            if state.stage is Stage.ANSWER:
                await self._answer_phase(flow, state)
            elif state.facts.login is not None:
                await self._login_phase(flow, state, engine, settings)
            elif state.submission is not None:
                await self._swap(flow, state, settings, state.submission)
        except Exception:
            log.exception("loginguard: request phase failed")
            self._fail(flow)
        finally:
            self._account(flow, t0)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = self._flows.get(flow.id)
        resp = flow.response
        if state is None or resp is None or state.status:
            return  # not ours, or the guard's own page (mitmproxy replays this hook for it)
        # read whole: the outcome classifier (logins, a released login) and the PII rewriter need the body
        settings = self.settings
        pii = settings.pii if settings is not None else None
        state.plan = pii_hooks.plan(pii, state.facts, resp) if pii is not None else None
        buffered = state.facts.login is not None or state.release is not None or state.plan is not None
        resp.stream = not buffered

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
                resp = await self._response_phase(flow, state, resp)
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
        challenge = self._challenge
        if not decision.forwards:
            if too_large or (length is None and "chunked" in headers.get("Transfer-Encoding", "")):
                self._close(flow, state, _refusal_status(decision))
            else:
                self._refuse(flow, state, decision)
        elif challenge is not None and challenge.answers(req.method, path):
            if length is not None and length > MAX_FORM:
                self._close(flow, state, 413)
            else:
                state.stage = Stage.ANSWER
                req.stream = False  # answered in ``request`` from the whole form, never forwarded
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
            pii = settings.pii
            sub = pii_hooks.submission(pii, facts, req, length, settings.max_body) if pii is not None else None
            if sub is None or not sub.buffered:
                req.stream = True
                if sub is not None:
                    await self._swap(flow, state, settings, sub)  # tokens in the query only: the body streams
            elif too_large:
                self._close(flow, state, 413)  # a form over the limit, as for logins
            else:
                state.submission = sub
                req.stream = False  # buffered: ``request`` swaps the tokens in the whole body

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
        challenge = self._challenge
        if later.action is Action.CHALLENGE and not later.shadow and challenge is not None:
            await self._challenge_login(flow, state, challenge, settings, later)
            return
        if not later.forwards:
            self._refuse(flow, state, later)
            return
        decision = state.decision = state.decision if later.action is Action.PASS else later
        if decision.action is Action.TARPIT and decision.delay > 0 and not decision.shadow:
            await asyncio.sleep(min(decision.delay, MAX_TARPIT))
        if isinstance(flow.client_conn.proxy_mode, ReverseMode):
            forwarding_headers(flow.request.headers, _forwarding(settings, facts))

    async def _challenge_login(
        self, flow: http.HTTPFlow, state: FlowState, challenge: ChallengeHooks, settings: Settings,
        decision: Decision,
    ) -> None:
        """The challenge action: hold the request now (before_upstream), or its answer later (step-up)."""
        state.decision = decision
        login = login_of(state.facts)
        if login is None:
            self._refuse(flow, state, decision)  # no username to send a code for: the challenge cannot be met
            return
        if isinstance(flow.client_conn.proxy_mode, ReverseMode):
            forwarding_headers(flow.request.headers, _forwarding(settings, state.facts))
        if challenge.before_upstream:
            self._respond(flow, state, await challenge.hold_request(flow.request, login))
        else:
            state.stage, state.login = Stage.STEP_UP, login  # forwarded: ``response`` holds the answer

    async def _answer_phase(self, flow: http.HTTPFlow, state: FlowState) -> None:
        """The code form's POST: a page, the held answer, or the held login now forwarded once."""
        challenge = self._challenge
        if challenge is None:  # the service is gone (shutting down)
            self._answer(flow, state, 503)
            return
        result = await challenge.answer(flow.request, state.facts)
        if isinstance(result, Release):
            state.release = result  # the flow is the held login now; mitmproxy forwards it
        else:
            self._respond(flow, state, result)

    async def _swap(
        self, flow: http.HTTPFlow, state: FlowState, settings: Settings, sub: pii_hooks.Submission
    ) -> None:
        """PII tokens in a submission become the original values again, before the upstream sees it."""
        pii = settings.pii
        if pii is None:
            return
        status = await pii_hooks.swap(pii, state.facts, flow.request, sub, settings.max_body)
        if status:
            self._answer(flow, state, status)

    async def _response_phase(self, flow: http.HTTPFlow, state: FlowState, resp: http.Response) -> http.Response:
        """The upstream answered: hold it (step-up), or learn the login's outcome; then PII.  The response sent."""
        engine, settings, challenge, facts = self.engine, self.settings, self._challenge, state.facts
        if state.stage is Stage.STEP_UP:
            if challenge is None or state.login is None:
                return self._answer(flow, state, 503)  # shutting down: never the held answer without its code
            return self._respond(flow, state, await challenge.hold_answer(resp, facts, state.login))
        if engine is None or settings is None:
            return resp  # shutting down: the engine cannot count it any more
        if facts.login is not None:
            head = b""
            peek = engine.response_peek(facts.login)
            if peek:
                # decoded (mitmproxy inflates any coding); outcome reads it with the original headers
                head = (resp.get_content(strict=False) or b"")[:peek]
            outcome = await engine.on_response(facts, ResponseFacts(resp.status_code, resp.headers, head))
            for cookie in engine.after_login(facts, outcome):  # a rotated trusted-device cookie
                resp.headers.add("Set-Cookie", cookie)
            reset = await engine.forced_reset(facts, outcome)
            if reset is not None:
                # an exposed account: send it to the password reset, not into its session
                flow.response = messages.response(303, (("Location", reset), ("Cache-Control", "no-store")), b"")
                return flow.response
        elif state.release is not None and challenge is not None:
            await challenge.released_answer(resp, facts, state.release)
        pii = settings.pii
        if state.plan is not None and pii is not None and not resp.stream:
            if not await pii_hooks.rewrite(pii, facts, flow.request, resp, state.plan):
                return self._answer(flow, state, 502)
        return resp

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

    def _respond(self, flow: http.HTTPFlow, state: FlowState, answer: http.Response | int) -> http.Response:
        """The guard's own answer: a response built by a flow (a challenge page), or a status's branded page."""
        if isinstance(answer, int):
            return self._answer(flow, state, answer)
        flow.request.stream = False  # mitmproxy refuses a response together with a streamed request
        flow.response = answer
        state.status = answer.status_code
        return answer

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

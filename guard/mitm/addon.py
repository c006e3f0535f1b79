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

This file holds the per-flow hooks only: the option, start, stop and reload are
``guard.mitm.lifecycle``'s (``GuardAddon`` inherits them), and the small reads
and writes of a flow (peer, declared length, refusal status, branded page,
forwarding headers, the state kept between hooks) are ``guard.mitm.flows``'.
"""

# No ``from __future__ import annotations`` here: mitmproxy executes this file as a
# script without registering it in ``sys.modules``, and dataclasses resolve string
# annotations through ``sys.modules[cls.__module__]`` (the e2e test would catch it);
# the dataclasses therefore live in the imported modules.  Nor a module-level name
# that is a hook's (``response``, ``request``, ``error``...): mitmproxy calls the
# script module's own functions as hooks too, so helper functions are reached
# through their module (``flows.close``, ``messages.response``), never imported
# by name.

import asyncio
import logging
import time

from mitmproxy import http
from mitmproxy.proxy.mode_specs import ReverseMode

import guard.mitm.pii as pii_hooks
from guard.challenge.flow import MAX_FORM, login_of
from guard.clientip import forwarding_chains, resolve
from guard.config import Brand
from guard.engine import Action, Decision, Engine, RequestFacts, ResponseFacts
from guard.http.pages import Pages
from guard.http.settings import MAX_TARPIT
from guard.http.target import match_path
from guard.mitm import flows, messages
from guard.mitm.challenge import ChallengeHooks, Release
from guard.mitm.flows import FlowState, Stage
from guard.mitm.lifecycle import Lifecycle, Settings
from guard.pii.flow import RANGE_FIELDS

log = logging.getLogger("guard.mitm")


class GuardAddon(Lifecycle):
    """The per-flow hooks; the lifecycle (option, start, stop, reload) is ``Lifecycle``'s."""

    def __init__(self) -> None:
        super().__init__()
        self._flows: dict[str, FlowState] = {}
        self._closed_pages = Pages(Brand())      # for the 503s before a config is loaded

    async def _stop(self) -> None:
        """The flows in progress go with the engine that decided them."""
        await super()._stop()
        self._flows.clear()

    # ---- hooks ----------------------------------------------------------------------------------

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.error is not None or not flow.live or flow.is_replay:
            return
        engine, settings = self.engine, self.settings
        if engine is None or settings is None:
            flow.response = flows.page(self._closed_pages, 503, flow.request.headers.get("Accept", ""))
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
            upstream_s = flows.upstream_seconds(flow.request, resp)
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
        peer = flows.peer(flow)
        trusted = flows.trusted(settings, peer)
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
        length = flows.content_length(req)
        too_large = length is not None and length > settings.max_body
        challenge = self._challenge
        if not decision.forwards:
            if too_large or (length is None and "chunked" in headers.get("Transfer-Encoding", "")):
                flows.close(flow, state, flows.refusal_status(decision))
            else:
                self._refuse(flow, state, decision)
        elif challenge is not None and challenge.answers(req.method, path):
            if length is not None and length > MAX_FORM:
                flows.close(flow, state, 413)
            else:
                state.stage = Stage.ANSWER
                req.stream = False  # answered in ``request`` from the whole form, never forwarded
        elif login is not None:
            if too_large:
                flows.close(flow, state, 413)
            else:
                req.stream = False  # buffered: ``request`` sees it whole (overrides stream_large_bodies)
        else:
            if decision.action is Action.TARPIT and decision.delay > 0 and not decision.shadow:
                await asyncio.sleep(min(decision.delay, MAX_TARPIT))
            if isinstance(flow.client_conn.proxy_mode, ReverseMode):
                flows.forwarding_headers(headers, flows.forwarding(settings, facts))
            pii = settings.pii
            if pii is not None and "Range" in headers and pii.whole_only(facts.path):
                for name in RANGE_FIELDS:
                    headers.pop(name, None)   # a byte range of a page is never rewritten (PIIRuntime.whole_only)
            sub = pii_hooks.submission(pii, facts, req, length, settings.max_body) if pii is not None else None
            if sub is None or not sub.buffered:
                req.stream = True
                if sub is not None:
                    await self._swap(flow, state, settings, sub)  # tokens in the query only: the body streams
            elif too_large:
                flows.close(flow, state, 413)  # a form over the limit, as for logins
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
            flows.forwarding_headers(flow.request.headers, flows.forwarding(settings, facts))

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
            flows.forwarding_headers(flow.request.headers, flows.forwarding(settings, state.facts))
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
            flow.response = flows.page(self._closed_pages, 500, flow.request.headers.get("Accept", ""))

    def _account(self, flow: http.HTTPFlow, t0: float) -> None:
        state = self._flows.get(flow.id)
        if state is not None:
            state.overhead += time.perf_counter() - t0
            flows.mark(flow, state)

    def _refuse(self, flow: http.HTTPFlow, state: FlowState, decision: Decision) -> None:
        state.decision = decision
        self._answer(flow, state, flows.refusal_status(decision))

    def _answer(self, flow: http.HTTPFlow, state: FlowState, status: int) -> http.Response:
        pages = self.settings.pages if self.settings is not None else self._closed_pages
        flow.request.stream = False  # mitmproxy refuses a response together with a streamed request
        resp = flow.response = flows.page(pages, status, flow.request.headers.get("Accept", ""))
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



addons = [GuardAddon()]

"""The challenge action over HTTP: hold, show the interstitial, release on the right code.

Three entry points from the proxy handler:

- ``step_up``: a risky login the engine chose to challenge.  The upstream judges
  the password first; its whole answer (status, headers with every Set-Cookie,
  body) is held sealed in the store and the browser gets the interstitial, the
  same page whether the password was right or wrong (no validity oracle).
- ``before_upstream``: the login request itself is held and forwarded once,
  only after the right code (for logins with side effects).
- ``answer``: the POST of the code form.  A passed code releases the held answer
  exactly as the upstream sent it (plus the trusted-device cookie), so the
  browser ends up logged in as the upstream intended; nothing is replayed.
  With TOTP self-enrolment on, the authenticator-app offer comes in between;
  it posts to the same path and ends in the same release.
- In ``before_upstream`` mode the passed code forwards the held request once and
  the upstream's answer is streamed back.  The code proved the second factor,
  not the password: only when the upstream accepts the login does the browser
  get the trusted-device cookie and the engine learn a released login.

Every hold lives in the store, so another instance can answer it and it
survives a restart with Redis.  A store failure here never releases a held
answer: it is a 503 page.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from aiohttp import ClientError, ClientResponse, web
from multidict import CIMultiDict

from guard.engine import Decision, RequestFacts, ResponseFacts
from guard.engine.core import LoginState, request_cookies
from guard.http.bodies import read_response_head
from guard.http.headers import HOP_BY_HOP, readable_encodings, request_headers
from guard.http.target import match_path, parse_target
from guard.http.upstream import failure_status
from guard.store.base import StoreError

if TYPE_CHECKING:
    from guard.challenge import Answer, Challenges, HeldMessage, Login, Page
    from guard.http.headers import Forwarding
    from guard.http.settings import Settings
    from guard.http.target import Target
    from guard.http.upstream import Upstream

log = logging.getLogger("guard.challenge")

MAX_FORM = 16 * 1024  # the code form is four short fields


def page_response(page: Page, extra_cookies: tuple[str, ...] = ()) -> web.Response:
    headers: CIMultiDict[str] = CIMultiDict(page.headers)
    for cookie in extra_cookies:
        headers.add("Set-Cookie", cookie)
    headers.popall("Content-Length", None)
    return web.Response(status=page.status, body=page.body, headers=headers)


def held_response(msg: HeldMessage, set_cookies: tuple[str, ...], restart: str) -> web.Response:
    """The upstream's held answer, as it sent it, with the cookies the challenge adds."""
    headers: CIMultiDict[str] = CIMultiDict()
    for k, v in msg.headers:
        if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
            headers.add(k, v)
    for cookie in set_cookies:
        headers.add("Set-Cookie", cookie)
    if msg.body_dropped:
        # The body was too large to hold: a redirect beats an empty body that looks complete.
        headers.popall("Content-Encoding", None)
        if "Location" not in headers:
            headers["Location"] = restart
        return web.Response(status=303, headers=headers)
    return web.Response(status=msg.status, body=msg.body, headers=headers)


class ChallengeFlow:
    def __init__(self, svc: Challenges, upstream: Upstream) -> None:
        self.svc = svc
        self.upstream = upstream
        self.path = svc.settings.path
        self.mode = svc.settings.mode

    def _login(self, facts: RequestFacts, secure: bool) -> Login | None:
        from guard.challenge import Login

        state = facts.scratch
        if not isinstance(state, LoginState) or state.ctx is None:
            return None
        ctx = state.ctx
        if ctx.username is None or ctx.user_key is None:
            return None
        headers = facts.headers
        return Login(
            ctx.username, ctx.user_key, facts.client_ip,
            accept=headers.get("Accept", ""), accept_language=headers.get("Accept-Language", ""), secure=secure,
        )

    async def step_up(
        self, request: web.BaseRequest, rt: Settings, facts: RequestFacts, target: Target,
        fwd: Forwarding, decision: Decision,
    ) -> tuple[web.StreamResponse | None, int, float | None]:
        """(response, status for the log, upstream seconds); response None: refuse with the block page."""
        engine = rt.engine
        login = self._login(facts, facts.scheme == "https")
        if login is None:
            return None, 403, None  # no username to send a code for: the challenge cannot be met
        out = readable_encodings(request_headers(request.headers, fwd, rt.host_override or target.host))
        cap = self.svc.settings.max_held_body
        try:
            up = await self.upstream.request(request.method, target.path_qs, out, facts.body, rt.upstream_timeout)
        except (TimeoutError, ClientError, OSError) as exc:
            status = failure_status(exc)
            return rt.pages.response(status, request.headers.get("Accept", "")), status, None
        try:
            body = bytearray()
            while len(body) <= cap:
                chunk = await up.content.readany()
                if not chunk:
                    break
                body += chunk
            peek = bytes(body[: max(engine.response_peek(facts.login or ""), 0)])
            outcome = await engine.on_response(facts, ResponseFacts(up.status, up.headers, peek), seen=False)
            headers = [(k, v) for k, v in up.headers.items()]
            msg = self.svc.response_message(up.status, headers, bytes(body) if len(body) <= cap else bytes(body) + b"x")
        finally:
            up.release()
        try:
            page = await self.svc.step_up(login, msg, password_ok=outcome == "success")
        except StoreError:
            return rt.pages.response(503, request.headers.get("Accept", "")), 503, None
        engine.observer.challenge("issued", "step_up")
        return page_response(page), page.status, None

    async def before_upstream(
        self, request: web.BaseRequest, rt: Settings, facts: RequestFacts, target: Target, fwd: Forwarding
    ) -> tuple[web.StreamResponse | None, int]:
        login = self._login(facts, facts.scheme == "https")
        if login is None:
            return None, 403
        out = request_headers(request.headers, fwd, rt.host_override or target.host)
        if rt.engine.response_peek(facts.login or ""):
            out = readable_encodings(out)  # the outcome of the forwarded login is classified on release
        try:
            msg = self.svc.request_message(request.method, target.path_qs, out, facts.body or b"")
        except ValueError:
            return rt.pages.response(413, request.headers.get("Accept", "")), 413
        try:
            page = await self.svc.before_upstream(login, msg)
        except StoreError:
            return rt.pages.response(503, request.headers.get("Accept", "")), 503
        rt.engine.observer.challenge("issued", "before_upstream")
        return page_response(page), page.status

    async def answer(self, request: web.BaseRequest, rt: Settings, facts: RequestFacts) -> web.StreamResponse:
        """The code form's POST: a page, or the held answer released."""
        accept = request.headers.get("Accept", "")
        raw = await request.content.read(MAX_FORM + 1)
        if len(raw) > MAX_FORM:
            return rt.pages.response(413, accept, close=True)
        form = dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
        secure = facts.scheme == "https"
        try:
            ans: Answer = await self.svc.answer(
                form, request_cookies(request.headers), client_ip=facts.client_ip, accept=accept,
                accept_language=request.headers.get("Accept-Language", ""), secure=secure,
            )
        except StoreError:
            return rt.pages.response(503, accept)
        engine = rt.engine
        verdict = ans.verdict.value if ans.verdict is not None else "forbidden"
        engine.observer.challenge("exhausted" if ans.locked else _EVENT.get(verdict, verdict))
        if ans.flag_source:
            reason = "challenge-guess-budget" if ans.locked else "challenge-exhausted"
            await engine.flag_source(facts.client_ip, reason)
        if ans.page is not None:
            return page_response(ans.page)
        msg = ans.released
        if msg is None:  # pragma: no cover - the service sets exactly one of page / released
            return rt.pages.response(500, accept)
        if not msg.is_request:
            if ans.account_key is not None and ans.login_id is not None:
                await engine.login_released(ans.login_id, ans.account_key, facts.client_ip)
            return held_response(msg, ans.set_cookies, self.svc.settings.restart_path)
        return await self._forward_held(request, rt, facts, ans, msg)

    async def _forward_held(
        self, request: web.BaseRequest, rt: Settings, facts: RequestFacts, ans: Answer, msg: HeldMessage
    ) -> web.StreamResponse:
        """before_upstream: the held login goes to the upstream once; its answer is streamed back.

        Streamed, not read whole: what a login answers is the upstream's business and
        has no size limit of ours.  Only the classifier's peek is read first.
        """
        from guard.http.proxy import ProxyResponse

        engine = rt.engine
        target = parse_target(msg.target)
        endpoint = engine.match_login(msg.method, match_path(target.path)) if target is not None else None
        peek = engine.response_peek(endpoint) if endpoint is not None else 0
        try:
            up = await self.upstream.request(msg.method, msg.target, list(msg.headers), msg.body, rt.upstream_timeout)
        except (TimeoutError, ClientError, OSError) as exc:
            return rt.pages.response(failure_status(exc), request.headers.get("Accept", ""))
        try:
            try:
                first = await read_response_head(up, peek) if peek else up.content.read_nowait()
            except (TimeoutError, ClientError, OSError) as exc:
                return rt.pages.response(failure_status(exc), request.headers.get("Accept", ""))
            accepted = endpoint is not None and self._outcome(rt, endpoint, up, first) == "success"
            if accepted and ans.account_key is not None and ans.login_id is not None:
                await engine.login_released(ans.login_id, ans.account_key, facts.client_ip)
            resp = ProxyResponse(up.status, up.reason, up.headers)  # hop-by-hop fields stripped
            for cookie in (*ans.set_cookies, *(ans.if_accepted if accepted else ())):
                resp.headers.add("Set-Cookie", cookie)
            try:
                await resp.prepare(request)
                if first:
                    await resp.write(first)
                while chunk := await up.content.readany():
                    await resp.write(chunk)
                await resp.write_eof()
            except ConnectionError:
                up.close()  # the client left: the rest is not worth reading
            except (TimeoutError, ClientError, OSError):
                # mid-body: a cut connection is the only honest signal left (RFC 9112 section 8)
                up.close()
                request.protocol.force_close()
            return resp
        finally:
            up.release()

    @staticmethod
    def _outcome(rt: Settings, endpoint: str, up: ClientResponse, first: bytes) -> str:
        """What the upstream said of the forwarded login (``success`` / ``failure`` / ``unknown``)."""
        from guard.engine.outcome import classify

        ep = rt.engine.rt.logins.endpoints.get(endpoint)
        return "unknown" if ep is None else str(classify(ep.outcome, up.status, up.headers, first))


_EVENT: dict[str, Any] = {
    "passed": "passed", "wrong": "failed", "exhausted": "exhausted", "expired": "expired",
    "code_expired": "expired", "resent": "resent", "resend_limited": "resend_limited",
}
"""Verdicts as the metrics name them; the offer's own (``enrolled``, ...) pass through: a passed code
that leads to the offer was counted ``passed`` already."""

"""The challenge action over HTTP (aiohttp): hold, show the interstitial, release on the right code.

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

What the engine and the service make of each step is shared with the
mitmproxy addon (``guard.challenge.flow``); this module only moves bytes.
Every hold lives in the store, so another instance can answer it and it
survives a restart with Redis.  A store failure here never releases a held
answer: it is a 503 page.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import ClientError, web
from multidict import CIMultiDict

from guard.challenge import flow as steps
from guard.engine import Decision, RequestFacts
from guard.engine.core import request_cookies
from guard.http.bodies import read_response_head
from guard.http.headers import readable_encodings, request_headers
from guard.http.target import match_path, parse_target
from guard.http.upstream import failure_status
from guard.store.base import StoreError

if TYPE_CHECKING:
    from guard.challenge import Answer, Challenges, HeldMessage, Page
    from guard.http.headers import Forwarding
    from guard.http.settings import Settings
    from guard.http.target import Target
    from guard.http.upstream import Upstream


MAX_FORM = steps.MAX_FORM


def page_response(page: Page) -> web.Response:
    headers: CIMultiDict[str] = CIMultiDict(page.headers)
    headers.popall("Content-Length", None)
    return web.Response(status=page.status, body=page.body, headers=headers)


class ChallengeFlow:
    def __init__(self, svc: Challenges, upstream: Upstream) -> None:
        self.svc = svc
        self.upstream = upstream
        self.path = svc.settings.path
        self.mode = svc.settings.mode

    async def step_up(
        self, request: web.BaseRequest, rt: Settings, facts: RequestFacts, target: Target,
        fwd: Forwarding, decision: Decision,
    ) -> tuple[web.StreamResponse | None, int, float | None]:
        """(response, status for the log, upstream seconds); response None: refuse with the block page."""
        login = steps.login_of(facts)
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
            while len(body) <= cap:  # one byte over the cap is enough: the body is dropped, not refused
                chunk = await up.content.readany()
                if not chunk:
                    break
                body += chunk
            fields = list(up.headers.items())
            status = up.status
        finally:
            up.release()
        try:
            page = await steps.hold_answer(self.svc, rt.engine, facts, login, status, fields, bytes(body))
        except StoreError:
            return rt.pages.response(503, request.headers.get("Accept", "")), 503, None
        return page_response(page), page.status, None

    async def before_upstream(
        self, request: web.BaseRequest, rt: Settings, facts: RequestFacts, target: Target, fwd: Forwarding
    ) -> tuple[web.StreamResponse | None, int]:
        login = steps.login_of(facts)
        if login is None:
            return None, 403
        out = request_headers(request.headers, fwd, rt.host_override or target.host)
        if rt.engine.response_peek(facts.login or ""):
            out = readable_encodings(out)  # the outcome of the forwarded login is classified on release
        try:
            page = await steps.hold_request(
                self.svc, rt.engine, login, request.method, target.path_qs, out, facts.body or b""
            )
        except ValueError:
            return rt.pages.response(413, request.headers.get("Accept", "")), 413
        except StoreError:
            return rt.pages.response(503, request.headers.get("Accept", "")), 503
        return page_response(page), page.status

    async def answer(self, request: web.BaseRequest, rt: Settings, facts: RequestFacts) -> web.StreamResponse:
        """The code form's POST: a page, or the held answer released."""
        accept = request.headers.get("Accept", "")
        raw = await request.content.read(MAX_FORM + 1)
        if len(raw) > MAX_FORM:
            return rt.pages.response(413, accept, close=True)
        try:
            ans = await steps.answer(self.svc, rt.engine, facts, steps.read_form(raw), request_cookies(request.headers))
        except StoreError:
            return rt.pages.response(503, accept)
        if ans.page is not None:
            return page_response(ans.page)
        msg = ans.released
        if msg is None:  # pragma: no cover - the service sets exactly one of page / released
            return rt.pages.response(500, accept)
        if not msg.is_request:
            return page_response(steps.released(msg, ans.set_cookies, self.svc.settings.restart_path))
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
        accept = request.headers.get("Accept", "")
        try:
            up = await self.upstream.request(msg.method, msg.target, list(msg.headers), msg.body, rt.upstream_timeout)
        except (TimeoutError, ClientError, OSError) as exc:
            return rt.pages.response(failure_status(exc), accept)
        try:
            try:
                first = await read_response_head(up, peek) if peek else up.content.read_nowait()
            except (TimeoutError, ClientError, OSError) as exc:
                return rt.pages.response(failure_status(exc), accept)
            cookies = await steps.after_release(engine, facts, ans, endpoint, up.status, up.headers, first)
            resp = ProxyResponse(up.status, up.reason, up.headers)  # hop-by-hop fields stripped
            for cookie in cookies:
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

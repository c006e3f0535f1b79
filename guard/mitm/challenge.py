"""The challenge action under mitmproxy: the interstitial, the code form, the held answer or request.

The same flow as ``guard run`` (``guard.http.challengeflow``), on mitmproxy's
hooks; the steps themselves are ``guard.challenge.flow``, shared by both:

- step-up (``challenge.mode: step_up``): the challenged login goes upstream;
  its answer (buffered, like every login answer) is held sealed in the store
  and replaced by the interstitial, whether the password was right or not.
- before_upstream: the login request is held in ``request`` and answered
  with the interstitial; the upstream sees nothing yet.
- the code form: a POST to ``challenge.path`` is buffered and answered by the
  addon in ``request``, never by the upstream.  A passed code releases the
  held answer as the upstream sent it (plus the challenge's cookies), or
  turns the flow's request into the held login, which mitmproxy then
  forwards once; that answer gets its cookies in ``response``.

Every method answers a status (the addon's branded page) instead of raising
for a store failure: 503, and a held answer is never released without its code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from mitmproxy import http

import guard.challenge.flow as steps
from guard.engine.core import request_cookies
from guard.http.target import match_path
from guard.mitm.messages import cookie_header, fields, pairs, response, set_raw
from guard.store.base import StoreError

if TYPE_CHECKING:
    from guard.challenge import Answer, Challenges, HeldMessage, Login
    from guard.engine import Engine, RequestFacts


class Release(NamedTuple):
    """before_upstream: a passed code turned the flow into the held login; its answer is judged by this."""

    answer: Answer
    endpoint: str | None   # the login endpoint the held request goes to (its outcome decides the cookies)


class ChallengeHooks:
    """One addon's challenge service, driven from the hooks; built at start, closed at shutdown."""

    __slots__ = ("engine", "svc")

    def __init__(self, svc: Challenges, engine: Engine) -> None:
        self.svc = svc
        self.engine = engine

    @property
    def before_upstream(self) -> bool:
        return self.svc.settings.mode == "before_upstream"

    def answers(self, method: str, path: str) -> bool:
        """Whether this request is the code form's POST, which the addon answers itself."""
        return method == "POST" and path == self.svc.settings.path

    async def hold_answer(self, resp: http.Response, facts: RequestFacts, login: Login) -> http.Response | int:
        """Step-up: the interstitial instead of the upstream's answer, which is held as it came (coding and all)."""
        try:
            page = await steps.hold_answer(
                self.svc, self.engine, facts, login, resp.status_code, pairs(resp.headers), resp.raw_content or b"",
                readable=resp.get_content(strict=False),  # mitmproxy decodes any coding for the classifier
            )
        except StoreError:
            return 503
        return response(page.status, page.headers, page.body)

    async def hold_request(self, req: http.Request, login: Login) -> http.Response | int:
        """before_upstream: the interstitial; the login request is held as it would have gone upstream."""
        try:
            page = await steps.hold_request(
                self.svc, self.engine, login, req.method, req.path, pairs(req.headers), req.raw_content or b"",
            )
        except ValueError:
            return 413  # over challenge.max_held_body: it could not be forwarded whole later
        except StoreError:
            return 503
        return response(page.status, page.headers, page.body)

    async def answer(self, req: http.Request, facts: RequestFacts) -> http.Response | int | Release:
        """The code form's POST: a page, the held answer released, or (``Release``) the held login to forward."""
        raw = req.raw_content or b""
        if len(raw) > steps.MAX_FORM:
            return 413
        cookies = request_cookies(cookie_header(req.headers))
        try:
            ans = await steps.answer(self.svc, self.engine, facts, steps.read_form(raw), cookies)
        except StoreError:
            return 503
        if ans.page is not None:
            return response(ans.page.status, ans.page.headers, ans.page.body)
        msg = ans.released
        if msg is None:  # the service sets exactly one of page / released
            return 500
        if not msg.is_request:
            out = steps.released(msg, ans.set_cookies, self.svc.settings.restart_path)
            return response(out.status, out.headers, out.body)
        _become(req, msg)
        path = match_path(msg.target.partition("?")[0])
        return Release(ans, self.engine.match_login(msg.method, path))

    async def released_answer(self, resp: http.Response, facts: RequestFacts, release: Release) -> None:
        """The upstream answered the released login: the challenge's cookies (the device one only if accepted)."""
        peek = self.engine.response_peek(release.endpoint) if release.endpoint is not None else 0
        head = (resp.get_content(strict=False) or b"")[:peek] if peek else b""
        cookies = await steps.after_release(
            self.engine, facts, release.answer, release.endpoint, resp.status_code, resp.headers, head
        )
        for cookie in cookies:
            resp.headers.add("Set-Cookie", cookie)

    async def close(self) -> None:
        await self.svc.aclose()


def _become(req: http.Request, msg: HeldMessage) -> None:
    """Turn the code form's request into the held login: mitmproxy then forwards that, once."""
    req.method = msg.method
    req.path = msg.target
    req.headers = fields(msg.headers)
    set_raw(req, msg.body)

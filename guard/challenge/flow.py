"""The challenge between the engine and the service, with no transport: what both proxies do alike.

``Challenges`` (``service``) holds, verifies and releases; the engine counts
and learns.  Between them sit a few steps that are the same whichever proxy
carries the bytes (``guard.http.challengeflow`` for aiohttp, ``guard.mitm``
for mitmproxy): who the login is, what the engine is told about a held
answer, which events the metrics count, what a released login teaches the
engine, and how a released answer looks on the wire.  They live here, once;
each adapter only reads the upstream's answer or the code form and sends
what comes back.

``StoreError`` propagates from every coroutine here: the adapter answers 503,
and a held answer is never released without its code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from multidict import CIMultiDict

from guard.challenge.pages import Page
from guard.challenge.service import Answer, Login
from guard.engine.core import LoginState
from guard.engine.facts import ResponseFacts
from guard.forwarding import HOP_BY_HOP

if TYPE_CHECKING:
    from guard.challenge.sealed import HeldMessage
    from guard.challenge.service import Challenges
    from guard.engine import Engine, RequestFacts

MAX_FORM = 16 * 1024
"""Bytes of a code form read at most: it is four short fields, anything longer is not one."""

EVENTS: Mapping[str, str] = {
    "passed": "passed", "wrong": "failed", "exhausted": "exhausted", "expired": "expired",
    "code_expired": "expired", "resent": "resent", "resend_limited": "resend_limited",
}
"""An answer's verdict as the metrics name it (``guard_challenges{event=...}``); no verdict is "forbidden"."""


def login_of(facts: RequestFacts) -> Login | None:
    """The login the engine parsed, as the service needs it; None when it has no username to send a code for."""
    state = facts.scratch
    if not isinstance(state, LoginState) or state.ctx is None:
        return None
    ctx = state.ctx
    if ctx.username is None or ctx.user_key is None:
        return None
    headers = facts.headers
    return Login(
        ctx.username, ctx.user_key, facts.client_ip,
        accept=headers.get("Accept", ""), accept_language=headers.get("Accept-Language", ""),
        secure=facts.scheme == "https",
    )


async def hold_answer(
    svc: Challenges, engine: Engine, facts: RequestFacts, login: Login, status: int,
    fields: Sequence[tuple[str, str]], body: bytes, readable: bytes | None = None,
) -> Page:
    """Step-up: the upstream answered a challenged login; hold that answer, return the interstitial.

    ``fields`` (every header line, repeats kept) and ``body`` are the answer as
    the upstream sent it: what a release gives back byte for byte.
    ``readable`` is the body the outcome classifier may read, when the adapter
    has it decoded already (default: ``body``).  The engine learns the outcome
    with ``seen=False``: the client does not get the answer yet, and the page
    is the same either way.
    """
    peek = max(engine.response_peek(facts.login or ""), 0)
    head = (body if readable is None else readable)[:peek]
    outcome = await engine.on_response(facts, ResponseFacts(status, CIMultiDict(fields), head), seen=False)
    msg = svc.response_message(status, fields, body)
    page = await svc.step_up(login, msg, password_ok=outcome == "success")
    engine.observer.challenge("issued", "step_up")
    return page


async def hold_request(
    svc: Challenges, engine: Engine, login: Login, method: str, target: str,
    headers: Sequence[tuple[str, str]], body: bytes,
) -> Page:
    """before_upstream: hold the login request itself (headers as they would go upstream); the interstitial.

    ``ValueError`` when the body is over ``max_held_body`` (the adapter answers
    413): a held request cannot be forwarded without its body.
    """
    msg = svc.request_message(method, target, headers, body)
    page = await svc.before_upstream(login, msg)
    engine.observer.challenge("issued", "before_upstream")
    return page


def read_form(raw: bytes) -> dict[str, str]:
    """The code form's fields (``hold``, ``csrf``, ``code``, ``op``); a malformed body is simply empty fields."""
    return dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))


async def answer(
    svc: Challenges, engine: Engine, facts: RequestFacts, form: Mapping[str, str], cookies: Mapping[str, str]
) -> Answer:
    """A POST of the code form (or of the authenticator-app offer), answered by the service; the engine's part.

    Every verdict is a metric.  A client that spent a hold's tries or the
    account's guess budget is flagged (rules with ``flagged: ip`` see it).  A
    released step-up answer is a login now, seen by whoever typed the code
    (history and exposure ledger); a released before_upstream request is one
    only once the upstream accepts it (``after_release``).  The adapter then
    shows ``answer.page``, or sends ``answer.released`` (``released``), or
    forwards it once.
    """
    headers = facts.headers
    ans = await svc.answer(
        form, cookies, client_ip=facts.client_ip, accept=headers.get("Accept", ""),
        accept_language=headers.get("Accept-Language", ""), secure=facts.scheme == "https",
    )
    verdict = ans.verdict.value if ans.verdict is not None else "forbidden"
    engine.observer.challenge("exhausted" if ans.locked else EVENTS.get(verdict, verdict))
    if ans.flag_source:
        await engine.flag_source(facts.client_ip, "challenge-guess-budget" if ans.locked else "challenge-exhausted")
    msg = ans.released
    if msg is not None and not msg.is_request and ans.account_key is not None and ans.login_id is not None:
        await engine.login_released(ans.login_id, ans.account_key, facts.client_ip)
    return ans


async def after_release(
    engine: Engine, facts: RequestFacts, ans: Answer, endpoint: str | None, status: int,
    headers: Mapping[str, str], head: bytes,
) -> tuple[str, ...]:
    """before_upstream: the upstream answered the released login request; the cookies its answer gets.

    The code proved the second factor, not the password: only when the
    upstream accepts the login (its outcome, judged as for any login at
    ``endpoint``) does the browser get the trusted-device cookie and the engine
    learn a released login.  ``head``: the body's first bytes, decoded or in a
    coding the classifier reads.
    """
    from guard.engine.outcome import classify

    ep = engine.rt.logins.endpoints.get(endpoint) if endpoint is not None else None
    accepted = ep is not None and classify(ep.outcome, status, headers, head) == "success"
    if accepted and ans.account_key is not None and ans.login_id is not None:
        await engine.login_released(ans.login_id, ans.account_key, facts.client_ip)
    return (*ans.set_cookies, *(ans.if_accepted if accepted else ()))


def released(msg: HeldMessage, set_cookies: Iterable[str], restart: str) -> Page:
    """A held upstream answer as it goes to the client: as the upstream sent it, plus the challenge's cookies.

    Hop-by-hop fields and the length belong to the connection it came on, not
    to this one.  A body too large to have been held becomes a redirect to
    ``restart``: an empty body that looks complete would be worse.
    """
    headers = [(k, v) for k, v in msg.headers if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"]
    headers += [("Set-Cookie", cookie) for cookie in set_cookies]
    if not msg.body_dropped:
        return Page(msg.status, tuple(headers), msg.body)
    headers = [(k, v) for k, v in headers if k.lower() != "content-encoding"]
    if not any(k.lower() == "location" for k, _ in headers):
        headers.append(("Location", restart))
    return Page(303, tuple(headers), b"")

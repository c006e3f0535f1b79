"""One mitmproxy flow in the guard's terms: its state between hooks, and what the hooks read from it or set on it.

Small and stateless, so the hooks in ``guard.mitm.addon`` read as the steps
they take: who the peer is and whether it is trusted, what the request
declares, which status a refusal gets, the branded page, the forwarding
headers, and the marks mitmweb shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from mitmproxy import http

from guard.clientip import normalize, parse_ip
from guard.engine import PASS, Action, Decision, RequestFacts
from guard.forwarding import Forwarding, added, dropped
from guard.http.pages import _PAGE_HEADERS, Pages, wants_json

if TYPE_CHECKING:
    from guard.challenge.service import Login
    from guard.mitm.challenge import Release
    from guard.mitm.lifecycle import Settings
    from guard.mitm.pii import Submission
    from guard.pii.flow import Plan


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
    submission: Submission | None = None   # a body to swap PII tokens back in, in ``request``
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


def peer(flow: http.HTTPFlow) -> str:
    """The socket peer, canonical (``::ffff:1.2.3.4`` is ``1.2.3.4``), so bans and counters agree."""
    peername = flow.client_conn.peername
    if not peername:
        return ""
    host = str(peername[0])
    return normalize(host) or host


def trusted(settings: Settings, peer: str) -> bool:
    """Whether the peer's forwarding headers are believed (and kept for the upstream)."""
    if settings.trusted.empty:
        return False
    ip = parse_ip(peer)
    return ip is not None and ip in settings.trusted


def forwarding(settings: Settings, facts: RequestFacts) -> Forwarding:
    """This hop, for the forwarding headers: the Host the client asked for, the chain the trusted hops write."""
    return Forwarding(facts.peer, trusted(settings, facts.peer), facts.scheme, facts.host or None,
                      settings.config.forwarded_header)


def refusal_status(decision: Decision) -> int:
    return decision.status or (503 if decision.action is Action.UNAVAILABLE else 403)


def content_length(req: http.Request) -> int | None:
    value = req.headers.get("Content-Length")
    if value is None or not value.strip().isdigit():
        return None  # chunked, or malformed (mitmproxy has refused the malformed ones already)
    return int(value)


def upstream_seconds(req: http.Request, resp: http.Response) -> float:
    """From the request's last byte to the response head: the upstream's share of the wait."""
    start = req.timestamp_end or req.timestamp_start
    return max(0.0, resp.timestamp_start - start)


def close(flow: http.HTTPFlow, state: FlowState, status: int) -> None:
    """Refuse without an answer; the access log shows the status the page would have had."""
    state.status = status
    flow.kill()  # type: ignore[no-untyped-call]  # (untyped in mitmproxy)


def mark(flow: http.HTTPFlow, state: FlowState) -> None:
    """What the guard decided, where mitmweb shows it (plain values: metadata is saved with flows)."""
    decision = state.decision
    flow.metadata["loginguard"] = {
        "client_ip": state.facts.client_ip,
        "login": state.facts.login,
        "action": decision.action.value,
        "reasons": decision.reason_ids(),
        "status": state.status,
    }

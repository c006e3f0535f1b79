"""guard.challenge.service end to end: real SMTP (aiosmtpd), real stores, and the no-validity-oracle property.

The oracle property is checked where the client can see it: status, headers,
cookie names and shapes, and body bytes are identical for a right and a wrong
password once the random tokens (hold id, CSRF token, binding cookie value)
are replaced by placeholders; and the store holds the same keys with the same
value lengths.  Only the mailbox differs: the code goes out for the right one.
"""

from __future__ import annotations

import asyncio
import base64
import re
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from guard.challenge import Challenges, HeldMessage, Login, Mode, Page, State, Verdict
from guard.challenge.channels.totp import totp
from guard.challenge.devices import DeviceStatus, binding_cookie_name
from guard.challenge.pages import PAGE_CSP
from guard.challenge.settings import ChallengeSettings
from guard.engine.clock import VirtualClock
from guard.store import MemoryStore, RedisStore, Store
from tests.test_challenge_channels import Mailbox, Smtp, smtp_server

__all__ = ["smtp_server"]  # the fixture, used here

KEY = base64.urlsafe_b64encode(b"\x42" * 32).decode()
T0 = 1_700_000_000.0
SUCCESS = HeldMessage.response(
    302,
    [("Location", "/account"), ("Set-Cookie", "sid=VALID-SESSION; HttpOnly"), ("Set-Cookie", "pref=1")],
    b"",
    cap=262144,
)
FAILURE = HeldMessage.response(
    200, [("Content-Type", "text/html")], b"<p>Wrong ID or password</p>" * 40, cap=262144
)
ALICE = Login("alice@example.com", "acct-alice", "203.0.113.9", accept_language="en")


def make_settings(smtp: Smtp | None, **kw: Any) -> ChallengeSettings:
    data: dict[str, Any] = {
        "keys": [KEY],
        "dispatch_delay": 0,
        "languages": ["en", "ja"],
        "brand": {"title": "Example <Support>", "name": "Example", "support": "Call 0120"},
    }
    if smtp is not None:
        data["channels"] = {
            "email": {
                "host": "127.0.0.1",
                "port": smtp.port,
                "security": "none",
                "sender": "guard@example.com",
                "timeout": 5,
            }
        }
    data.update(kw)
    return ChallengeSettings.model_validate(data)


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    s: Store = (
        MemoryStore()
        if request.param == "memory"
        else RedisStore(request.getfixturevalue("redis_url"), timeout=2.0)
    )
    await s.start()
    yield s
    await s.close()


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(T0)


@pytest.fixture
async def svc(store: Store, smtp_server: Smtp, clock: VirtualClock) -> AsyncIterator[Challenges]:
    service = Challenges(make_settings(smtp_server), store, clock=clock)
    yield service
    await service.aclose()


# ---- helpers ---------------------------------------------------------------------------------------

_HOLD = re.compile(r'name="hold" value="([^"]+)"')
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def tokens(page: Page) -> tuple[str, str, str]:
    body = page.body.decode()
    hold, csrf = _HOLD.search(body), _CSRF.search(body)
    assert hold and csrf
    (cookie,) = page.header("Set-Cookie")
    return hold.group(1), csrf.group(1), cookie.split(";")[0].split("=", 1)[1]


def masked(page: Page) -> tuple[int, list[tuple[str, str]], bytes]:
    """The page with its random tokens replaced by placeholders (lengths checked first)."""
    hold, csrf, binding = tokens(page)
    assert (len(hold), len(csrf), len(binding)) == (22, 48, 22)
    body = page.body.replace(hold.encode(), b"<HOLD>").replace(csrf.encode(), b"<CSRF>")
    headers = [(k, v.replace(binding, "<BIND>")) for k, v in page.headers]
    return page.status, headers, body


def form(page: Page, code: str, op: str = "verify") -> dict[str, str]:
    hold, csrf, _ = tokens(page)
    return {"hold": hold, "csrf": csrf, "code": code, "op": op}


def cookies(page: Page) -> dict[str, str]:
    return {binding_cookie_name(False): tokens(page)[2]}


def mailed_code(smtp: Smtp, index: int = -1) -> str:
    match = re.search(r"^[ ]+(\d{6})\r?$", smtp.box.messages[index][1].get_content(), re.M)
    assert match
    return match.group(1)


# ---- the oracle property ---------------------------------------------------------------------------


async def test_same_page_headers_cookie_and_storage_for_right_and_wrong_password(
    svc: Challenges,
    store: Store,
    smtp_server: Smtp,
) -> None:
    right = await svc.step_up(ALICE, SUCCESS, password_ok=True)
    wrong = await svc.step_up(ALICE, FAILURE, password_ok=False)
    assert masked(right) == masked(wrong)
    assert right.status == 200
    assert dict(right.headers)["Content-Security-Policy"] == PAGE_CSP
    cookie = right.header("Set-Cookie")[0]
    assert cookie.endswith("; Max-Age=600; Path=/; HttpOnly; SameSite=Strict")
    for page in (right, wrong):  # nothing of the held answer leaks into the page
        assert (
            b"VALID-SESSION" not in page.body and b"Wrong ID" not in page.body and b"alice" not in page.body
        )
        assert not any("sid=" in v for v in page.header("Set-Cookie"))
    # Storage: the same keys, values of the same lengths.
    from guard.store import Get

    shapes = []
    for page in (right, wrong):
        hold = tokens(page)[0]
        values = await store.execute([Get(f"ch:{k}:{hold}") for k in "hctr"], T0)
        shapes.append([None if v is None else len(v) for v in values])
    assert shapes[0] == shapes[1]
    # Only the right password's code goes out, and it tells the owner the password is known.
    await svc.drain()
    assert len(smtp_server.box.messages) == 1
    assert "with your password" in smtp_server.box.messages[0][1].get_content()


async def test_wrong_codes_look_the_same_for_both_and_only_the_right_password_releases(
    svc: Challenges,
    smtp_server: Smtp,
) -> None:
    right = await svc.step_up(ALICE, SUCCESS, True)
    wrong = await svc.step_up(ALICE, FAILURE, False)
    await svc.drain()
    code = mailed_code(smtp_server)
    guess = f"{(int(code) + 1) % 10**6:06d}"
    pages = []
    for page in (right, wrong):
        a = await svc.answer(form(page, guess), cookies(page), client_ip=ALICE.client_ip)
        assert a.verdict is Verdict.WRONG and a.page is not None and a.released is None
        pages.append(a.page)
    assert pages[0].status == 422 and b"4 more" in pages[0].body
    assert pages[0].body.replace(tokens(right)[0].encode(), b"H").replace(
        tokens(right)[1].encode(), b"C"
    ) == pages[1].body.replace(tokens(wrong)[0].encode(), b"H").replace(tokens(wrong)[1].encode(), b"C")
    # The mailed code opens only the hold it was sent for.
    bad = await svc.answer(form(wrong, code), cookies(wrong), client_ip=ALICE.client_ip)
    assert bad.verdict is Verdict.WRONG and bad.released is None
    good = await svc.answer(form(right, code), cookies(right), client_ip=ALICE.client_ip)
    assert good.verdict is Verdict.PASSED and good.page is None and good.mode is Mode.STEP_UP
    assert good.released == SUCCESS
    assert any(c.startswith("lg-hold=;") and "Max-Age=0" in c for c in good.set_cookies)
    replay = await svc.answer(form(right, code), cookies(right), client_ip=ALICE.client_ip)
    assert replay.verdict is Verdict.EXPIRED and replay.page is not None and replay.page.status == 410


async def test_creation_time_does_not_depend_on_the_password(smtp_server: Smtp) -> None:
    """Interleaved timings of both kinds (memory store): medians within a loose factor.

    Sending is deferred, so a right password costs the same store and crypto work as a wrong one.
    """
    svc = Challenges(
        make_settings(
            smtp_server,
            dispatch_delay=0.5,
            send_limits={
                "per_source": {"count": 10**6, "window": 60},
                "per_account": {"count": 1, "window": 60},
            },
        ),
        MemoryStore(),
        clock=VirtualClock(T0),
    )
    samples: dict[bool, list[float]] = {True: [], False: []}
    for i in range(400):
        ok = i % 2 == 0
        start = time.perf_counter()
        await svc.step_up(ALICE, SUCCESS if ok else FAILURE, ok)
        samples[ok].append(time.perf_counter() - start)
    right, wrong = statistics.median(samples[True]), statistics.median(samples[False])
    print(f"median create: right {right * 1e6:.0f} us, wrong {wrong * 1e6:.0f} us")
    assert 0.5 < right / wrong < 2.0, (right, wrong)
    await svc.aclose(grace=0)


# ---- flows -----------------------------------------------------------------------------------------


async def test_brute_force_ends_in_too_many_tries(svc: Challenges, smtp_server: Smtp) -> None:
    page = await svc.step_up(ALICE, SUCCESS, True)
    await svc.drain()
    code = mailed_code(smtp_server)
    guess = f"{(int(code) + 1) % 10**6:06d}"
    verdicts = []
    for _ in range(5):
        a = await svc.answer(form(page, guess), cookies(page), client_ip=ALICE.client_ip)
        verdicts.append(a.verdict)
    assert verdicts == [Verdict.WRONG] * 4 + [Verdict.EXHAUSTED]
    assert a.account_key == "acct-alice" and a.page is not None and a.page.status == 429
    late = await svc.answer(form(page, code), cookies(page), client_ip=ALICE.client_ip)
    assert late.verdict is Verdict.EXPIRED and late.released is None


async def test_csrf_and_cookie_are_required(svc: Challenges) -> None:
    page = await svc.step_up(ALICE, SUCCESS, True)
    other = await svc.step_up(ALICE, SUCCESS, True)
    for f, c in [
        (form(page, "1"), {}),
        (form(page, "1"), cookies(other)),
        ({**form(page, "1"), "csrf": "x"}, cookies(page)),
    ]:
        a = await svc.answer(f, c, client_ip=ALICE.client_ip)
        assert a.verdict is None and a.page is not None and a.page.status == 403
    # a refused request did not use a try
    a = await svc.answer(form(page, "000000"), cookies(page), client_ip=ALICE.client_ip)
    assert a.page is not None and b"4 more" in a.page.body


async def test_expired_hold_and_expired_code(svc: Challenges, clock: VirtualClock, smtp_server: Smtp) -> None:
    page = await svc.step_up(ALICE, SUCCESS, True)
    await svc.drain()
    code = mailed_code(smtp_server)
    clock.advance(301)
    a = await svc.answer(form(page, code), cookies(page), client_ip=ALICE.client_ip)
    assert a.verdict is Verdict.CODE_EXPIRED and a.page is not None and b"expired" in a.page.body
    r = await svc.answer(form(page, "", "resend"), cookies(page), client_ip=ALICE.client_ip)
    assert r.verdict is Verdict.RESENT and r.page is not None and r.page.status == 200
    await svc.drain()
    new_code = mailed_code(smtp_server)
    clock.advance(300)  # the hold (600 s) is over now
    a = await svc.answer(form(page, new_code), cookies(page), client_ip=ALICE.client_ip)
    assert a.verdict is Verdict.EXPIRED and a.page is not None and a.page.status == 410


async def test_resend_limit_and_resend_for_a_failed_password(svc: Challenges, smtp_server: Smtp) -> None:
    right = await svc.step_up(ALICE, SUCCESS, True)
    wrong = await svc.step_up(ALICE, FAILURE, False)
    seen: dict[str, list[tuple[Verdict | None, int]]] = {"right": [], "wrong": []}
    for name, page in (("right", right), ("wrong", wrong)):
        for _ in range(4):
            a = await svc.answer(form(page, "", "resend"), cookies(page), client_ip=ALICE.client_ip)
            assert a.page is not None
            seen[name].append((a.verdict, a.page.status))
    assert seen["right"] == seen["wrong"] == [(Verdict.RESENT, 200)] * 3 + [(Verdict.RESEND_LIMITED, 429)]
    await svc.drain()
    assert len(smtp_server.box.messages) == 4  # 1 + 3 resends, all for the right password


async def test_source_rate_limit_is_visible_and_symmetric(store: Store, smtp_server: Smtp) -> None:
    svc = Challenges(
        make_settings(smtp_server, send_limits={"per_source": {"count": 2, "window": 600}}),
        store,
        clock=VirtualClock(T0),
    )
    pages = [await svc.step_up(ALICE, SUCCESS if i % 2 else FAILURE, bool(i % 2)) for i in range(4)]
    assert [p.status for p in pages] == [200, 200, 429, 429]
    assert pages[2].body == pages[3].body and pages[2].headers == pages[3].headers
    other_ip = Login("alice@example.com", "acct-alice", "198.51.100.1")
    assert (await svc.step_up(other_ip, SUCCESS, True)).status == 200
    await svc.aclose()


async def test_account_send_limit_is_silent(store: Store, smtp_server: Smtp) -> None:
    svc = Challenges(
        make_settings(smtp_server, send_limits={"per_account": {"count": 1, "window": 600}}),
        store,
        clock=VirtualClock(T0),
    )
    first = await svc.step_up(ALICE, SUCCESS, True)
    second = await svc.step_up(ALICE, SUCCESS, True)
    await svc.drain()
    assert len(smtp_server.box.messages) == 1
    assert masked(first) == masked(second)  # the client cannot tell
    assert svc.stats["limited:account"] == 1
    await svc.aclose()


async def test_channel_down_gives_the_same_failed_page_to_both(store: Store) -> None:
    from tests.redisserver import free_port

    dead = Smtp(free_port(), Mailbox())
    svc = Challenges(make_settings(dead), store, clock=VirtualClock(T0))
    start = time.monotonic()
    assert (await svc.check_channels())["email"] is False
    assert time.monotonic() - start < 2
    right = await svc.step_up(ALICE, SUCCESS, True)
    wrong = await svc.step_up(ALICE, FAILURE, False)
    assert right.status == wrong.status == 503
    assert right.body == wrong.body and right.headers == wrong.headers
    assert b"could not send a code" in right.body and b"Call 0120" in right.body
    await svc.aclose()


async def test_health_loop_probes_in_the_background(store: Store, smtp_server: Smtp) -> None:
    from tests.redisserver import free_port

    svc = Challenges(make_settings(Smtp(free_port(), Mailbox())), store, clock=VirtualClock(T0))
    await svc.start()
    for _ in range(100):
        if not svc.healthy["email"]:
            break
        await asyncio.sleep(0.02)
    assert svc.healthy == {"totp": True, "email": False}
    await svc.aclose()
    up = Challenges(make_settings(smtp_server), store, clock=VirtualClock(T0))
    assert (await up.check_channels())["email"] is True
    await up.aclose()


async def test_a_failing_send_is_logged_not_shown(store: Store) -> None:
    """The relay dies after the health check: the page stays the same, the failure goes to stats."""
    from tests.redisserver import free_port

    svc = Challenges(make_settings(Smtp(free_port(), Mailbox())), store, clock=VirtualClock(T0))
    page = await svc.step_up(ALICE, SUCCESS, True)
    await svc.drain()
    assert page.status == 200 and svc.stats["failed:email:unreachable"] == 1
    await svc.aclose()


async def test_before_upstream_releases_the_request_once(svc: Challenges, smtp_server: Smtp) -> None:
    request = svc.request_message(
        "POST",
        "/login",
        [("Content-Type", "application/x-www-form-urlencoded")],
        b"id=alice%40example.com&password=pw",
    )
    page = await svc.before_upstream(ALICE, request)
    assert page.status == 200
    await svc.drain()
    # The password was not checked: the mail must not claim it was.
    body = smtp_server.box.messages[0][1].get_content()
    assert "trying to sign in" in body and "with your password" not in body
    a = await svc.answer(form(page, mailed_code(smtp_server)), cookies(page), client_ip=ALICE.client_ip)
    assert a.verdict is Verdict.PASSED and a.mode is Mode.BEFORE_UPSTREAM and a.released == request
    again = await svc.answer(form(page, mailed_code(smtp_server)), cookies(page), client_ip=ALICE.client_ip)
    assert again.released is None


async def test_cross_instance_with_redis(redis_url: str, smtp_server: Smtp) -> None:
    """Issued by one guard, answered by another (and so also after a restart): state lives in Redis."""
    stores = [RedisStore(redis_url, timeout=2.0), RedisStore(redis_url, timeout=2.0)]
    one, two = (Challenges(make_settings(smtp_server), s, clock=VirtualClock(T0)) for s in stores)
    page = await one.step_up(ALICE, SUCCESS, True)
    await one.drain()
    await one.aclose()
    await stores[0].close()
    a = await two.answer(form(page, mailed_code(smtp_server)), cookies(page), client_ip="192.0.2.1")
    assert a.verdict is Verdict.PASSED and a.released == SUCCESS
    await two.aclose()
    await stores[1].close()


async def test_trusted_device_after_a_passed_challenge(
    svc: Challenges, smtp_server: Smtp, clock: VirtualClock
) -> None:
    assert svc.device({}, "acct-alice", secure=True).status is DeviceStatus.NEW
    page = await svc.step_up(ALICE, SUCCESS, True)
    await svc.drain()
    a = await svc.answer(form(page, mailed_code(smtp_server)), cookies(page), client_ip=ALICE.client_ip)
    device_cookie = next(c for c in a.set_cookies if c.startswith("lgd-"))
    name, value = device_cookie.split(";")[0].split("=", 1)
    assert svc.device({name: value}, "acct-alice", secure=False).status is DeviceStatus.KNOWN
    assert svc.device({name: value}, "acct-bob", secure=False).status is DeviceStatus.NEW


async def test_totp_enrolled_account(svc: Challenges, smtp_server: Smtp) -> None:
    secret = base64.b32encode(b"12345678901234567890").decode()
    await svc.enrolments.enroll("acct-alice", secret, T0)
    right = await svc.step_up(ALICE, SUCCESS, True)
    wrong = await svc.step_up(ALICE, FAILURE, False)
    assert masked(right) == masked(wrong)
    assert b"authenticator app" in right.body and b"Send a new code" not in right.body
    code = totp(b"12345678901234567890", T0)
    bad = await svc.answer(form(wrong, code), cookies(wrong), client_ip=ALICE.client_ip)
    assert bad.verdict is Verdict.WRONG
    good = await svc.answer(form(right, code), cookies(right), client_ip=ALICE.client_ip)
    assert good.verdict is Verdict.PASSED
    await svc.drain()
    assert smtp_server.box.messages == []  # nothing is sent for an app


async def test_no_channel_reaches_the_account(svc: Challenges) -> None:
    member = Login("member42", "acct-42", "203.0.113.9")  # not an address, no lookup, no TOTP
    right, wrong = await svc.step_up(member, SUCCESS, True), await svc.step_up(member, FAILURE, False)
    assert right.status == wrong.status == 503 and right.body == wrong.body


async def test_json_variant_and_japanese(svc: Challenges) -> None:
    import json

    login = Login(
        "alice@example.com",
        "acct-alice",
        "203.0.113.9",
        accept="application/json",
        accept_language="ja-JP,ja;q=0.9,en;q=0.8",
    )
    page = await svc.step_up(login, SUCCESS, True)
    doc = json.loads(page.body)
    assert doc["state"] == "enter_code" and doc["lang"] == "ja" and "確認コード" in doc["prompt"]
    assert dict(page.headers)["Content-Type"] == "application/json"
    binding = page.header("Set-Cookie")[0].split(";")[0].split("=", 1)[1]
    a = await svc.answer(
        {"hold": doc["hold"], "csrf": doc["csrf"], "code": "0"},
        {binding_cookie_name(False): binding},
        client_ip=login.client_ip,
        accept="application/json",
        accept_language="ja",
    )
    assert a.page is not None and json.loads(a.page.body)["tries_left"] == 4


async def test_login_notification(svc: Challenges, smtp_server: Smtp) -> None:
    ua = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124"
    for _ in range(5):
        svc.notify_login(ALICE, country="TH", user_agent=ua)
    await svc.drain()
    assert len(smtp_server.box.messages) == 3  # rate-limited per account
    text = smtp_server.box.messages[0][1].get_content()
    assert (
        "from Thailand, Chrome on Windows, at 2023-11-14 22:13 UTC" in text and "change your password" in text
    )


def test_page_has_no_oracle_parameter() -> None:
    """The renderer cannot be told the password outcome: its inputs are the state and tokens."""
    import inspect

    from guard.challenge.pages import View

    assert set(inspect.signature(View).parameters) == {
        "state",
        "lang",
        "app",
        "hold_id",
        "csrf",
        "tries_left",
    }
    assert State.ENTER_CODE.value == "enter_code"

"""The per-account guess budget: max_tries bounds a hold, this bounds an account over all its holds.

Against both stores (the budget is one ``Incr`` shared by every instance), then
through the service (the page is a wrong code's, the source is to be flagged)
and end to end through the guard (the source really is flagged).
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest

from guard.challenge import Challenges, Page, Verdict
from guard.challenge.channels.totp import totp
from guard.challenge.settings import GuessBudget
from guard.engine.clock import VirtualClock
from guard.store import Get, Store
from tests.test_challenge_channels import Mailbox, Smtp
from tests.test_challenge_e2e import ALICE as LEGACY_ALICE
from tests.test_challenge_e2e import Browser, code_in, form_fields, guard_config, legacy, mailbox, started
from tests.test_challenge_holds import T0, create, holds_on, make_store, store, wrong
from tests.test_challenge_service import (
    ALICE,
    SUCCESS,
    cookies,
    form,
    mailed_code,
    make_settings,
    smtp_server,
    tokens,
)

__all__ = ["legacy", "mailbox", "make_store", "smtp_server", "store"]  # fixtures, used here

BUDGET = GuessBudget(count=10, window=900.0)


async def test_guesses_across_holds_are_bounded_per_account(store: Store) -> None:
    h = holds_on(store, guesses=BUDGET)
    holds = [await create(h) for _ in range(3)]
    spent = 0
    for c, n in zip(holds, (4, 4, 2), strict=True):  # 10 wrong codes, no hold exhausted
        assert c.code is not None
        for _ in range(n):
            r = await h.attempt(c.hold_id, wrong(c.code), T0)
            spent += 1
            assert r.verdict is Verdict.WRONG and not r.locked, spent
    last = holds[2]
    assert last.code is not None
    r = await h.attempt(last.hold_id, last.code, T0 + 1)  # the right code, over budget
    assert (r.verdict, r.tries_left, r.locked) == (Verdict.WRONG, 2, True)  # what a wrong code answers
    assert r.hold is not None and r.hold.account_key == "acct1"
    for _ in range(2):  # the hold runs out of tries as it would with wrong codes
        r = await h.attempt(last.hold_id, last.code, T0 + 2)
    assert (r.verdict, r.locked) == (Verdict.EXHAUSTED, True)
    other = await create(h, account="acct2")  # another account has a budget of its own
    assert other.code is not None
    assert (await h.attempt(other.hold_id, other.code, T0 + 3)).verdict is Verdict.PASSED
    later = await create(h, now=T0 + 901)  # the window is over
    assert later.code is not None
    assert (await h.attempt(later.hold_id, later.code, T0 + 901)).verdict is Verdict.PASSED


async def test_a_failed_password_spends_the_budget_alike(store: Store) -> None:
    """Unarmed holds count the same, so the budget says nothing about the password."""
    h = holds_on(store, guesses=GuessBudget(count=3, window=900.0), max_tries=2)
    trace: dict[bool, list[tuple[Verdict, int, bool]]] = {}
    for armed in (True, False):
        account = f"acct-{armed}"
        seen = []
        for _ in range(3):
            c = await create(h, armed=armed, account=account)
            guess = wrong(c.code) if c.code is not None else "000000"
            r = await h.attempt(c.hold_id, guess, T0)
            seen.append((r.verdict, r.tries_left, r.locked))
        r = await h.attempt((await create(h, armed=armed, account=account)).hold_id, "000000", T0)
        seen.append((r.verdict, r.tries_left, r.locked))
        trace[armed] = seen
    assert trace[True] == trace[False] == [(Verdict.WRONG, 1, False)] * 3 + [(Verdict.WRONG, 1, True)]


async def test_a_right_code_gives_its_unit_back(store: Store) -> None:
    h = holds_on(store, guesses=GuessBudget(count=3, window=900.0))
    first = await create(h)
    assert first.code is not None
    for _ in range(2):
        assert not (await h.attempt(first.hold_id, wrong(first.code), T0)).locked
    assert (await h.attempt(first.hold_id, first.code, T0)).verdict is Verdict.PASSED
    c = await create(h)
    assert c.code is not None
    assert not (await h.attempt(c.hold_id, wrong(c.code), T0)).locked  # 3 wrong in all: within
    assert (await h.attempt(c.hold_id, wrong(c.code), T0)).locked


async def test_parallel_guesses_cannot_overspend(store: Store) -> None:
    """The budget is taken before the comparison, atomically: a burst gets exactly ``count`` guesses."""
    h = holds_on(store, guesses=GuessBudget(count=7, window=900.0), max_tries=3)
    holds = [await create(h) for _ in range(10)]
    results = await asyncio.gather(
        *(h.attempt(c.hold_id, wrong(c.code or "000000"), T0) for c in holds for _ in range(2))
    )
    assert sum(not r.locked for r in results) == 7 and len(results) == 20


async def test_the_budget_is_bounded_in_config() -> None:
    for bad in ({"count": 0, "window": 60}, {"count": 1001, "window": 60}, {"count": 5, "window": 86401}):
        with pytest.raises(ValueError):
            GuessBudget.model_validate(bad)


# ---- through the service ---------------------------------------------------------------------------


async def test_over_budget_the_page_is_a_wrong_codes_and_the_source_is_to_be_flagged(
    store: Store, smtp_server: Smtp
) -> None:
    svc = Challenges(
        make_settings(smtp_server, account_guesses={"count": 2, "window": 900}), store, clock=VirtualClock(T0)
    )
    try:
        first = await svc.step_up(ALICE, SUCCESS, True)
        await svc.drain()
        code = mailed_code(smtp_server)
        bad = f"{(int(code) + 1) % 10**6:06d}"
        for _ in range(2):
            a = await svc.answer(form(first, bad), cookies(first), client_ip=ALICE.client_ip)
            assert a.verdict is Verdict.WRONG and not a.flag_source
        second = await svc.step_up(ALICE, SUCCESS, True)
        await svc.drain()
        twin = await svc.step_up(ALICE, SUCCESS, True)  # the same state, answered with a wrong code
        await svc.drain()
        locked = await svc.answer(form(second, mailed_code(smtp_server, -2)), cookies(second), client_ip="192.0.2.7")
        shown = await svc.answer(form(twin, bad), cookies(twin), client_ip="192.0.2.7")
        assert locked.verdict is Verdict.WRONG and locked.released is None and locked.flag_source
        assert locked.account_key == ALICE.account_key and svc.stats["locked"] >= 1
        assert locked.page is not None and shown.page is not None
        assert scrubbed(locked.page, second) == scrubbed(shown.page, twin)
        assert locked.page.status == shown.page.status == 422 and locked.page.headers == shown.page.headers
    finally:
        await svc.aclose()


def scrubbed(answer: Page, issued: Page) -> bytes:
    """An answer page's body with the tokens of the hold it answers replaced."""
    hold, csrf, _ = tokens(issued)
    return answer.body.replace(hold.encode(), b"<HOLD>").replace(csrf.encode(), b"<CSRF>")


async def test_an_app_code_over_budget_is_not_spent(store: Store, smtp_server: Smtp) -> None:
    """Over budget, the right TOTP code is refused without claiming its step, so it works later."""
    clock = VirtualClock(T0)
    svc = Challenges(make_settings(smtp_server, account_guesses={"count": 1, "window": 60}), store, clock=clock)
    seed = b"12345678901234567890"
    await svc.enrolments.enroll(ALICE.account_key, base64.b32encode(seed).decode(), T0)
    try:
        page = await svc.step_up(ALICE, SUCCESS, True)
        await svc.answer(form(page, "000000"), cookies(page), client_ip=ALICE.client_ip)
        code = totp(seed, T0)
        refused = await svc.answer(form(page, code), cookies(page), client_ip=ALICE.client_ip)
        assert refused.verdict is Verdict.WRONG and refused.locked
        clock.advance(61)  # the budget's window is over; the app still shows a code of the window
        again = await svc.step_up(ALICE, SUCCESS, True)
        ok = await svc.answer(form(again, totp(seed, T0 + 61)), cookies(again), client_ip=ALICE.client_ip)
        assert ok.verdict is Verdict.PASSED
    finally:
        await svc.aclose()


# ---- through the guard -----------------------------------------------------------------------------


async def test_the_guard_flags_a_source_that_spends_an_accounts_budget(
    tmp_path: Path, legacy: int, mailbox: tuple[Mailbox, int]
) -> None:
    box, smtp = mailbox
    server = await started(guard_config(tmp_path, legacy, smtp, "  account_guesses: {count: 3, window: 15m}\n"))
    base = f"http://127.0.0.1:{server.public_port}"
    first, second = Browser(base), Browser(base)  # two holds for one account, from one source
    login = {"username": LEGACY_ALICE.login, "password": LEGACY_ALICE.password}
    try:
        holds = [form_fields((await b.post("/login", login))[2]) for b in (first, second)]
        await server._challenges.drain()
        code = code_in(box)  # the second hold's
        bad = f"{(int(code) + 1) % 10**6:06d}"
        for b, fields in ((first, holds[0]), (first, holds[0]), (second, holds[1])):
            status, _, answer, _ = await b.post("/.loginguard/challenge", {**fields, "code": bad, "op": "verify"})
            assert status == 422 and "one-time-code" in answer
        (flag,) = await server.engine.store.execute([Get("flag:ip:127.0.0.1")], server.engine.clock.now())
        assert flag is None  # within budget: wrong codes, nothing more
        status, _, answer, cookies_set = await second.post(
            "/.loginguard/challenge", {**holds[1], "code": code, "op": "verify"}
        )
        assert status == 422 and "3 more time(s)" in answer and not any(c.startswith("SID=") for c in cookies_set)
        (flag,) = await server.engine.store.execute([Get("flag:ip:127.0.0.1")], server.engine.clock.now())
        assert flag == b"challenge-guess-budget"
    finally:
        await first.close()
        await second.close()
        await server.stop(1)

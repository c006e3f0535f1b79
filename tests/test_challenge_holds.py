"""guard.challenge.holds on a real store (memory and Redis): single use, tries, expiry, binding, no oracle."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from guard.challenge import codes
from guard.challenge.holds import PAD, Created, Holds, Mode, Verdict, valid_hold_id
from guard.challenge.keys import KeyRing
from guard.challenge.sealed import HeldMessage, Sealer
from guard.store import Get, MemoryStore, RedisStore, Store

T0 = 1_700_000_000.0
KEY = b"\x07" * 32
SUCCESS = HeldMessage.response(302, [("Location", "/home"), ("Set-Cookie", "sid=GOOD; HttpOnly")], b"", 4096)
FAILURE = HeldMessage.response(
    200, [("Content-Type", "text/html")], b"<form>wrong password</form>" * 20, 4096
)

MakeStore = Callable[[], Store]


@pytest.fixture(params=["memory", "redis"])
def make_store(request: pytest.FixtureRequest) -> MakeStore:
    if request.param == "memory":
        shared = MemoryStore("lg:", max_keys=10_000)
        return lambda: shared  # one process: every "instance" shares the same memory
    url: str = request.getfixturevalue("redis_url")
    return lambda: RedisStore(url, "lg:", timeout=2.0, retry_after=0.5, pool_size=4)


@pytest.fixture
async def store(make_store: MakeStore) -> AsyncIterator[Store]:
    s = make_store()
    await s.start()
    yield s
    await s.close()


def holds_on(store: Store, ring: KeyRing | None = None, **kw: Any) -> Holds:
    opts: dict[str, Any] = {
        "hold_ttl": 600.0,
        "code_ttl": 300.0,
        "digits": 6,
        "max_tries": 5,
        "max_resends": 2,
    }
    opts.update(kw)
    return Holds(store, Sealer(ring or KeyRing([KEY])), **opts)


async def create(
    h: Holds, armed: bool = True, message: HeldMessage = SUCCESS, now: float = T0, account: str = "acct1"
) -> Created:
    return await h.create(
        mode=Mode.STEP_UP,
        armed=armed,
        login_id="alice@example.com",
        account_key=account,
        channel="email",
        lang="en",
        client_ip="198.51.100.7",
        message=message,
        now=now,
    )


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


async def test_right_code_releases_once(store: Store) -> None:
    h = holds_on(store)
    c = await create(h)
    assert c.code is not None and len(c.code) == 6 and valid_hold_id(c.hold_id)
    r = await h.attempt(c.hold_id, c.code, T0 + 10)
    assert r.verdict is Verdict.PASSED and r.hold is not None
    assert r.hold.message == SUCCESS and r.hold.account_key == "acct1"
    replay = await h.attempt(c.hold_id, c.code, T0 + 11)  # a used code is gone with its hold
    assert replay.verdict is Verdict.EXPIRED and replay.hold is None


async def test_typed_code_is_forgiving_about_format(store: Store) -> None:
    h = holds_on(store)
    c = await create(h)
    assert c.code is not None
    full_width = "".join(chr(ord(ch) + 0xFEE0) for ch in c.code)
    r = await h.attempt(c.hold_id, f" {full_width[:3]}-{full_width[3:]} ", T0)
    assert r.verdict is Verdict.PASSED


async def test_brute_force_destroys_the_hold(store: Store) -> None:
    h = holds_on(store, max_tries=3)
    c = await create(h)
    assert c.code is not None
    r1 = await h.attempt(c.hold_id, wrong(c.code), T0)
    r2 = await h.attempt(c.hold_id, "abc", T0)
    assert (r1.verdict, r1.tries_left, r2.verdict, r2.tries_left) == (Verdict.WRONG, 2, Verdict.WRONG, 1)
    r3 = await h.attempt(c.hold_id, wrong(c.code), T0)
    assert r3.verdict is Verdict.EXHAUSTED and r3.hold is not None and r3.hold.account_key == "acct1"
    after = await h.attempt(c.hold_id, c.code, T0)  # even the right code: the hold is gone
    assert after.verdict is Verdict.EXPIRED
    assert await store.execute([Get(f"ch:{k}:{c.hold_id}") for k in "hcr"], T0) == [None, None, None]


async def test_expiry_of_code_and_of_hold(store: Store) -> None:
    h = holds_on(store, code_ttl=60.0, hold_ttl=120.0)
    c = await create(h)
    assert c.code is not None
    r = await h.attempt(c.hold_id, c.code, T0 + 61)
    assert r.verdict is Verdict.CODE_EXPIRED and r.tries_left == 4
    fresh = await h.resend(c.hold_id, T0 + 62)
    assert fresh.verdict is Verdict.RESENT and fresh.code is not None
    assert (await h.attempt(c.hold_id, c.code, T0 + 63)).verdict is Verdict.WRONG  # old generation
    late = await h.attempt(c.hold_id, fresh.code, T0 + 121)
    assert late.verdict is Verdict.EXPIRED


async def test_resend_limit(store: Store) -> None:
    h = holds_on(store, max_resends=2)
    c = await create(h)
    assert (await h.resend(c.hold_id, T0)).verdict is Verdict.RESENT
    last = await h.resend(c.hold_id, T0)
    assert last.verdict is Verdict.RESENT and last.code is not None
    limited = await h.resend(c.hold_id, T0)
    assert limited.verdict is Verdict.RESEND_LIMITED and limited.code is None
    assert (await h.attempt(c.hold_id, last.code, T0)).verdict is Verdict.PASSED  # the last code still works


async def test_csrf_is_bound_to_hold_and_browser(store: Store) -> None:
    h = holds_on(store)
    a, b = await create(h), await create(h)
    assert h.csrf_ok(a.hold_id, a.binding, a.csrf)
    assert not h.csrf_ok(a.hold_id, b.binding, a.csrf)  # another browser's cookie
    assert not h.csrf_ok(b.hold_id, a.binding, a.csrf)  # another hold
    assert not h.csrf_ok(a.hold_id, "", a.csrf)
    assert not h.csrf_ok(a.hold_id, a.binding, a.csrf[:-2] + "AA")
    assert not h.csrf_ok("not-an-id", a.binding, a.csrf)
    assert not h.csrf_ok(a.hold_id, a.binding, "%%%")


async def test_unarmed_hold_fails_every_code_exactly_like_a_wrong_one(store: Store) -> None:
    """A failed password's hold: the same verdicts, tries and exhaustion as a wrong code on a real one."""
    h = holds_on(store, max_tries=3)
    armed, unarmed = await create(h, True, SUCCESS), await create(h, False, FAILURE)
    assert armed.code is not None and unarmed.code is None
    trace: dict[str, list[tuple[Verdict, int]]] = {"armed": [], "unarmed": []}
    for name, c in (("armed", armed), ("unarmed", unarmed)):
        for guess in ("000000", "123456", "999999"):
            guess = guess if guess != armed.code else wrong(guess)
            r = await h.attempt(c.hold_id, guess, T0)
            trace[name].append((r.verdict, r.tries_left))
    assert (
        trace["armed"] == trace["unarmed"] == [(Verdict.WRONG, 2), (Verdict.WRONG, 1), (Verdict.EXHAUSTED, 0)]
    )


async def test_unarmed_hold_never_passes_even_with_its_own_code(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unarmed hold has a real code record (same shape); even the code behind it does not pass."""
    monkeypatch.setattr(codes, "new_code", lambda digits: "424242")
    h = holds_on(store)
    c = await create(h, armed=False, message=FAILURE)
    (raw,) = await store.execute([Get(f"ch:c:{c.hold_id}")], T0)
    record = codes.CodeRecord.decode(bytes(raw))
    assert record is not None and codes.matches(h.ring, c.hold_id, record, "424242")
    r = await h.attempt(c.hold_id, "424242", T0)
    assert (r.verdict, r.tries_left) == (Verdict.WRONG, 4)


async def test_storage_looks_the_same_for_both_kinds(store: Store) -> None:
    h = holds_on(store)
    good, bad = await create(h, True, SUCCESS), await create(h, False, FAILURE)
    keys = ("h", "c")
    g = await store.execute([Get(f"ch:{k}:{good.hold_id}") for k in keys], T0)
    b = await store.execute([Get(f"ch:{k}:{bad.hold_id}") for k in keys], T0)
    assert [len(x) for x in g] == [len(x) for x in b]  # padded: equal lengths here
    assert len(g[0]) % PAD == (1 + 4 + 12 + 16) % PAD
    for blob in (*g, *b):
        assert b"sid=GOOD" not in blob and b"wrong password" not in blob and b"alice" not in blob


async def test_another_instance_answers_and_a_restart_keeps_the_hold(make_store: MakeStore) -> None:
    """Issued through one store client, answered through another (a second guard, or after a restart)."""
    first, second = make_store(), make_store()
    await first.start()
    c = await create(holds_on(first))
    if first is not second:
        await first.close()
    await second.start()
    try:
        assert c.code is not None
        r = await holds_on(second).attempt(c.hold_id, c.code, T0 + 5)
        assert r.verdict is Verdict.PASSED and r.hold is not None and r.hold.message == SUCCESS
    finally:
        await second.close()


async def test_key_rotation_keeps_live_holds(store: Store) -> None:
    old_ring, new_ring = KeyRing([KEY]), KeyRing([b"\x08" * 32, KEY])
    c = await create(holds_on(store, old_ring))
    assert c.code is not None
    h = holds_on(store, new_ring)
    assert h.csrf_ok(c.hold_id, c.binding, c.csrf)
    assert (await h.attempt(c.hold_id, c.code, T0)).verdict is Verdict.PASSED


async def test_a_tampered_hold_is_treated_as_expired(store: Store) -> None:
    h = holds_on(store)
    c = await create(h)
    assert c.code is not None
    other = await create(h)
    (blob,) = await store.execute([Get(f"ch:h:{other.hold_id}")], T0)
    from guard.store import Put

    await store.execute([Put(f"ch:h:{c.hold_id}", bytes(blob), 600.0)], T0)  # swap in another hold's blob
    assert (await h.attempt(c.hold_id, c.code, T0)).verdict is Verdict.EXPIRED


async def test_concurrent_right_answers_release_once(store: Store) -> None:
    import asyncio

    h = holds_on(store)
    c = await create(h)
    assert c.code is not None
    code = c.code
    results = await asyncio.gather(*(h.attempt(c.hold_id, code, T0) for _ in range(4)))
    assert sorted(r.verdict for r in results).count(Verdict.PASSED) == 1

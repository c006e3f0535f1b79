"""The token vault: sealed records in the store, bound to the browser cookie and to the field.

Run on the memory store with a virtual clock (TTL without sleeping) and once on
a real Redis, the backend that lets several guard instances share tokens.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import quote_from_bytes

import pytest

from guard.engine import VirtualClock
from guard.pii.element import Where
from guard.pii.forms import swap_back
from guard.pii.policy import default_policy
from guard.pii.rewriter import HTMLRewriter
from guard.pii.token import is_token
from guard.pii.vault import (
    COOKIE,
    SECURE_COOKIE,
    TooManyTokens,
    Vault,
    Verdict,
    cookie_name,
    new_browser_id,
    set_cookie,
    store_key,
    valid_browser_id,
)
from guard.store.base import Get, Op, StoreError
from guard.store.memory import MemoryStore
from guard.store.redis import RedisStore

SECRET = b"0123456789abcdef0123456789abcdef"
PHONE = "090-1234-5678"


def hidden(name: str) -> Where:
    return Where("input", "value", name, "hidden", True)


class CountingStore(MemoryStore):
    """The memory store, counting batches: the vault promises one per page flush and one per submit."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[Op]] = []
        self.down = False

    async def execute(self, ops: Sequence[Op], now: float) -> list[Any]:
        if self.down:
            raise StoreError("down")
        self.batches.append(list(ops))
        return await super().execute(ops, now)


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def store() -> CountingStore:
    return CountingStore()


@pytest.fixture
def vault(store: CountingStore, clock: VirtualClock) -> Vault:
    return Vault(SECRET, store, clock)


async def test_issue_flush_fetch_round_trip(vault: Vault, store: CountingStore) -> None:
    browser = new_browser_id()
    page = vault.page(browser, 3600, 100)
    t1 = page.tokenize("phone", PHONE, hidden("phone"))
    t2 = page.tokenize("email", "taro@example.jp", hidden("email"))
    assert is_token(t1) and is_token(t2) and t1 != t2
    assert store.batches == []          # nothing written until the flush
    await page.flush()
    assert len(store.batches) == 1 and len(store.batches[0]) == 2
    lookup = await vault.fetch([t1, t2], browser)
    assert len(store.batches) == 2       # one batch for both reads
    assert lookup.resolve(t1, "phone") == PHONE
    assert lookup.resolve(t2, "email") == "taro@example.jp"
    assert lookup.rejected == []


async def test_store_holds_sealed_values_only(
    vault: Vault, store: CountingStore, clock: VirtualClock
) -> None:
    browser = new_browser_id()
    page = vault.page(browser, 3600, 100)
    token = page.tokenize("phone", PHONE, hidden("phone"))
    await page.flush()
    (blob,) = await store.execute([Get(store_key(token))], clock.now())
    assert isinstance(blob, bytes)
    assert PHONE.encode() not in blob and b"phone" not in blob and browser.encode() not in blob
    assert store_key(token) == "pii:" + token.removeprefix("pii_")


async def test_another_browser_cannot_open_a_token(vault: Vault) -> None:
    mine, theirs = new_browser_id(), new_browser_id()
    page = vault.page(mine, 3600, 100)
    token = page.tokenize("phone", PHONE, hidden("phone"))
    await page.flush()
    lookup = await vault.fetch([token], theirs)
    assert lookup.records[token] is Verdict.FOREIGN
    assert lookup.resolve(token, "phone") is None
    assert lookup.tampered == [("phone", Verdict.FOREIGN)]


async def test_a_token_moved_to_another_field_is_refused(vault: Vault) -> None:
    browser = new_browser_id()
    page = vault.page(browser, 3600, 100)
    token = page.tokenize("phone", PHONE, hidden("phone"))
    await page.flush()
    lookup = await vault.fetch([token], browser)
    assert lookup.resolve(token, "message") is None
    assert lookup.resolve(token, "phone") == PHONE
    assert lookup.tampered == [("message", Verdict.MOVED)]


async def test_values_outside_form_fields_are_bound_to_the_browser_only(vault: Vault) -> None:
    browser = new_browser_id()
    page = vault.page(browser, 3600, 100)
    from_json = page.json_tokenize("phone", PHONE)
    from_data = page.tokenize("email", "a@example.jp", Where("div", "data-mail", "data-mail", "data", False))
    await page.flush()
    lookup = await vault.fetch([from_json, from_data], browser)
    assert lookup.resolve(from_json, "tel") == PHONE
    assert lookup.resolve(from_data, "contact_email") == "a@example.jp"


async def test_tokens_expire_with_their_ttl(vault: Vault, clock: VirtualClock) -> None:
    browser = new_browser_id()
    page = vault.page(browser, 600, 100)
    token = page.tokenize("phone", PHONE, hidden("phone"))
    await page.flush()
    clock.advance(599)
    assert (await vault.fetch([token], browser)).resolve(token, "phone") == PHONE
    clock.advance(2)
    lookup = await vault.fetch([token], browser)
    assert lookup.records[token] is Verdict.UNKNOWN
    assert lookup.resolve(token, "phone") is None
    assert lookup.tampered == []          # expiry is not tampering
    assert lookup.rejected == [("phone", Verdict.UNKNOWN)]


async def test_forged_tokens_are_unknown_and_cost_no_lookup_when_malformed(
    vault: Vault, store: CountingStore
) -> None:
    browser = new_browser_id()
    lookup = await vault.fetch(["pii_AAAAAAAAAAAAAAAAAAAAAA", "not-a-token"], browser)
    assert lookup.records == {"pii_AAAAAAAAAAAAAAAAAAAAAA": Verdict.UNKNOWN}
    assert len(store.batches) == 1 and len(store.batches[0]) == 1
    assert (await vault.fetch(["x"], browser)).records == {}
    assert len(store.batches) == 1   # nothing token-shaped: no round trip


async def test_same_value_same_field_reuses_the_token_within_a_page(vault: Vault) -> None:
    page = vault.page(new_browser_id(), 3600, 100)
    a = page.tokenize("phone", PHONE, hidden("phone"))
    b = page.tokenize("phone", PHONE, hidden("phone"))
    c = page.tokenize("phone", PHONE, hidden("tel"))
    assert a == b != c
    assert page.issued == 2 and len(page.pending) == 2


async def test_per_page_limit_fails_closed(vault: Vault) -> None:
    page = vault.page(new_browser_id(), 3600, 2)
    page.tokenize("phone", "090-0000-0001", hidden("a"))
    page.tokenize("phone", "090-0000-0002", hidden("b"))
    with pytest.raises(TooManyTokens):
        page.tokenize("phone", "090-0000-0003", hidden("c"))
    assert page.refused == 1
    # through the rewriter: the third value is emptied, never shown
    page = vault.page(new_browser_id(), 3600, 2)
    rw = HTMLRewriter(default_policy(), None, "utf-8", field_tokenizer=page.tokenize)
    html = b"".join(
        f'<input type="hidden" name="f{i}" value="090-0000-000{i}">'.encode() for i in range(1, 4)
    )
    out = rw.feed(html) + rw.close()
    assert b"090-0000" not in out and out.count(b"pii_") == 2 and b'name="f3" value=""' in out
    assert rw.report.skipped["tokenizer-error"] == 1 and page.refused == 1


async def test_flush_failure_raises_and_empties_the_queue(vault: Vault, store: CountingStore) -> None:
    page = vault.page(new_browser_id(), 3600, 10)
    page.tokenize("phone", PHONE, hidden("phone"))
    store.down = True
    with pytest.raises(StoreError):
        await page.flush()
    assert page.pending == []


async def test_records_remember_the_page_charset(vault: Vault) -> None:
    browser = new_browser_id()
    page = vault.page(browser, 3600, 10)
    page.codec_of = lambda: "cp932"
    token = page.tokenize("field", "山田太郎", hidden("name"))
    await page.flush()
    lookup = await vault.fetch([token], browser)
    assert lookup.codec == "cp932"
    body = f"name={token}&x=1".encode()
    result = swap_back(body, "application/x-www-form-urlencoded", charset=lookup.codec or "utf-8",
                       resolve_field=lookup.resolve)
    assert result.body == b"name=" + quote_from_bytes("山田太郎".encode("cp932")).encode() + b"&x=1"


async def test_another_secret_opens_nothing(store: CountingStore, clock: VirtualClock) -> None:
    browser = new_browser_id()
    page = Vault(SECRET, store, clock).page(browser, 3600, 10)
    token = page.tokenize("phone", PHONE, hidden("phone"))
    await page.flush()
    other = Vault(b"another secret of enough length!", store, clock)
    assert (await other.fetch([token], browser)).records[token] is Verdict.FOREIGN


def test_cookie_shape() -> None:
    b = new_browser_id()
    assert valid_browser_id(b) and len(b) == 22
    assert not valid_browser_id(None) and not valid_browser_id("short") and not valid_browser_id(b + "x")
    assert cookie_name(True) == SECURE_COOKIE and cookie_name(False) == COOKIE
    plain = set_cookie(b, False)
    assert plain == f"lgpii={b}; Path=/; HttpOnly; SameSite=Lax"
    secure = set_cookie(b, True)
    assert secure.startswith(f"__Host-lgpii={b};") and secure.endswith("; Secure") and "Domain" not in secure
    with pytest.raises(ValueError):
        Vault(b"", MemoryStore(), VirtualClock())


def test_record_repr_hides_the_value() -> None:
    from guard.pii.vault import Record

    assert PHONE not in repr(Record("phone", "phone", None, PHONE))


@pytest.fixture
async def redis_store(redis_url: str) -> AsyncIterator[RedisStore]:
    s = RedisStore(redis_url, "lg:", timeout=2.0, retry_after=0.5, pool_size=4)
    await s.start()
    yield s
    await s.close()


async def test_two_vaults_share_tokens_through_redis(redis_store: RedisStore, redis_url: str) -> None:
    other = RedisStore(redis_url, "lg:", timeout=2.0, retry_after=0.5, pool_size=2)
    await other.start()
    try:
        clock = VirtualClock()
        browser = new_browser_id()
        page = Vault(SECRET, redis_store, clock).page(browser, 3600, 10)
        token = page.tokenize("user_id", "U" + "a" * 32, hidden("mid"))
        await page.flush()
        lookup = await Vault(SECRET, other, clock).fetch([token], browser)
        assert lookup.resolve(token, "mid") == "U" + "a" * 32
        clock.advance(3601)
        assert (await Vault(SECRET, other, clock).fetch([token], browser)).records[token] is Verdict.UNKNOWN
    finally:
        await other.close()


async def test_a_browser_without_the_cookie_gets_an_id_only_when_a_token_needs_one(vault: Vault) -> None:
    page = vault.page(None, 3600, 100)
    assert page.fresh and page.issued == 0
    assert page._browser is None          # a page that issues no token draws no random id
    token = page.tokenize("phone", PHONE, hidden("phone"))
    await page.flush()
    browser = page.browser
    assert valid_browser_id(browser)
    assert page.cookie == set_cookie(browser, False)   # the cookie carries the id the token is sealed for
    lookup = await vault.fetch([token], browser)
    assert lookup.resolve(token, "phone") == PHONE
    assert (await vault.fetch([token], new_browser_id())).resolve(token, "phone") is None


def test_the_fresh_cookie_follows_the_scheme_and_a_known_browser_gets_none(vault: Vault) -> None:
    page = vault.page(None, 3600, 100, secure=True)
    cookie = page.cookie
    assert cookie is not None and cookie.startswith(SECURE_COOKIE + "=") and cookie.endswith("; Secure")
    assert cookie == page.cookie          # the id is drawn once
    known = vault.page(new_browser_id(), 3600, 100)
    assert not known.fresh and known.cookie is None

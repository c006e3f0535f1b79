"""The engine without a network: phases, bans, allowlists, shadow mode, store failure policy."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlencode

import pytest

from guard.config import Config, load_config_text
from guard.engine import Action, Engine, RequestFacts, ResponseFacts, VirtualClock
from guard.store.base import Ban, Hit
from guard.store.memory import MemoryStore
from guard.store.redis import RedisStore


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


RULES = """
rules:
  - id: allow-office
    description: office
    when: {ip: 198.51.100.0/24}
    action: allow
  - id: many-users
    description: many usernames from one ip
    when:
      velocity: {key: ip, metric: distinct_usernames, window: 10m, over: 3}
    action: ban
    ban: {duration: 10m, factor: 2, max: 1h}
  - id: admin-path
    description: no one gets /admin
    when: {path: {prefix: /admin}}
    action: block
  - id: tooling
    description: tools log in
    when: {login: true, user_agent: {tooling: true}}
    action: log
"""


def make_config(tmp_path: Path, extra: str = "", rules: str = RULES) -> Config:
    (tmp_path / "rules.yaml").write_text(rules)
    text = (
        "upstream: http://127.0.0.1:9\n"
        f"rules: [{tmp_path / 'rules.yaml'}]\n"
        "logins:\n  - {id: login, path: /login}\n"
        "attack: {enabled: false}\n" + (f"state_dir: {tmp_path / 'state'}\n" if "state_dir" not in extra else "")
        + extra
    )
    return load_config_text(text, env={})


async def login(engine: Engine, ip: str, user: str, ua: str = "Mozilla/5.0", outcome: int | None = 200):
    req = RequestFacts(
        client_ip=ip, method="POST", path="/login", headers={"User-Agent": ua},
        login=engine.match_login("POST", "/login"),
        body=urlencode({"username": user, "password": "pw"}).encode(),
        content_type="application/x-www-form-urlencoded",
    )
    d = await engine.on_request(req)
    if d.forwards:
        d = await engine.on_login(req)
    if d.forwards and outcome is not None:
        await engine.on_response(req, ResponseFacts(outcome, {"Location": "/home"} if outcome == 302 else {}))
    return d, req


@pytest.fixture
async def engine(tmp_path: Path):  # type: ignore[no-untyped-def]
    clock = VirtualClock()
    eng = Engine(make_config(tmp_path), MemoryStore("t:", 10_000, 1000), clock, secret=b"k" * 32)
    await eng.start()
    yield eng
    await eng.close()


async def test_non_login_requests_pass_without_touching_the_store(engine: Engine) -> None:
    d = await engine.on_request(RequestFacts(client_ip="192.0.2.1", method="GET", path="/"))
    assert d.action is Action.PASS
    d = await engine.on_request(RequestFacts(client_ip="192.0.2.1", method="GET", path="/admin/x"))
    assert d.action is Action.BLOCK and d.status == 403 and d.reason_ids() == ["admin-path"]


async def test_velocity_ban_escalates_and_unban_clears_counters(engine: Engine) -> None:
    clock = engine.clock
    assert isinstance(clock, VirtualClock)
    for i in range(3):
        d, _ = await login(engine, "192.0.2.9", f"user{i}")
        assert d.action is Action.PASS
    d, _ = await login(engine, "192.0.2.9", "user3")
    assert d.action is Action.BAN and d.ban_seconds == 600
    assert d.reasons[0].values == {"ip.distinct_usernames.600s": 4.0}
    d = await engine.on_request(RequestFacts(client_ip="192.0.2.9", method="GET", path="/"))
    assert d.action is Action.BLOCK and d.reason_ids() == ["banned"]
    # the unban clears the counters: the next login is not re-banned at once
    assert await engine.unban("ip:192.0.2.9")
    d, _ = await login(engine, "192.0.2.9", "user4")
    assert d.action is Action.PASS
    # a repeat offence after the unban is a first ban again (history cleared too)
    for i in range(5, 8):
        d, _ = await login(engine, "192.0.2.9", f"user{i}")
    assert d.action is Action.BAN and d.ban_seconds == 600
    clock.advance(601)
    for i in range(8, 12):
        d, _ = await login(engine, "192.0.2.9", f"user{i}")
    assert d.action is Action.BAN and d.ban_seconds == 1200  # escalated: factor 2


async def test_allowlist_wins_over_an_existing_ban(engine: Engine) -> None:
    await engine.ban("ip:198.51.100.7", 3600, "manual")
    d, _ = await login(engine, "198.51.100.7", "boss")
    assert d.action is Action.ALLOW and d.reason_ids() == ["allow-office"]
    d = await engine.on_request(RequestFacts(client_ip="198.51.100.7", method="GET", path="/"))
    assert d.action is Action.ALLOW


async def test_subnet_ban_covers_ipv6_prefix_and_mapped_forms(engine: Engine) -> None:
    await engine.ban("net:2001:db8:1:2::/64", 3600)
    d = await engine.on_request(RequestFacts(client_ip="2001:db8:1:2::99", method="GET", path="/"))
    assert d.action is Action.BLOCK
    d = await engine.on_request(RequestFacts(client_ip="2001:db8:1:3::1", method="GET", path="/"))
    assert d.action is Action.PASS


async def test_outcomes_are_classified_and_counted(engine: Engine) -> None:
    _, req = await login(engine, "192.0.2.30", "alice", outcome=302)
    assert req.outcome == "success"
    _, req = await login(engine, "192.0.2.30", "alice", outcome=200)
    assert req.outcome == "failure"


async def test_log_rule_reports_without_blocking(engine: Engine) -> None:
    d, _ = await login(engine, "192.0.2.40", "bob", ua="python-requests/2.32")
    assert d.action is Action.LOG and d.forwards and d.reason_ids() == ["tooling"]


async def test_global_shadow_mode_decides_but_forwards(tmp_path: Path) -> None:
    eng = Engine(make_config(tmp_path, "shadow: true\n"), MemoryStore("t:", 10_000, 1000), VirtualClock(), secret=b"k" * 32)
    await eng.start()
    try:
        d = await eng.on_request(RequestFacts(client_ip="192.0.2.1", method="GET", path="/admin"))
        assert d.action is Action.BLOCK and d.shadow and d.forwards
        for i in range(4):
            d, _ = await login(eng, "192.0.2.2", f"u{i}")
        assert d.action is Action.BAN and d.shadow and d.forwards
        # shadow mode applies no ban
        d = await eng.on_request(RequestFacts(client_ip="192.0.2.2", method="GET", path="/"))
        assert d.action is Action.PASS
    finally:
        await eng.close()


async def test_per_rule_shadow_is_reported_not_enforced(tmp_path: Path) -> None:
    rules = RULES.replace("    action: block\n", "    action: block\n    mode: shadow\n")
    eng = Engine(make_config(tmp_path, rules=rules), MemoryStore("t:", 10_000, 1000), VirtualClock(), secret=b"k" * 32)
    await eng.start()
    try:
        d = await eng.on_request(RequestFacts(client_ip="192.0.2.1", method="GET", path="/admin"))
        assert d.action is Action.LOG and d.forwards
        assert d.reasons[0].shadow and d.reasons[0].rule == "admin-path"
    finally:
        await eng.close()


async def test_bans_made_elsewhere_reach_the_cache(engine: Engine) -> None:
    await engine.store.ban(Ban("ip:192.0.2.50", engine.clock.now() + 60, "other-instance"), engine.clock.now())
    assert engine.bans.lookup("192.0.2.50") is None  # not yet polled
    await engine.bans.refresh()
    assert engine.bans.lookup("192.0.2.50") is not None


async def test_username_never_reaches_the_store_in_clear(engine: Engine) -> None:
    await login(engine, "192.0.2.60", "secret.person@example.jp", outcome=302)
    store = engine.store
    assert isinstance(store, MemoryStore)
    dump = repr(store.__dict__)
    assert "secret.person" not in dump and "pw" not in dump.replace("pw-", "")


@pytest.mark.parametrize("fail_open", [True, False])
async def test_store_down_follows_the_policy(tmp_path: Path, fail_open: bool) -> None:
    """A real Redis client against a port where no Redis listens."""
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    cfg = make_config(
        tmp_path,
        f"store: {{backend: redis, url: '{url}', fail_open: {str(fail_open).lower()}}}\n"
        "secret_key: test-fingerprint-key-0123456789\n",
    )
    eng = Engine(cfg, RedisStore(url, "t:", 0.2, 0.5, 4), VirtualClock(), secret=b"k" * 32)
    await eng.start()
    try:
        d = await eng.on_request(RequestFacts(client_ip="192.0.2.1", method="GET", path="/"))
        assert d.action is Action.PASS  # non-login traffic never waits on the store
        d, _ = await login(eng, "192.0.2.1", "alice")
        if fail_open:
            assert d.action is Action.LOG and d.forwards and d.reason_ids() == ["store-unavailable"]
        else:
            assert d.action is Action.UNAVAILABLE and d.status == 503 and not d.forwards
        assert not (await eng.status()).store_ok
    finally:
        await eng.close()


async def test_one_batch_per_login_decision(redis_url: str, tmp_path: Path) -> None:
    """With Redis, a login decision is exactly one round trip (one EVALSHA), seen by MONITOR."""
    import asyncio

    import redis.asyncio as aioredis

    cfg = make_config(tmp_path)
    store = RedisStore(redis_url, "t:", 1.0, 0.5, 4)
    eng = Engine(cfg, store, VirtualClock(), secret=b"k" * 32)
    await eng.start()
    admin = aioredis.from_url(redis_url)
    watcher = aioredis.from_url(redis_url)
    try:
        await login(eng, "192.0.2.1", "warmup", outcome=None)
        await admin.ping()
        async with watcher.monitor() as m:
            seen: list[str] = []

            async def collect() -> None:
                while True:
                    cmd = await m.next_command()
                    if cmd.get("client_type") == "lua":
                        continue
                    if "end-of-decision" in cmd["command"]:
                        return
                    seen.append(cmd["command"].split()[0].upper())

            task = asyncio.create_task(collect())
            await asyncio.sleep(0.05)
            await login(eng, "192.0.2.1", "alice", outcome=None)
            await admin.echo("end-of-decision")
            await asyncio.wait_for(task, 5)
        assert seen == ["EVALSHA"], seen
    finally:
        await admin.aclose()
        await watcher.aclose()
        await eng.close()


def test_store_ops_importable() -> None:
    assert Hit("k", 1.0).amount == 1


class Recorder:
    """An observer that keeps what it is told (the NullObserver's shape)."""

    def __init__(self) -> None:
        from guard.observe.events import ExposureEntry

        self.exposures: list[ExposureEntry] = []
        self.bans: list[tuple[str, float, str, bool]] = []

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return lambda *a, **k: None

    def exposure(self, entry) -> None:  # type: ignore[no-untyped-def]
        self.exposures.append(entry)

    def ban(self, subject: str, seconds: float, reason: str, removed: bool = False) -> None:
        self.bans.append((subject, seconds, reason, removed))


async def test_valid_password_from_flagged_source_is_ledgered_sealed(tmp_path: Path) -> None:
    rules = RULES + """
  - id: decoy
    description: decoy account
    when: {honey_account: true}
    action: block
    flag: {subjects: [ip], for: 1h}
  - id: flagged
    description: flagged sources
    when: {login: true, flagged: ip}
    action: log
    score: 40
"""
    cfg = make_config(tmp_path, "honey_accounts: [admin]\n", rules=rules)
    eng = Engine(cfg, MemoryStore("t:", 10_000, 1000), VirtualClock(), secret=b"k" * 32)
    rec = Recorder()
    eng.observer = rec  # type: ignore[assignment]
    await eng.start()
    try:
        d, _ = await login(eng, "192.0.2.70", "admin")
        assert d.action is Action.BLOCK
        await login(eng, "192.0.2.71", "carol@example.jp", outcome=302)  # unflagged source: no row
        d, _ = await login(eng, "192.0.2.70", "Alice@Example.JP", outcome=302)
        assert d.reason_ids() == ["flagged"]
        assert len(rec.exposures) == 1
        row = rec.exposures[0]
        assert row.ip == "192.0.2.70" and row.seen and "flagged:ip" in row.flags and "score" in row.flags
        assert "alice" not in row.login_sealed.lower()
        assert eng.sealer.open(row.login_sealed) == "alice@example.jp"
        await eng.unban("ip:192.0.2.70")
        await eng.ban("ip:192.0.2.70", 60, "manual")
        assert rec.bans[-1] == ("ip:192.0.2.70", 60, "manual", False)
    finally:
        await eng.close()


async def test_memory_store_secret_survives_a_restart(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, f"state_dir: {tmp_path / 'state'}\n")
    first = Engine(cfg, MemoryStore("t:", 10_000, 1000), VirtualClock())
    await first.start()
    key = first._secret
    await first.close()
    second = Engine(cfg, MemoryStore("t:", 10_000, 1000), VirtualClock())
    await second.start()
    assert second._secret == key and len(key) >= 32
    assert (tmp_path / "state" / "secret.key").stat().st_mode & 0o777 == 0o600
    await second.close()


@pytest.mark.parametrize("mode, counted", [("step_up", 0), ("before_upstream", 1)])
async def test_a_challenged_login_counts_once_for_the_attack_detector(tmp_path: Path, mode: str, counted: int) -> None:
    """Step-up forwards the login: its real outcome is counted by ``on_response``, not also as a failure.

    Counted twice, every challenged right password would look like a failure too, and the
    detector would hold the attack state longer than the attack.  Held before the upstream,
    the attempt is never judged: it counts as a failure, as a block does.
    """
    import base64

    key = base64.b64encode(b"c" * 32).decode()
    extra = (
        "attack: {enabled: true}\n"
        f"challenge: {{keys: ['{key}'], mode: {mode}, channels: {{webhook: {{url: 'http://127.0.0.1:9/x', "
        f"secret: '{'s' * 32}'}}}}}}\n"
    )
    from tests.challenge_fixtures import ALWAYS_2FA

    (tmp_path / "rules.yaml").write_text(ALWAYS_2FA)
    text = (
        "upstream: http://127.0.0.1:9\n"
        f"rules: [{tmp_path / 'rules.yaml'}]\n"
        "logins:\n  - {id: login, path: /login}\n"
        f"state_dir: {tmp_path / 'state'}\n" + extra
    )
    store = MemoryStore("t:", 10_000, 1000)
    eng = Engine(load_config_text(text, env={}), store, VirtualClock(), secret=b"k" * 32)
    await eng.start()
    try:
        d, _ = await login(eng, "192.0.2.7", "alice")
        assert d.action is Action.CHALLENGE
        from guard.store.base import Count

        [failures] = await store.execute([Count("atk:f:short", eng.config.attack.window)], eng.clock.now())
        assert failures == counted
    finally:
        await eng.close()


SPLIT_RULES = """
rules:
  - id: watch-allow
    description: would allow the office (shadow mode, watched and never applied)
    when: {ip: 198.51.100.0/24}
    action: allow
    mode: shadow
  - id: admin-path
    description: no one gets /admin
    when: {path: {prefix: /admin}}
    action: block
  - id: allow-office
    description: office
    when: {ip: 203.0.113.0/24}
    action: allow
  - id: many-users
    description: many usernames from one ip
    when:
      velocity: {key: ip, metric: distinct_usernames, window: 10m, over: 1}
    action: block
"""


async def test_rule_set_splits_each_phase_into_enforced_allows_and_the_rest(tmp_path: Path) -> None:
    """The engine tries only enforced allow rules first, and gives ``decide`` only the others:
    a shadow allow rule allows nothing, and rule order within each part is load order."""
    engine = Engine(make_config(tmp_path, rules=SPLIT_RULES), MemoryStore("t:", 10_000, 1000), VirtualClock(),
                    secret=b"k" * 32)
    await engine.start()
    try:
        rs = engine.rt.rules
        assert [r.id for r in rs.request_allows] == ["allow-office"]
        assert [r.id for r in rs.request_judged] == ["admin-path"]
        assert [r.id for r in rs.login_allows] == []
        assert [r.id for r in rs.login_judged] == ["many-users"]
        # the shadow allow rule does not let its subnet into /admin, nor past the login rule
        d = await engine.on_request(RequestFacts(client_ip="198.51.100.7", method="GET", path="/admin/x"))
        assert d.action is Action.BLOCK and d.reason_ids() == ["admin-path"]
        await login(engine, "198.51.100.7", "a")
        d, _ = await login(engine, "198.51.100.7", "b")
        assert d.action is Action.BLOCK and d.reason_ids() == ["many-users"]
        # the enforced one does, in both phases
        d = await engine.on_request(RequestFacts(client_ip="203.0.113.5", method="GET", path="/admin/x"))
        assert d.action is Action.ALLOW and d.reason_ids() == ["allow-office"]
        await login(engine, "203.0.113.5", "a")
        d, _ = await login(engine, "203.0.113.5", "b")
        assert d.action is Action.ALLOW
    finally:
        await engine.close()

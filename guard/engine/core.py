"""The engine: one method per phase of a request, each returning a decision value.

Adapters (the aiohttp proxy, the mitmproxy addon) call, in order:

- ``on_request`` when the headers are in.  Non-login requests are decided from
  memory only (allow rules, the ban cache, stateless rules): no store round trip
  on the hot path of the whole site.
- ``on_login`` when a login body has been buffered.  Everything the login rules
  need from the store (bans, counters, account history, flags, attack state) is
  read and updated in **one** batch: one Redis round trip per decision.
- ``on_response`` with the upstream's answer: the outcome feeds the failure and
  success counters and the account's history, in one more batch.

The engine applies the store failure policy (``store.fail_open``) itself, so
every adapter behaves the same when Redis is down.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guard.config import Config, LoginEndpoint
from guard.engine.attacklog import AttackLog
from guard.engine.bancache import BanCache, ip_subjects, subnet_of
from guard.engine.clock import Clock, SystemClock
from guard.engine.decision import PASS, Action, Decision, Reason
from guard.engine.facts import RequestFacts, ResponseFacts
from guard.engine.loginbody import extract
from guard.engine.outcome import BODY_PEEK, classify, needs_body
from guard.engine.runtime import Runtime, build_runtime
from guard.engine.sealing import LoginSealer
from guard.engine.usernames import Normalizer, password_fingerprint, username_key
from guard.observe.events import ExposureEntry, NullObserver, Observer
from guard.rules.context import NO_GEO, AccountHistory, Context, CounterSpec, GeoFacts
from guard.rules.evaluate import Verdict, allow_verdict, decide, first_allow, match
from guard.rules.model import Rule
from guard.store.base import (
    AddDistinct,
    Ban,
    Count,
    CountDistinct,
    Delete,
    Get,
    GetBans,
    Hit,
    Incr,
    Op,
    Put,
    Store,
    StoreError,
    Take,
)

log = logging.getLogger("guard.engine")

STORE_DOWN_OPEN = Reason("store-unavailable", "state store unreachable; fail_open lets the request through")
KNOWN_DEVICE = Reason("known-device", "challenge skipped: this browser passed one for this account lately")
STORE_DOWN_CLOSED = Reason("store-unavailable", "state store unreachable; fail_open is false")
ACCOUNT_TTL = 400 * 86400.0
SECRET_KEY = "secret:hmac"  # noqa: S105 (a store key's name, not a secret)

_METRIC_CODE = {
    "attempts": "a", "failures": "f", "successes": "s", "distinct_usernames": "du", "distinct_ips": "di",
}


@dataclass(slots=True)
class EngineStatus:
    store_ok: bool
    bans_cached: int
    rules: int
    attack: bool


@dataclass(slots=True)
class LoginState:
    """What ``on_login`` learned, kept on the request for ``on_response``."""

    endpoint: LoginEndpoint
    ctx: Context | None = None
    request_matches: list[tuple[Rule, Any]] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)      # key kind -> key value
    store_ok: bool = True
    allowed: Decision | None = None                          # an allow rule matched at the request phase
    decision: Decision | None = None                         # what on_login decided
    set_cookies: list[str] = field(default_factory=list)     # e.g. a rotated trusted-device cookie


def _counter_key(spec: CounterSpec, value: str) -> str:
    return f"v:{spec.key}:{value}:{_counter_suffix(spec)}"


def _counter_suffix(spec: CounterSpec) -> str:
    return f"{_METRIC_CODE[spec.metric]}:{spec.window:g}"


class Engine:
    def __init__(
        self,
        config: Config,
        store: Store,
        clock: Clock | None = None,
        runtime: Runtime | None = None,
        secret: bytes | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.clock: Clock = clock or SystemClock()
        self.rt = runtime if runtime is not None else build_runtime(config)
        self.bans = BanCache(store, self.clock, poll_interval=config.bans.poll_interval)
        self.shadow = config.shadow
        self._secret: bytes = secret or (config.secret_key or "").encode()
        self._store_ok = True
        self._attack_until = 0.0
        self._plan: tuple[Runtime, tuple[tuple[CounterSpec, str, str, str, Any], ...]] | None = None
        self._shared_seen: tuple[Any, tuple[float | None, float | None]] = (None, _parse_shared(None))
        self.attack_log = AttackLog(log)
        self._fetcher: Any = None
        self.observer: Observer = NullObserver()
        self.challenges: Any = None   # guard.challenge.Challenges, set by the adapter that owns it
        self._sealer: LoginSealer | None = None

    # ---- lifecycle ------------------------------------------------------------------------------

    @property
    def sealer(self) -> LoginSealer:
        if self._sealer is None:
            self._sealer = LoginSealer(self._secret or b"unset-secret-unset")
        return self._sealer

    async def connect(self) -> None:
        """Open the store and load the shared secret, without the ban cache or list fetching.

        Enough for a command run beside a live guard (``guard totp``, ``guard reset``): its
        account keys and sealed ids then match the guard's.  ``start`` begins with this.
        """
        await self.store.start()
        if not self._secret:
            self._secret = await self._shared_secret()

    async def start(self) -> None:
        await self.connect()
        await self.bans.refresh(force=True)
        self.bans.start()
        self._fetcher = await self._start_fetcher(self.rt)

    async def close(self) -> None:
        await self.bans.stop()
        if self._fetcher is not None:
            await self._fetcher.close()
        await self.store.close()
        self.rt.close()

    @staticmethod
    async def _start_fetcher(rt: Runtime) -> Any:
        """Keep URL lists fresh (conditional GET) and file lists in step with their files."""
        if not rt.sources:
            return None
        from guard.listfetch import ListFetcher

        fetcher = ListFetcher(rt.lists, rt.sources.values())
        await fetcher.start()
        return fetcher

    async def _shared_secret(self) -> bytes:
        """A key for username/password fingerprints that every instance sharing the store agrees on.

        With Redis the key must be configured (``secret_key`` / ``GUARD_SECRET_KEY``): every
        instance needs the same one, and it must not sit in Redis beside the hashes it keys.
        With the memory store it lives in ``state_dir/secret.key`` (mode 0600), so counters,
        history and the exposure ledger stay readable across restarts.
        """
        # Redis requires a configured secret_key (a key kept in Redis would unlock what sits beside it)
        return await asyncio.to_thread(_file_secret, self.config.state_dir / "secret.key")

    def swap_runtime(self, rt: Runtime) -> None:
        old, self.rt = self.rt, rt
        self.config = rt.config
        self.shadow = rt.config.shadow
        if old is not rt:
            old.close()

    async def reload(self, config: Config, runtime: Runtime | None = None) -> None:
        """Compile off the event loop, then swap; raises SourceError and keeps the old set on problems."""
        rt = runtime if runtime is not None else await asyncio.to_thread(build_runtime, config)
        fetcher = await self._start_fetcher(rt)
        old_fetcher, self._fetcher = self._fetcher, fetcher
        self.swap_runtime(rt)
        self.bans.poll_interval = config.bans.poll_interval
        if old_fetcher is not None:
            await old_fetcher.close()

    # ---- phases ---------------------------------------------------------------------------------

    def match_login(self, method: str, path: str) -> str | None:
        logins = self.rt.logins
        if not logins:
            return None
        ep = logins.match(method, path)
        return ep.id if ep is not None else None

    def response_peek(self, login_id: str) -> int:
        """How many bytes of a login response body the outcome classifier needs (0: none)."""
        ep = self.rt.logins.endpoints.get(login_id)
        return BODY_PEEK if ep is not None and needs_body(ep.outcome) else 0

    async def on_request(self, req: RequestFacts) -> Decision:
        """Headers are in.  Decided from memory: allow rules, bans, stateless rules."""
        rt = self.rt
        rules = rt.rules.request_rules
        if not rules:
            ban = self.bans.lookup(req.client_ip)
            if ban is not None:
                return self._finish(_banned(ban))
            if req.login is not None:
                req.scratch = LoginState(rt.logins.endpoints[req.login])
            return PASS
        ctx = self._context(req, rt, geo=rt.rules.needs_geo_request)
        allowed = first_allow(rt.rules.request_allows, ctx)
        if allowed is not None:
            decision = allow_verdict(*allowed).decision
            if req.login is not None:
                req.scratch = LoginState(rt.logins.endpoints[req.login], ctx=ctx, allowed=decision)
            return decision
        ban = self.bans.lookup(req.client_ip)
        if ban is not None:
            return self._finish(_banned(ban))
        matches = match(rt.rules.request_judged, ctx)
        if req.login is not None:
            req.scratch = LoginState(rt.logins.endpoints[req.login], ctx=ctx, request_matches=matches)
        verdict = decide(matches, rt.scoring, self.shadow)
        action = verdict.decision.action
        if action.blocks and not verdict.decision.shadow:
            if req.login is not None and action is Action.CHALLENGE:
                return PASS  # a challenge needs the username: decided with the login phase
            return await self._apply(verdict, ctx)
        if req.login is not None:
            return PASS  # non-blocking request-phase matches are combined with the login phase
        return verdict.decision

    async def on_login(self, req: RequestFacts) -> Decision:
        """The login body is buffered in ``req.body``: one store batch, then the login rules."""
        rt = self.rt
        state: LoginState | None = req.scratch
        if state is None:
            ep = rt.logins.endpoints.get(req.login or "")
            if ep is None:
                return PASS
            state = LoginState(ep)
            req.scratch = state
        if state.allowed is not None:
            return state.allowed
        fields = extract(state.endpoint, req.content_type, req.body or b"")
        ctx = state.ctx or self._context(req, rt, geo=False)
        state.ctx = ctx
        if rt.geo is not None and ctx.geo is NO_GEO:
            ctx.geo = self._geo(ctx.ip)
        ctx.body_error = fields.error
        if fields.username:
            ctx.username = rt.normalizer.normalize(fields.username)
            ctx.user_key = username_key(self._secret, ctx.username)
            ctx.honey = ctx.username in rt.honey_names
        svc = self.challenges
        if svc is not None and ctx.user_key is not None and svc.settings.devices.enabled:
            check = svc.device(request_cookies(req.headers), ctx.user_key, req.scheme == "https")
            ctx.device_known = check.status == "known"
            if check.set_cookie:
                state.set_cookies.append(check.set_cookie)
        if fields.password:
            ctx.password_fp = password_fingerprint(self._secret, fields.password)
            if rt.breached is not None:
                ctx.password_breached = await rt.breached.contains_async(fields.password)
        keys = self._keys(ctx)
        state.keys = keys
        ops, readers = self._login_batch(ctx, keys, rt)
        t_store = time.perf_counter()
        try:
            results = await self.store.execute(ops, ctx.now)
        except StoreError:
            self.observer.store_op(time.perf_counter() - t_store, False)
            state.store_ok = False
            self._store_ok = False
            if self.config.store.fail_open:
                return Decision(Action.LOG, (STORE_DOWN_OPEN,))
            return Decision(Action.UNAVAILABLE, (STORE_DOWN_CLOSED,), status=503)
        self.observer.store_op(time.perf_counter() - t_store, True)
        self._store_ok = True
        for reader, value in zip(readers, results, strict=False):
            reader(ctx, value)
        # the attack detector's reads are the batch's last ones, past the readers
        tail = results[len(readers):]
        detector = dict(zip(_DETECTOR_READS, tail, strict=True)) if tail else {}
        attack_now = await self._attack_state(ctx, detector)
        ctx.attack = attack_now
        allowed = first_allow(rt.rules.login_allows, ctx)
        if allowed is not None:
            return allow_verdict(*allowed).decision
        banned = results[0]
        for ban in banned:
            if ban is not None:
                self.bans.put(ban)
                return self._finish(_banned(ban))
        verdict = decide([*state.request_matches, *match(rt.rules.login_judged, ctx)], rt.scoring, self.shadow)
        decision = await self._apply(verdict, ctx)
        if decision.action is Action.CHALLENGE and ctx.device_known and not decision.shadow:
            # a browser that passed a challenge for this account lately skips it (devices.idle)
            decision = Decision(Action.LOG, (*decision.reasons, KNOWN_DEVICE))
        state.decision = decision
        return decision

    async def on_response(self, req: RequestFacts, resp: ResponseFacts, seen: bool = True) -> str:
        """The upstream answered a login: classify, then update counters and history.  Returns the outcome.

        ``seen`` says whether the upstream's answer reaches the client (False when the guard
        holds it behind a second factor): the exposure ledger records which.
        """
        state: LoginState | None = req.scratch
        if state is None:
            return "unknown"
        outcome = str(classify(state.endpoint.outcome, resp.status, resp.headers, resp.body_head))
        req.outcome = outcome
        ctx = state.ctx
        if ctx is None or not state.store_ok or outcome == "unknown" or state.allowed is not None:
            return outcome
        ops: list[Op] = []
        metric = "failures" if outcome == "failure" else "successes"
        for spec in self.rt.rules.counters:
            if spec.metric == metric:
                value = state.keys.get(spec.key)
                if value is not None:
                    ops.append(Hit(_counter_key(spec, value), spec.window))
        a = self.config.attack
        if a.enabled:
            code = "f" if outcome == "failure" else "s"
            ops.append(Hit(f"atk:{code}:short", a.window))
            if outcome == "failure":
                ops.append(AddDistinct("atk:fsrc", a.window, ctx.subnet))
            if not ctx.attack:  # the baseline must not learn the attack as the new normal
                ops.append(Hit(f"atk:{code}:long", a.baseline))
        if outcome == "success" and ctx.user_key is not None:
            if seen:
                # a success held behind a second factor is not a login (yet): learning its subnet
                # would let the attacker's retry skip the rules that challenged it
                hist = ctx.account or AccountHistory()
                hist.record_success(ctx.now, ctx.subnet, ctx.geo)
                ops.append(Put(f"acct:{ctx.user_key}", json.dumps(hist.to_json()).encode(), ACCOUNT_TTL))
            self._exposure(state, ctx, seen)
        if ops:
            try:
                await self.store.execute(ops, self.clock.now())
            except StoreError:
                self._store_ok = False
        return outcome

    def _exposure(self, state: LoginState, ctx: Context, seen: bool) -> None:
        """A valid password from a flagged source goes into the exposure ledger (login id sealed)."""
        if ctx.user_key is None or ctx.username is None:
            return
        flags: list[str] = []
        decision = state.decision
        rules: tuple[str, ...] = ()
        if decision is not None:
            enforced = [r for r in decision.reasons if not r.shadow and r.rule not in ("score",)]
            rules = tuple(r.rule for r in enforced)
            total = sum(r.score for r in enforced)
            if total >= self.config.observe_score or decision.action.blocks:
                flags.append("score")
        if ctx.flags:
            flags.extend(f"flagged:{f}" for f in sorted(ctx.flags))
        if ctx.honey:
            flags.append("honey")
        if ctx.attack:
            flags.append("attack")
        lists = self.rt.lists
        for name in self.config.ip_lists:
            if name.startswith("allow"):
                continue
            ipset = lists.get(name) if lists else None
            if ipset is not None and ipset.contains(ctx.ip):
                flags.append(f"list:{name}")
        if not flags:
            return
        self.observer.exposure(ExposureEntry(
            ts=ctx.now, user_key=ctx.user_key, login_sealed=self.sealer.seal(ctx.username), ip=ctx.ip,
            country=ctx.geo.country, asn=ctx.geo.asn, flags=tuple(flags), seen=seen,
            endpoint=state.endpoint.id, rules=rules,
        ))

    def after_login(self, req: RequestFacts, outcome: str) -> list[str]:
        """After a forwarded login: cookies to add (a rotated device cookie), and the owner's notification.

        The owner hears of a successful login from a browser without a trusted-device
        cookie and a subnet or country this account has not logged in from.
        """
        state = req.scratch
        if not isinstance(state, LoginState):
            return []
        svc = self.challenges
        ctx = state.ctx
        if (
            svc is not None and outcome == "success" and ctx is not None and ctx.username is not None
            and ctx.user_key is not None and state.endpoint.notify and not ctx.device_known
        ):
            acct = ctx.account
            new_place = acct is None or ctx.subnet not in acct.subnets or (
                bool(ctx.geo.country) and bool(acct.countries) and ctx.geo.country not in acct.countries
            )
            if new_place and acct is not None:  # an account's very first login is no news to its owner
                from guard.challenge import Login

                login = Login(ctx.username, ctx.user_key, ctx.ip, secure=req.scheme == "https")
                svc.notify_login(login, country=ctx.geo.country, user_agent=req.headers.get("User-Agent", ""))
        return state.set_cookies

    async def login_released(self, login_id: str, account_key: str, ip: str) -> None:
        """A held login was released by its code: it is a login now, seen by whoever typed the code.

        The account's history learns the subnet (its owner is not challenged again from home),
        and the exposure ledger records that the source got the upstream's success.
        """
        now = self.clock.now()
        try:
            subnet = subnet_of(ip)
        except ValueError:
            subnet = ip
        geo = self._geo(ip)
        try:
            (raw,) = await self.store.execute([Get(f"acct:{account_key}")], now)
            hist = AccountHistory()
            if raw:
                try:
                    hist = AccountHistory.from_json(json.loads(raw))
                except (ValueError, TypeError):
                    hist = AccountHistory()
            hist.record_success(now, subnet, geo)
            history = json.dumps(hist.to_json()).encode()
            await self.store.execute([Put(f"acct:{account_key}", history, ACCOUNT_TTL)], now)
        except StoreError:
            log.warning("a released login's history was not stored: store unreachable")
        self.observer.exposure(ExposureEntry(
            ts=now, user_key=account_key, login_sealed=self.sealer.seal(login_id), ip=ip,
            country=geo.country, asn=geo.asn, flags=("challenge",), seen=True,
        ))

    async def forced_reset(self, req: RequestFacts, outcome: str) -> str | None:
        """The reset URL when this successful login is of an account on the forced-reset list (once)."""
        url = self.config.forced_reset_url
        if url is None or outcome != "success":
            return None
        state = req.scratch
        if not isinstance(state, LoginState) or state.ctx is None or state.ctx.user_key is None:
            return None
        try:
            (flag,) = await self.store.execute([Take(f"reset:{state.ctx.user_key}")], self.clock.now())
        except StoreError:
            return None
        return url if flag is not None else None

    async def set_forced_reset(self, logins: list[str], on: bool = True) -> int:
        """Put accounts on (or take them off) the forced-reset list; returns how many."""
        norm = self.rt.normalizer or Normalizer(self.config.usernames, None)
        ops: list[Op] = []
        for login in logins:
            key = f"reset:{username_key(self._secret, norm.normalize(login))}"
            ops.append(Put(key, b"1", ACCOUNT_TTL) if on else Delete(key))
        if ops:
            await self.store.execute(ops, self.clock.now())
        return len(ops)

    async def flag_source(self, ip: str, reason: str, seconds: float = 86400.0) -> None:
        """Flag a client (e.g. it exhausted a challenge's tries): rules with ``flagged: ip`` see it."""
        try:
            await self.store.execute([Put(f"flag:ip:{ip}", reason.encode(), seconds)], self.clock.now())
        except StoreError:
            log.warning("could not flag a source: store unreachable")

    def describe(self, req: RequestFacts) -> tuple[str | None, str, int, float]:
        """(username key, country, ASN, score) of a login request, for the decision log."""
        state = req.scratch
        if not isinstance(state, LoginState) or state.ctx is None:
            return None, "", 0, 0.0
        ctx = state.ctx
        score = 0.0
        if state.decision is not None:
            score = sum(r.score for r in state.decision.reasons if not r.shadow and r.rule != "score")
        return ctx.user_key, ctx.geo.country, ctx.geo.asn, score

    # ---- bans -----------------------------------------------------------------------------------

    async def ban(self, subject: str, seconds: float, reason: str = "manual") -> Ban:
        now = self.clock.now()
        ban = Ban(subject, now + seconds, reason, now)
        await self.store.ban(ban, now)
        self.bans.put(ban)
        self.observer.ban(subject, seconds, reason)
        return ban

    async def unban(self, subject: str) -> bool:
        """Remove a ban and the counters that caused it, so the next request does not re-ban at once."""
        now = self.clock.now()
        existed = await self.store.unban(subject, now)
        self.bans.drop(subject)
        if existed:
            self.observer.ban(subject, 0.0, "unban", removed=True)
        kind, _, value = subject.partition(":")
        key_kind = {"ip": "ip", "net": "subnet"}.get(kind)
        ops: list[Op] = [Delete(f"banhist:{subject}")]
        if key_kind is not None:
            ops.extend(Delete(_counter_key(s, value)) for s in self.rt.rules.counters if s.key == key_kind)
        await self.store.execute(ops, now)
        return existed

    # ---- helpers --------------------------------------------------------------------------------

    def _geo(self, ip: str) -> GeoFacts:
        geo = self.rt.geo
        if geo is None:
            return NO_GEO
        info: GeoFacts = geo.lookup(ip)
        return info

    def _context(self, req: RequestFacts, rt: Runtime, geo: bool) -> Context:
        ip = req.client_ip
        try:
            subnet = subnet_of(ip)
        except ValueError:
            subnet = ip
        ctx = Context(req=req, now=self.clock.now(), ip=ip, subnet=subnet, login=req.login)
        if geo and rt.geo is not None:
            ctx.geo = self._geo(ip)
        return ctx

    @staticmethod
    def _keys(ctx: Context) -> dict[str, str]:
        keys = {"ip": ctx.ip, "subnet": ctx.subnet, "global": "all"}
        if ctx.geo.asn:
            keys["asn"] = str(ctx.geo.asn)
        if ctx.geo.country:
            keys["country"] = ctx.geo.country
        if ctx.user_key is not None:
            keys["username"] = ctx.user_key
        if ctx.password_fp is not None:
            keys["password"] = ctx.password_fp
        if ctx.device is not None:
            keys["device"] = ctx.device
        return keys

    def _login_batch(
        self, ctx: Context, keys: dict[str, str], rt: Runtime
    ) -> tuple[list[Op], list[Any]]:
        ops: list[Op] = [GetBans(ip_subjects(ctx.ip))]
        readers: list[Any] = [_ignore]
        for spec, kind, m, suffix, reader in self._counter_plan(rt):
            value = keys.get(kind)
            if value is None:
                continue
            key = f"v:{kind}:{value}:{suffix}"
            if m == "attempts":
                ops.append(Hit(key, spec.window))
            elif m == "distinct_usernames":
                if ctx.user_key is None:
                    continue
                ops.append(AddDistinct(key, spec.window, ctx.user_key))
            elif m == "distinct_ips":
                ops.append(AddDistinct(key, spec.window, ctx.ip))
            else:
                ops.append(Count(key, spec.window))
            readers.append(reader)
        if rt.rules.needs_account and ctx.user_key is not None:
            ops.append(Get(f"acct:{ctx.user_key}"))
            readers.append(_set_account)
        if rt.rules.needs_flags:
            subjects = [("ip", f"flag:ip:{ctx.ip}"), ("subnet", f"flag:net:{ctx.subnet}")]
            if ctx.user_key is not None:
                subjects.append(("account", f"flag:acct:{ctx.user_key}"))
            for name, key in subjects:
                ops.append(Get(key))
                readers.append(_FLAG_READERS[name])
        a = self.config.attack
        if a.enabled:
            ops.extend([   # in the order of _DETECTOR_READS
                Count("atk:f:short", a.window), Count("atk:f:long", a.baseline),
                CountDistinct("atk:fsrc", a.window), Get("atk:on"),
            ])
        return ops, readers

    def _counter_plan(self, rt: Runtime) -> tuple[tuple[CounterSpec, str, str, str, Any], ...]:
        """Per counter: its key kind, metric, store-key suffix and reader, made once per rule set.

        A login's batch is built from this on every attempt; making the keys' fixed parts and
        the readers here keeps that loop to one f-string and one op per counter.
        """
        plan = self._plan
        if plan is None or plan[0] is not rt:
            rows = tuple(
                (spec, spec.key, spec.metric, _counter_suffix(spec), _set_counter(spec))
                for spec in rt.rules.counters
            )
            plan = self._plan = (rt, rows)
        return plan[1]

    async def _attack_state(self, ctx: Context, raw: dict[str, Any]) -> bool:
        """Global failure spike against the learned baseline, with hysteresis (``attack.hold``).

        The state is shared through ``atk:on``, whose value says until when it holds, so every
        worker keeps it for the same time and none flaps between requests.  A spike that goes on
        re-arms it before it runs out (when half the hold is left), so a long attack is one state:
        one "attack in progress" line at its start, one "attack over" at its end.
        """
        a = self.config.attack
        if not a.enabled:
            return False
        now = ctx.now
        shared = self._shared(raw.get("atk_on"), now)
        short = float(raw.get("f_short", 0) or 0)
        long_ = float(raw.get("f_long", 0) or 0)
        rate_now = short / a.window
        baseline = max(long_ / a.baseline, a.floor_per_hour / 3600.0)
        sources = int(raw.get("sources", 0) or 0)
        spiking = short >= a.min_failures and sources >= a.min_sources and rate_now > a.factor * baseline
        until = max(self._attack_until, min(shared[1], now + a.hold))   # another clock's until: bounded
        if spiking and a.hold > 0 and until - now < a.hold / 2:
            until = now + a.hold
            since = shared[0] if shared[0] is not None else now
            value = {"since": since, "rate": rate_now, "until": until}
            try:
                await self.store.execute([Put("atk:on", json.dumps(value).encode(), a.hold)], now)
            except StoreError:
                pass
            self.observer.attack(True, short, rate_now * 60, baseline * 60)
        elif spiking:
            until = max(until, now + 1)   # hold 0: no hysteresis, but the spike's own evaluation is on
        self._attack_until = until
        on = until > now
        self.attack_log.follow(now, on, login=True, failures=short, rate_per_min=rate_now * 60,
                               baseline_per_min=baseline * 60)
        return on

    def _shared(self, value: Any, now: float) -> tuple[float | None, float]:
        """``atk:on`` as (since, until); an entry without ``until`` (an older guard's) holds for a second.

        The last entry parsed is remembered: during an attack every login reads the same value,
        and parsing its JSON each time was a tenth of a decision's CPU."""
        seen, parsed = self._shared_seen
        if value != seen:
            parsed = _parse_shared(value)
            self._shared_seen = (value, parsed)
        since, until = parsed
        return since, now + 1 if until is None else until

    def _judged_upstream(self, decision: Decision) -> bool:
        """A step-up challenge forwards the login: ``on_response`` counts its real outcome."""
        ch = self.config.challenge
        return decision.action is Action.CHALLENGE and ch is not None and ch.mode == "step_up"

    async def _apply(self, verdict: Verdict, ctx: Context) -> Decision:
        """Side effects of a verdict: bans (with escalation) and flags.  Skipped in shadow mode."""
        decision = verdict.decision
        if decision.shadow:
            return decision
        rule = verdict.winner
        ops: list[Op] = []
        for r in verdict.matched:
            if r.flag is not None:
                for subject in r.flag.subjects:
                    key = {"ip": f"flag:ip:{ctx.ip}", "subnet": f"flag:net:{ctx.subnet}"}.get(subject)
                    if subject == "account" and ctx.user_key is not None:
                        key = f"flag:acct:{ctx.user_key}"
                    if key is not None:
                        ops.append(Put(key, r.id.encode(), r.flag.duration))
        a = self.config.attack
        if a.enabled and ctx.login is not None and decision.action.blocks and not self._judged_upstream(decision):
            # A refused login is an attempt the upstream never judged: count it as a failure for
            # the attack detector, or the detector would calm down exactly because it works.
            ops.append(Hit("atk:f:short", a.window))
            ops.append(AddDistinct("atk:fsrc", a.window, ctx.subnet))
            if not ctx.attack:
                ops.append(Hit("atk:f:long", a.baseline))
        if ops:
            try:
                await self.store.execute(ops, ctx.now)
            except StoreError:
                log.warning("could not store flags and detector counts: store unreachable")
        if decision.action is Action.BAN and rule is not None and rule.ban is not None:
            spec = rule.ban
            banned = f"ip:{ctx.ip}" if spec.key == "ip" else f"net:{ctx.subnet}"
            try:
                (n,) = await self.store.execute([Incr(f"banhist:{banned}", self.config.bans.history)], ctx.now)
                seconds = spec.duration_for(int(n) - 1)
                await self.ban(banned, seconds, rule.id)
            except StoreError:
                seconds = spec.duration
                self.bans.put_pending(Ban(banned, ctx.now + seconds, rule.id, ctx.now))
                log.warning("ban kept locally only: store unreachable", extra={"rule": rule.id})
            return Decision(
                Action.BAN, decision.reasons, status=403, ban_seconds=seconds,
            )
        return decision

    def _finish(self, decision: Decision) -> Decision:
        if self.shadow and decision.action.blocks:
            return Decision(decision.action, decision.reasons, decision.status, shadow=True)
        return decision

    async def status(self) -> EngineStatus:
        ok = await self.store.ping()
        self._store_ok = ok
        return EngineStatus(
            store_ok=ok, bans_cached=len(self.bans), rules=len(self.rt.rules.rules),
            attack=self.attack_in_progress,
        )

    @property
    def attack_in_progress(self) -> bool:
        """Also closes the attack log's episode: an attack ends by time passing, not by a request,
        so whoever looks first (the dashboard's poll, ``status``, the next login) writes "attack over"."""
        now = self.clock.now()
        on = self._attack_until > now
        self.attack_log.follow(now, on)
        return on


def _parse_shared(value: Any) -> tuple[float | None, float | None]:
    """``atk:on`` as (since, until), ``until`` None where it is "a second from now" (unreadable or
    missing), so the parse does not depend on the time and can be reused."""
    if value is None:
        return None, 0.0
    try:
        doc = json.loads(value)
        since, until = doc.get("since"), doc.get("until")
        return (float(since) if isinstance(since, int | float) else None,
                float(until) if isinstance(until, int | float) else None)
    except (ValueError, TypeError, AttributeError):
        return None, None


def request_cookies(headers: Any) -> dict[str, str]:
    """Cookie name -> value from every Cookie header; malformed pairs are skipped, never fatal."""
    out: dict[str, str] = {}
    getall = getattr(headers, "getall", None)
    values = getall("Cookie", ()) if getall is not None else [headers.get("Cookie", "")]
    for header in values:
        for pair in str(header).split(";"):
            name, sep, value = pair.strip().partition("=")
            if sep and name and name not in out:
                out[name] = value.strip().strip('"')
    return out


def _file_secret(path: Path) -> bytes:
    try:
        data = path.read_bytes().strip()
        if len(data) >= 32:
            return data
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(32).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(value + b"\n")
    return value


def _ignore(ctx: Context, value: Any) -> None:
    return None


def _set_counter(spec: CounterSpec) -> Any:
    def reader(ctx: Context, value: Any) -> None:
        ctx.counters[spec] = float(value or 0)

    return reader


def _set_account(ctx: Context, value: Any) -> None:
    if value:
        try:
            ctx.account = AccountHistory.from_json(json.loads(value))
        except (ValueError, TypeError):
            ctx.account = None


def _set_flag(name: str) -> Any:
    def reader(ctx: Context, value: Any) -> None:
        if value is not None:
            ctx.flags = ctx.flags | {name}

    return reader


_FLAG_READERS = {name: _set_flag(name) for name in ("ip", "subnet", "account")}
_DETECTOR_READS = ("f_short", "f_long", "sources", "atk_on")


def _banned(ban: Ban) -> Decision:
    return Decision(
        Action.BLOCK,
        (Reason("banned", f"{ban.subject} banned ({ban.reason or 'manual'})", values={"until": int(ban.until)}),),
        status=403,
    )

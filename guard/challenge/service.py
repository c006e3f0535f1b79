"""The challenge as the engine and the proxy see it: four calls, pages out, held messages back.

- ``step_up(login, response, password_ok)`` after the upstream answered a risky
  login: hold the answer, return the interstitial (the same page whatever
  ``password_ok`` says).
- ``before_upstream(login, request)``: hold the request, return the interstitial.
- ``answer(form, cookies, ...)`` for a POST to ``settings.path``: verify or resend;
  on success the held message comes back to be sent (step-up) or forwarded
  once (before_upstream).  With ``channels.totp.self_enrol``, a passed step-up
  code first answers with the authenticator-app offer (``offers``); the same
  path then takes its "set up" or "skip" and releases the answer the same way.
- ``notify_login(...)`` and ``device(...)`` for notifications and trusted devices.

Codes are delivered by background tasks, after ``dispatch_delay``: a send
happens only for a right password, so doing it inline would make right
passwords measurably slower.  Whether a channel is down is learnt from
periodic probes (``check``), never from the login-driven sends, for the same
reason: a send that fails only because a password was right must not flip
what the next visitor sees.  Per-send failures go to the log and ``stats``.

``StoreError`` propagates: the adapter answers 503 and never releases a held
answer without its code (failing open here would bypass the second factor).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from guard.challenge import enrolpage, i18n, ratelimit
from guard.challenge.channels import Channel, Deps, Recipient, SendContext, build_channels
from guard.challenge.channels.totp import Enrolments, new_secret, provisioning_uri, qr_svg, record_key
from guard.challenge.devices import (
    DeviceCheck,
    Devices,
    binding_cookie,
    binding_cookie_name,
    clear_binding_cookie,
)
from guard.challenge.enrolpage import EnrolState, EnrolView
from guard.challenge.holds import Hold, Holds, Mode, Verdict
from guard.challenge.keys import KeyRing
from guard.challenge.notify import render_notice
from guard.challenge.offers import Offer, Offers
from guard.challenge.pages import Page, Pages, State, View, wants_json
from guard.challenge.sealed import HeldMessage, Sealer
from guard.challenge.settings import ChallengeSettings
from guard.engine.clock import Clock, SystemClock
from guard.store.base import Get, Store, StoreError

log = logging.getLogger("guard.challenge")


@dataclass(frozen=True, slots=True)
class Login:
    """A login as the proxy knows it.  ``login_id`` is PII: it is sealed in the hold and never logged."""

    login_id: str
    account_key: str  # guard.engine.usernames.username_key(secret, normalised login id)
    client_ip: str
    accept: str = ""
    accept_language: str = ""
    secure: bool = False  # TLS listener, or a trusted hop said https: cookies get Secure / __Host-


@dataclass(frozen=True, slots=True)
class Answer:
    """The outcome of a POST to the challenge path.

    Exactly one of ``page`` (show it) and ``released`` (the held message) is set.
    With ``released``: in step-up mode send it to the client as the upstream's
    answer, adding ``set_cookies``; in before_upstream mode forward it to the
    upstream once, add ``set_cookies`` to the upstream's answer, and add
    ``if_accepted`` too only when the upstream accepted the login (the trusted-
    device cookie: the code proved the second factor, not the password).
    When ``flag_source``, score the client like one that exhausted a hold.
    """

    verdict: Verdict | None
    page: Page | None = None
    released: HeldMessage | None = None
    mode: Mode | None = None
    set_cookies: tuple[str, ...] = ()
    account_key: str | None = None  # EXHAUSTED: score the source; PASSED: the ledger
    login_id: str | None = None     # PASSED: the login id, for the engine's history and ledger (never logged)
    locked: bool = False  # the account's guess budget is spent (the page says "wrong code")
    if_accepted: tuple[str, ...] = ()

    @property
    def flag_source(self) -> bool:
        """The client spent a hold's tries or the account's guess budget: flag it (``flagged: ip`` rules)."""
        return self.verdict is Verdict.EXHAUSTED or self.locked


class Challenges:
    def __init__(
        self,
        settings: ChallengeSettings,
        store: Store,
        *,
        clock: Clock | None = None,
        channels: Mapping[str, Channel] | None = None,
    ) -> None:
        self.settings = s = settings
        self.store = store
        self.clock: Clock = clock or SystemClock()
        self.ring = KeyRing.from_text(k.get_secret_value() for k in s.keys)
        self.sealer = Sealer(self.ring)
        self.enrolments = Enrolments(store, self.sealer, s.channels.totp)
        self.channels: dict[str, Channel] = (
            dict(channels) if channels is not None else build_channels(s, Deps(self.enrolments))
        )
        self.holds = Holds(
            store,
            self.sealer,
            hold_ttl=s.hold_ttl,
            code_ttl=s.code_ttl,
            digits=s.code_digits,
            max_tries=s.max_tries,
            max_resends=s.max_resends,
            second={"totp": self.enrolments} if "totp" in self.channels else None,
            guesses=s.account_guesses,
        )
        self.offers = Offers(store, self.sealer, ttl=s.channels.totp.self_enrol_ttl, max_tries=s.max_tries)
        self.self_enrol = s.channels.totp.self_enrol and "totp" in self.channels
        self.pages = Pages(s.brand, s.path, s.restart_path, s.code_digits, max(1, int(s.code_ttl // 60)))
        self.devices = Devices(self.ring, s.devices)
        self.healthy: dict[str, bool] = {name: True for name in self.channels}
        self.stats: Counter[str] = Counter()
        self.observer: Any = None  # guard.observe Observer, set by the adapter: send failures are metrics
        self._tasks: set[asyncio.Task[None]] = set()
        self._health: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    # ---- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._health is None and any(c.delivers for c in self.channels.values()):
            self._stopping.clear()
            self._health = asyncio.create_task(self._health_loop(), name="challenge-health")

    async def stop_probing(self, grace: float = 5.0) -> None:
        """End the health loop; a probe in flight finishes first (bounded by ``grace``).

        A probe is asked to stop, not cancelled: a cancel that lands while aiosmtplib is
        connecting is swallowed by its ``wait_for`` on Python 3.11 and leaks the half-open socket.
        """
        task, self._health = self._health, None
        if task is None:
            return
        self._stopping.set()
        _, pending = await asyncio.wait({task}, timeout=grace)
        if pending:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def aclose(self, grace: float = 5.0) -> None:
        await self.stop_probing(grace)
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for channel in self.channels.values():
            await channel.aclose()

    async def drain(self) -> None:
        """Wait for every pending delivery (tests, graceful shutdown)."""
        while self._tasks:
            await asyncio.gather(*set(self._tasks), return_exceptions=True)

    async def check_channels(self) -> dict[str, bool]:
        """Probe every delivering channel now; the result decides the 'could not send' page."""
        for name, channel in self.channels.items():
            if channel.delivers:
                result = await channel.check()
                if result.ok != self.healthy.get(name, True):
                    log.warning(
                        "channel %s is %s (%s)", name, "up" if result.ok else "down", result.error_code
                    )
                self.healthy[name] = result.ok
        return dict(self.healthy)

    # ---- holding ------------------------------------------------------------------------------

    def response_message(self, status: int, headers: Sequence[tuple[str, str]], body: bytes) -> HeldMessage:
        """The upstream's answer as a ``HeldMessage``, body over ``max_held_body`` dropped (see there)."""
        return HeldMessage.response(status, headers, body, self.settings.max_held_body)

    def request_message(
        self, method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes
    ) -> HeldMessage:
        """The login request as a ``HeldMessage``; ``ValueError`` when the body is over ``max_held_body``."""
        return HeldMessage.request(method, target, headers, body, self.settings.max_held_body)

    async def step_up(self, login: Login, response: HeldMessage, password_ok: bool) -> Page:
        """Hold the upstream's answer to a risky login; the page is the same for either ``password_ok``."""
        return await self._hold(login, Mode.STEP_UP, password_ok, response)

    async def before_upstream(self, login: Login, request: HeldMessage) -> Page:
        """Hold the login request itself; every attempt sends the owner a code (rate-limited)."""
        return await self._hold(login, Mode.BEFORE_UPSTREAM, True, request)

    async def _hold(self, login: Login, mode: Mode, armed: bool, message: HeldMessage) -> Page:
        s = self.settings
        now = self.clock.now()
        lang = self._lang(login.accept_language)
        want_json = wants_json(login.accept)
        sent, enrolment = await self.store.execute(
            [
                ratelimit.source_op(self.ring, login.client_ip, s.send_limits.per_source),
                Get(record_key(login.account_key)),
            ],
            now,
        )
        if ratelimit.over(sent, s.send_limits.per_source):
            self.stats["limited:source"] += 1
            return self.pages.render(View(State.SEND_LIMITED, lang), want_json)
        name = self._choose(login, enrolled=enrolment is not None)
        if name is None or not self.healthy.get(name, True):
            self.stats[f"unavailable:{name or 'none'}"] += 1
            return self.pages.render(View(State.CHANNEL_FAILED, lang), want_json)
        created = await self.holds.create(
            mode=mode,
            armed=armed,
            login_id=login.login_id,
            account_key=login.account_key,
            channel=name,
            lang=lang,
            client_ip=login.client_ip,
            message=message,
            now=now,
        )
        channel = self.channels[name]
        if channel.delivers:
            self._dispatch(channel, login, created.code, lang, mode is Mode.STEP_UP)
        view = View(
            State.ENTER_CODE, lang, app=not channel.delivers, hold_id=created.hold_id, csrf=created.csrf
        )
        cookie = binding_cookie(created.binding, int(s.hold_ttl), login.secure)
        return self.pages.render(view, want_json, (("Set-Cookie", cookie),))

    def _choose(self, login: Login, enrolled: bool) -> str | None:
        """The first configured channel that reaches this account: a function of the login id only."""
        recipient = Recipient(login.login_id, login.account_key)
        for name, channel in self.channels.items():
            if enrolled if name == "totp" else channel.can_reach(recipient):
                return name
        return None

    # ---- answering ----------------------------------------------------------------------------

    async def answer(
        self,
        form: Mapping[str, str],
        cookies: Mapping[str, str],
        *,
        client_ip: str,
        accept: str = "",
        accept_language: str = "",
        secure: bool = False,
    ) -> Answer:
        """A POST of the code form (``hold``, ``csrf``, ``code``, ``op`` = verify | resend) or of the
        authenticator-app offer (``offer``, ``csrf``, ``code``, ``op`` = enrol | skip)."""
        now = self.clock.now()
        lang = self._lang(accept_language)
        want_json = wants_json(accept)
        if "offer" in form:
            return await self._finish_offer(form, cookies, now, lang, want_json, secure)
        hold_id, csrf = form.get("hold", ""), form.get("csrf", "")
        if not self.holds.csrf_ok(hold_id, cookies.get(binding_cookie_name(secure), ""), csrf):
            return Answer(None, self.pages.render(View(State.FORBIDDEN, lang), want_json))
        clear = (("Set-Cookie", clear_binding_cookie(secure)),)

        if form.get("op") == "resend":
            (sent,) = await self.store.execute(
                [ratelimit.source_op(self.ring, client_ip, self.settings.send_limits.per_source)], now
            )
            if ratelimit.over(sent, self.settings.send_limits.per_source):
                r_hold = await self.holds.peek(hold_id, now)
                if r_hold is None:
                    return Answer(
                        Verdict.EXPIRED, self.pages.render(View(State.EXPIRED, lang), want_json, clear)
                    )
                return Answer(
                    Verdict.RESEND_LIMITED, self._form(State.RESEND_LIMITED, lang, r_hold, csrf, 0, want_json)
                )
            r = await self.holds.resend(hold_id, now)
            if r.hold is None:
                return Answer(r.verdict, self.pages.render(View(State.EXPIRED, lang), want_json, clear))
            channel = self.channels.get(r.hold.channel)
            if channel is not None and channel.delivers and r.verdict is Verdict.RESENT:
                login = Login(r.hold.login_id, r.hold.account_key, client_ip)
                self._dispatch(channel, login, r.code, lang, r.hold.mode is Mode.STEP_UP)
            app = channel is None or not channel.delivers
            state = (
                State.RESEND_LIMITED
                if r.verdict is Verdict.RESEND_LIMITED
                else (State.ENTER_CODE if app else State.RESENT)
            )
            return Answer(r.verdict, self._form(state, lang, r.hold, csrf, 0, want_json))

        r = await self.holds.attempt(hold_id, form.get("code", ""), now)
        if r.verdict is Verdict.PASSED and r.hold is not None:
            self.stats["passed"] += 1
            hold = r.hold
            if (
                self.self_enrol
                and hold.mode is Mode.STEP_UP  # before_upstream: the password is not known to be right
                and hold.channel != "totp"
                and not await self.enrolments.enrolled(hold.account_key, now)
            ):
                return await self._offer(hold, now, lang, want_json, secure)
            return self._release(r.verdict, hold.message, hold.mode, hold.account_key, hold.login_id, now, secure)
        if r.locked:
            self.stats["locked"] += 1
        if r.verdict is Verdict.EXHAUSTED:
            self.stats["exhausted"] += 1
            account = r.hold.account_key if r.hold is not None else None
            return Answer(
                r.verdict,
                self.pages.render(View(State.TOO_MANY_TRIES, lang), want_json, clear),
                account_key=account,
                locked=r.locked,
            )
        if r.hold is None:
            return Answer(r.verdict, self.pages.render(View(State.EXPIRED, lang), want_json, clear))
        state = State.WRONG_CODE if r.verdict is Verdict.WRONG else State.CODE_EXPIRED
        return Answer(
            r.verdict,
            self._form(state, lang, r.hold, csrf, r.tries_left, want_json),
            account_key=r.hold.account_key if r.locked else None,
            locked=r.locked,
        )

    def _release(
        self, verdict: Verdict, message: HeldMessage, mode: Mode, account_key: str, login_id: str, now: float,
        secure: bool,
    ) -> Answer:
        """The held message goes out, with the binding cookie cleared and a trusted-device cookie."""
        device = self.devices.issue(account_key, now, secure) if self.settings.devices.enabled else None
        step_up = mode is Mode.STEP_UP
        cookies_out = (clear_binding_cookie(secure), *((device,) if device and step_up else ()))
        return Answer(
            verdict,
            released=message,
            mode=mode,
            set_cookies=cookies_out,
            account_key=account_key,
            login_id=login_id,
            if_accepted=(device,) if device and not step_up else (),
        )

    # ---- the authenticator-app offer ----------------------------------------------------------

    async def _offer(self, hold: Hold, now: float, lang: str, want_json: bool, secure: bool) -> Answer:
        """Park the passed hold's answer behind the offer; the browser gets a new binding cookie."""
        parked = await self.offers.park(hold, new_secret(), now)
        self.stats["enrol:offered"] += 1
        cookie = binding_cookie(parked.binding, int(self.offers.ttl), secure)
        page = await self._enrol_page(
            EnrolState.OFFER, lang, parked.offer, parked.csrf, 0, want_json, (("Set-Cookie", cookie),)
        )
        return Answer(Verdict.PASSED, page)

    async def _finish_offer(
        self, form: Mapping[str, str], cookies: Mapping[str, str], now: float, lang: str, want_json: bool,
        secure: bool,
    ) -> Answer:
        """``op=enrol`` with the app's code, or anything else (skip): then the parked answer is released."""
        offer_id, csrf = form.get("offer", ""), form.get("csrf", "")
        if not self.offers.csrf_ok(offer_id, cookies.get(binding_cookie_name(secure), ""), csrf):
            return Answer(None, self.pages.render(View(State.FORBIDDEN, lang), want_json))
        verdict = Verdict.ENROL_SKIPPED
        if form.get("op") == "enrol":
            tries, offer = await self.offers.attempt(offer_id, now)
            if offer is None:
                return self._offer_gone(lang, want_json, secure)
            left = self.offers.max_tries - tries
            if left < 0:
                return Answer(
                    Verdict.ENROL_WRONG,
                    await self._enrol_page(EnrolState.TOO_MANY_TRIES, lang, offer, csrf, 0, want_json),
                )
            if not await self.enrolments.confirm(offer.account_key, offer.secret, form.get("code", ""), now):
                state = EnrolState.WRONG_CODE if left > 0 else EnrolState.TOO_MANY_TRIES
                page = await self._enrol_page(state, lang, offer, csrf, left, want_json)
                return Answer(Verdict.ENROL_WRONG, page)
            verdict = Verdict.ENROLLED
        offer = await self.offers.take(offer_id, now)
        if offer is None:  # expired, or finished already (by another tab or instance)
            return self._offer_gone(lang, want_json, secure)
        self.stats[f"enrol:{verdict.value}"] += 1
        return self._release(verdict, offer.message, Mode.STEP_UP, offer.account_key, offer.login_id, now, secure)

    def _offer_gone(self, lang: str, want_json: bool, secure: bool) -> Answer:
        clear = (("Set-Cookie", clear_binding_cookie(secure)),)
        return Answer(Verdict.EXPIRED, self.pages.render(View(State.EXPIRED, lang), want_json, clear))

    async def _enrol_page(
        self, state: EnrolState, lang: str, offer: Offer, csrf: str, tries_left: int, want_json: bool,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> Page:
        totp = self.settings.channels.totp
        uri = provisioning_uri(offer.secret, offer.login_id, totp)
        # Drawing the QR code takes milliseconds of CPU: not on the event loop.
        svg = "" if want_json or state is EnrolState.TOO_MANY_TRIES else await asyncio.to_thread(qr_svg, uri)
        view = EnrolView(state, lang, offer.offer_id, csrf, offer.secret, uri, svg, totp.digits, tries_left)
        return enrolpage.render(self.pages, view, want_json, extra)

    def _form(self, state: State, lang: str, hold: Hold, csrf: str, tries_left: int, want_json: bool) -> Page:
        channel = self.channels.get(hold.channel)
        app = channel is None or not channel.delivers
        return self.pages.render(View(state, lang, app, hold.hold_id, csrf, tries_left), want_json)

    # ---- devices and notifications ------------------------------------------------------------

    def device(self, cookies: Mapping[str, str], account_key: str, secure: bool) -> DeviceCheck:
        """``known`` or ``new`` for a rule's ``device:`` condition; a rotated cookie to set when due."""
        return self.devices.check(cookies, account_key, self.clock.now(), secure)

    def notify_login(self, login: Login, *, country: str, user_agent: str) -> None:
        """Tell the owner about a successful login from a new device or country (in the background)."""
        if self.settings.notify.enabled:
            self._spawn(self._notify(login, country, user_agent))

    async def _notify(self, login: Login, country: str, user_agent: str) -> None:
        s = self.settings
        now = self.clock.now()
        (count,) = await self.store.execute([ratelimit.notice_op(login.account_key, s.notify.limit)], now)
        if ratelimit.over(count, s.notify.limit):
            self.stats["notice:limited"] += 1
            return
        # The owner's language, not the (possibly an attacker's) browser's: the configured default.
        lang = s.default_language
        notice = render_notice(
            lang=lang,
            brand=s.brand.name,
            country=country,
            user_agent=user_agent,
            when=now,
            zone=s.notify.timezone,
        )
        recipient = Recipient(login.login_id, login.account_key)
        for name, channel in self.channels.items():
            if channel.delivers and channel.can_reach(recipient):
                result = await channel.notify(recipient, notice, SendContext(lang, s.brand.name))
                self.stats[f"notice:{name}:{'sent' if result.ok else result.error_code}"] += 1
                if result.ok:
                    return

    # ---- delivery -----------------------------------------------------------------------------

    def _dispatch(self, channel: Channel, login: Login, code: str | None, lang: str, verified: bool) -> None:
        """Start the delivery of ``code``; with no code (a wrong password) a task that only waits.

        Both kinds start one task, so the answer costs the same event-loop work either way.
        """
        if code is not None:
            self._spawn(self._deliver(channel, login, code, lang, verified))
        else:
            self._spawn(asyncio.sleep(self.settings.dispatch_delay))

    async def _deliver(self, channel: Channel, login: Login, code: str, lang: str, verified: bool) -> None:
        s = self.settings
        if s.dispatch_delay:
            await asyncio.sleep(s.dispatch_delay)
        now = self.clock.now()
        (count,) = await self.store.execute(
            [ratelimit.account_op(login.account_key, s.send_limits.per_account)], now
        )
        if ratelimit.over(count, s.send_limits.per_account):
            # Never shown to the client: that would say the password was right.
            self.stats["limited:account"] += 1
            log.warning("code not sent: account %s over its sending limit", login.account_key[:8])
            return
        context = SendContext(lang, s.brand.name, int(s.code_ttl), verified)
        result = await channel.send(Recipient(login.login_id, login.account_key), code, context)
        if result.ok:
            self.stats[f"sent:{channel.name}"] += 1
        else:
            self.stats[f"failed:{channel.name}:{result.error_code}"] += 1
            if self.observer is not None:
                self.observer.challenge("send_failed", channel.name)
            log.warning(
                "code not sent via %s for account %s: %s",
                channel.name,
                login.account_key[:8],
                result.error_code,
            )

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(self._guarded(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _guarded(coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except StoreError as exc:
            log.warning("challenge delivery skipped: store unavailable (%s)", exc)
        except Exception:
            log.exception("challenge delivery failed")

    async def _health_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.check_channels()
            except Exception:
                log.exception("channel health check failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.settings.channels.health_interval)

    def _lang(self, accept_language: str) -> str:
        s = self.settings
        return i18n.negotiate(accept_language, s.languages, s.default_language)

"""A legacy web service like the incident's: a login form and a contact form with PII in hidden fields.

Used by ``guard demo``, the attack simulator and the end-to-end tests, so every
one of them exercises the guard against the same realistic target: it answers a
good password with ``302`` and a session cookie, a bad one with ``200`` and the
form again, and after login serves a contact form that embeds the user's phone
number, internal user id and e-mail address in hidden ``<input>`` fields, the
way the incident's support form did.  It knows nothing of the guard.
"""

from __future__ import annotations

import hashlib
import html
import secrets
from dataclasses import dataclass
from urllib.parse import parse_qsl

from aiohttp import web


@dataclass(frozen=True, slots=True)
class Account:
    login: str       # an e-mail address, as in the incident
    password: str
    phone: str
    user_id: str     # LINE-style internal id: "U" + 32 hex


def make_accounts(n: int, seed: str = "loginguard-demo") -> dict[str, Account]:
    """``n`` deterministic accounts: user0@example.jp ... with derived passwords and PII."""
    out: dict[str, Account] = {}
    for i in range(n):
        h = hashlib.sha256(f"{seed}:{i}".encode()).hexdigest()
        login = f"user{i}@example.jp"
        out[login] = Account(
            login=login,
            password=f"pw-{h[:10]}",
            phone=f"090-{int(h[10:14], 16) % 10000:04d}-{int(h[14:18], 16) % 10000:04d}",
            user_id="U" + h[18:50],
        )
    return out


LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Support - sign in</title></head>
<body><h1>Customer support</h1>{message}
<form method="post" action="/login">
<label>ID (e-mail) <input name="username" autocomplete="username"></label>
<label>Password <input name="password" type="password" autocomplete="current-password"></label>
<button type="submit">Sign in</button>
</form></body></html>
"""

CONTACT_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Contact us</title></head>
<body><h1>Contact form</h1>
<p>Signed in as {login_html}.</p>
<form method="post" action="/contact">
<input type="hidden" name="phone" value="{phone}">
<input type="hidden" name="mid" value="{user_id}">
<input type="hidden" name="email" value="{email}">
<label>Your message <textarea name="message"></textarea></label>
<button type="submit">Send</button>
</form></body></html>
"""

SESSIONS = web.AppKey("sessions", dict)
ACCOUNTS = web.AppKey("accounts", dict)
RECEIVED = web.AppKey("received", list)


async def _login_form(request: web.Request) -> web.Response:
    return web.Response(text=LOGIN_PAGE.format(message=""), content_type="text/html")


async def _login(request: web.Request) -> web.Response:
    body = await request.read()
    fields = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    acct = request.app[ACCOUNTS].get(fields.get("username", "").strip().lower())
    given = fields.get("password", "").encode()
    if acct is None or not secrets.compare_digest(acct.password.encode(), given):
        page = LOGIN_PAGE.format(message='<p class="error">Invalid ID or password.</p>')
        return web.Response(text=page, content_type="text/html")
    sid = secrets.token_urlsafe(16)
    request.app[SESSIONS][sid] = acct.login
    resp = web.Response(status=302, headers={"Location": "/contact"})
    resp.set_cookie("SID", sid, httponly=True, samesite="Lax")
    return resp


def _account(request: web.Request) -> Account | None:
    login = request.app[SESSIONS].get(request.cookies.get("SID", ""))
    return request.app[ACCOUNTS].get(login) if login else None


async def _contact_form(request: web.Request) -> web.Response:
    acct = _account(request)
    if acct is None:
        raise web.HTTPFound("/login")
    page = CONTACT_PAGE.format(
        login_html=html.escape(acct.login), phone=acct.phone, user_id=acct.user_id, email=acct.login
    )
    return web.Response(text=page, content_type="text/html")


async def _contact(request: web.Request) -> web.Response:
    acct = _account(request)
    if acct is None:
        raise web.HTTPFound("/login")
    data = await request.post()
    got = {k: str(data.get(k, "")) for k in ("phone", "mid", "email", "message")}
    request.app[RECEIVED].append(got)
    ok = got["phone"] == acct.phone and got["mid"] == acct.user_id and got["email"] == acct.login
    return web.json_response({"received": True, "identified": ok})


async def _home(request: web.Request) -> web.Response:
    page = "<!doctype html><title>Support</title><a href=/login>Sign in</a>"
    return web.Response(text=page, content_type="text/html")


def make_app(accounts: dict[str, Account]) -> web.Application:
    app = web.Application()
    app[ACCOUNTS] = accounts
    app[SESSIONS] = {}
    app[RECEIVED] = []
    app.router.add_get("/", _home)
    app.router.add_get("/login", _login_form)
    app.router.add_post("/login", _login)
    app.router.add_get("/contact", _contact_form)
    app.router.add_post("/contact", _contact)
    return app

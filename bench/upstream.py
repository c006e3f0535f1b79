"""A fast stand-in for the legacy service that loginguard protects.

The benchmark needs an upstream that costs as little CPU as possible, because it
shares core 0 with the proxy under test: every cycle it burns is a cycle taken
from the proxy.  So pages are rendered once at start-up and every handler only
wraps prebuilt bytes in a response.  The content is still realistic -- an 8 KB
table-layout page with a login form and hidden fields, a 302 with a session
cookie on a good login, the form again with an error on a bad one -- so a proxy
that inspects or rewrites HTML does its real amount of work.

Routes:  GET /page (8192-byte HTML), POST /login (form ``user``/``password``;
any user with password ``right`` or ``right-<anything>`` -> 302, else 200 + form),
GET /contact (10240-byte contact-form page with a phone number, an e-mail address and a
LINE-style ``U``+32-hex user id in hidden inputs: the PII the guard tokenizes by default),
GET /health, anything else 404.

Per-account passwords (``right-<n>``) exist for the login load: real users do not share one
password, and a guard *should* challenge one password tried against thousands of accounts
(password spraying).

Run:  python bench/upstream.py --port 8081
"""

from __future__ import annotations

import argparse
import secrets
from urllib.parse import parse_qsl

from _serve import run, serve
from aiohttp import web

PAGE_SIZE = 8192
CONTACT_SIZE = 10240
GOOD_PASSWORD = "right"  # a fixture credential of the benchmark, not a secret
# The PII in the contact page's hidden fields (fixtures, nobody's real data): a proxy that
# rewrites PII must not let any of them through; a plain proxy passes all of them.
CONTACT_PII = ("090-1234-5678", "taro.yamada@example.co.jp", "U4af4980629c2e7f5f6ae1e1cb8d9b3e7")

_HTML = "text/html; charset=utf-8"


def _render(error: str = "") -> bytes:
    """The legacy intranet page: header, side menu, news table, the login form, footer."""
    menu = "\n".join(
        f'        <tr><td class="menu"><a href="/app/{name.lower()}.asp">{name}</a></td></tr>'
        for name in ("Home", "Timesheets", "Expenses", "Directory", "Payroll", "Helpdesk", "Reports")
    )
    news = "\n".join(
        f'        <tr class="{"odd" if i % 2 else "even"}"><td>2009-0{1 + i % 9}-{10 + i:02d}</td>'
        f"<td>Maintenance window {i}: the payroll batch runs from 22:00; please log off before then.</td>"
        f'<td><a href="/news/item.asp?id={1000 + i}">more&hellip;</a></td></tr>'
        for i in range(14)
    )
    banner = f'      <p class="error">{error}</p>\n' if error else ""
    html = f"""<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 4.01 Transitional//EN" "http://www.w3.org/TR/html4/loose.dtd">
<html>
<head>
  <meta http-equiv="Content-Type" content="text/html; charset=utf-8">
  <title>ACME Corp Intranet - Sign in</title>
  <style type="text/css">
    body {{ font-family: Verdana, Arial, sans-serif; font-size: 11px; background: #e8ecf0; margin: 0; }}
    #head {{ background: #003366; color: #fff; padding: 8px 12px; font-size: 16px; }}
    td.menu {{ background: #d0d8e0; padding: 4px 8px; border-bottom: 1px solid #b0b8c0; }}
    tr.odd td {{ background: #f4f6f8; }} tr.even td {{ background: #ffffff; }}
    .box {{ border: 1px solid #8899aa; background: #fff; padding: 10px; margin: 10px; }}
    .error {{ color: #cc0000; font-weight: bold; }}
    input.text {{ width: 180px; border: 1px solid #8899aa; }}
  </style>
  <script type="text/javascript">
    function checkForm(f) {{
      if (f.user.value == "" || f.password.value == "") {{
        alert("Please enter user name and password."); return false;
      }}
      f.submitBtn.disabled = true; return true;
    }}
  </script>
</head>
<body onload="document.forms['login'].user.focus()">
  <div id="head">ACME Corp Intranet &mdash; Employee Self Service</div>
  <table width="100%" cellpadding="0" cellspacing="0" border="0"><tr>
    <td width="160" valign="top">
      <table width="100%" cellpadding="0" cellspacing="0">
{menu}
      </table>
    </td>
    <td valign="top">
      <div class="box">
      <h2>Sign in</h2>
{banner}      <form name="login" method="post" action="/login" onsubmit="return checkForm(this)">
        <input type="hidden" name="__VIEWSTATE" value="dDwtMTA4NzI0NTQ4Mzs7Pj0xqYk2wN1Hn0S8dWcQm6xGmJ3Y">
        <input type="hidden" name="csrf_token" value="6f1c0d9e2b7a4c3f8e5d1a0b9c8d7e6f">
        <input type="hidden" name="returnUrl" value="/app/home.asp">
        <table cellpadding="3">
          <tr><td>User name:</td><td><input class="text" type="text" name="user" maxlength="32"></td></tr>
          <tr><td>Password:</td>
              <td><input class="text" type="password" name="password" maxlength="64"></td></tr>
          <tr><td></td>
              <td><input type="checkbox" name="remember" value="1"> Remember me on this computer</td></tr>
          <tr><td></td><td><input type="submit" name="submitBtn" value="Sign in"></td></tr>
        </table>
      </form>
      <p><a href="/app/forgot.asp">Forgot your password?</a> | <a href="/app/help.asp">Help</a></p>
      </div>
      <div class="box">
      <h3>News</h3>
      <table width="100%" cellpadding="3" cellspacing="0">
{news}
      </table>
      </div>
    </td>
  </tr></table>
  <div class="box">&copy; 2003-2009 ACME Corp. Authorised users only. All access is logged.</div>
"""
    tail = "</body>\n</html>\n"
    raw = html.encode()
    pad = PAGE_SIZE - len(raw) - len(tail) - len("<!--  -->\n")
    if pad < 0:
        raise RuntimeError(f"page template is {-pad} bytes over {PAGE_SIZE}")
    return raw + f"<!-- {'x' * pad} -->\n{tail}".encode()


def _render_contact() -> bytes:
    """A logged-in support page: the incident's shape, PII of the account in hidden form fields."""
    phone, mail, uid = CONTACT_PII
    history = "\n".join(
        f'        <tr class="{"odd" if i % 2 else "even"}"><td>#{40210 + i}</td><td>2009-0{1 + i % 9}-{10 + i:02d}</td>'
        f"<td>Question about invoice {7000 + i}: the amount differs from the order confirmation.</td>"
        f'<td><a href="/support/ticket.asp?id={40210 + i}">open</a></td></tr>'
        for i in range(24)
    )
    html = f"""<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 4.01 Transitional//EN" "http://www.w3.org/TR/html4/loose.dtd">
<html>
<head>
  <meta http-equiv="Content-Type" content="text/html; charset=utf-8">
  <title>ACME Corp - Contact support</title>
  <style type="text/css">
    body {{ font-family: Verdana, Arial, sans-serif; font-size: 11px; background: #e8ecf0; margin: 0; }}
    #head {{ background: #003366; color: #fff; padding: 8px 12px; font-size: 16px; }}
    tr.odd td {{ background: #f4f6f8; }} tr.even td {{ background: #ffffff; }}
    .box {{ border: 1px solid #8899aa; background: #fff; padding: 10px; margin: 10px; }}
    textarea, input.text {{ width: 360px; border: 1px solid #8899aa; }}
  </style>
  <script type="text/javascript">
    function send(f) {{ if (f.body.value == "") {{ alert("Please describe your question."); return false; }}
      f.submitBtn.disabled = true; return true; }}
  </script>
</head>
<body>
  <div id="head">ACME Corp &mdash; Customer support</div>
  <div class="box">
  <h2>Contact support</h2>
  <form name="contact" method="post" action="/support/contact.asp" onsubmit="return send(this)">
    <input type="hidden" name="__VIEWSTATE" value="dDwtMTA4NzI0NTQ4Mzs7Pj0xqYk2wN1Hn0S8dWcQm6xGmJ3Y">
    <input type="hidden" name="csrf_token" value="6f1c0d9e2b7a4c3f8e5d1a0b9c8d7e6f">
    <input type="hidden" name="mid" value="{uid}">
    <input type="hidden" name="tel" value="{phone}">
    <input type="hidden" name="mail" value="{mail}">
    <input type="hidden" name="lang" value="ja">
    <table cellpadding="3">
      <tr><td>Topic:</td><td><select name="topic"><option value="1">Login</option>
        <option value="2">Billing</option><option value="3">Other</option></select></td></tr>
      <tr><td>Question:</td><td><textarea name="body" rows="8" cols="60"></textarea></td></tr>
      <tr><td></td><td><input type="submit" name="submitBtn" value="Send"></td></tr>
    </table>
  </form>
  </div>
  <div class="box">
  <h3>Your previous questions</h3>
  <table width="100%" cellpadding="3" cellspacing="0">
{history}
  </table>
  </div>
  <div class="box">&copy; 2003-2009 ACME Corp. Authorised users only. All access is logged.</div>
"""
    tail = "</body>\n</html>\n"
    raw = html.encode()
    pad = CONTACT_SIZE - len(raw) - len(tail) - len("<!--  -->\n")
    if pad < 0:
        raise RuntimeError(f"contact template is {-pad} bytes over {CONTACT_SIZE}")
    return raw + f"<!-- {'x' * pad} -->\n{tail}".encode()


PAGE = _render()
LOGIN_FAILED = _render("Invalid user name or password.")
CONTACT = _render_contact()
assert len(PAGE) == len(LOGIN_FAILED) == PAGE_SIZE
assert len(CONTACT) == CONTACT_SIZE


def good_password(password: str | None) -> bool:
    """``right``, or a per-account ``right-<anything>``."""
    return password is not None and (password == GOOD_PASSWORD or password.startswith(GOOD_PASSWORD + "-"))


async def handle(request: web.BaseRequest) -> web.StreamResponse:
    path, method = request.path, request.method
    if path == "/page" and method in ("GET", "HEAD"):
        return web.Response(body=PAGE, headers={"Content-Type": _HTML, "Cache-Control": "no-cache"})
    if path == "/contact" and method in ("GET", "HEAD"):
        return web.Response(body=CONTACT, headers={"Content-Type": _HTML, "Cache-Control": "no-cache"})
    if path == "/login":
        if method == "GET":
            return web.Response(body=PAGE, headers={"Content-Type": _HTML, "Cache-Control": "no-cache"})
        if method == "POST":
            form = dict(parse_qsl((await request.read()).decode("utf-8", "replace")))
            # any account with the right password: the login load varies users and clients
            if form.get("user") and good_password(form.get("password")):
                return web.Response(
                    status=302,
                    headers={
                        "Location": "/app/home.asp",
                        "Set-Cookie": f"ASPSESSIONID={secrets.token_hex(12)}; Path=/; HttpOnly",
                    },
                )
            return web.Response(
                body=LOGIN_FAILED, headers={"Content-Type": _HTML, "Cache-Control": "no-cache"}
            )
        return web.Response(status=405, headers={"Allow": "GET, POST"})
    if path == "/health":
        return web.Response(text="ok")
    return web.Response(status=404, text="not found")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    run(lambda: serve(handle, args.host, args.port, name="upstream"))


if __name__ == "__main__":
    main()

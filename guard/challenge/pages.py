"""The interstitial: one self-contained page per state, plus its JSON twin for API clients.

What a client may learn from this page is the product's promise, so the
rules are strict and live here:

- The page is a function of the *state* only (never of whether the password
  was right): ``render`` has no parameter that could carry it.  The oracle
  test renders both kinds and compares bytes modulo the random tokens.
- Nothing from the request is reflected: the text comes from the catalogue,
  numbers from the guard, the brand from config; everything is escaped anyway.
- No script, no external asset (the logo is a data: URL), and ``PAGE_CSP``
  forbids everything else, framing included (clickjacking the code form).
- Accessible without effort: ``lang``, a real ``<label>``, errors tied to the
  input by ``aria-describedby`` and announced (``role="alert"``),
  ``autocomplete="one-time-code"`` and ``inputmode="numeric"`` so phones offer
  the code, the verify button first in tree order (Enter verifies), and a
  button text colour chosen for contrast with the brand colour.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from enum import StrEnum

from guard.challenge import i18n
from guard.challenge.settings import BrandSettings

PAGE_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
"""The Content-Security-Policy of every challenge page: no script, no fetch, no frame, forms to self only."""

PAGE_HEADERS: tuple[tuple[str, str], ...] = (
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Content-Security-Policy", PAGE_CSP),
    ("Vary", "Accept, Accept-Language, Cookie"),
)


class State(StrEnum):
    ENTER_CODE = "enter_code"
    RESENT = "resent"
    WRONG_CODE = "wrong_code"
    CODE_EXPIRED = "code_expired"
    RESEND_LIMITED = "resend_limited"
    EXPIRED = "expired"
    TOO_MANY_TRIES = "too_many_tries"
    CHANNEL_FAILED = "channel_failed"
    SEND_LIMITED = "send_limited"
    FORBIDDEN = "forbidden"


_STATUS = {
    State.ENTER_CODE: 200,
    State.RESENT: 200,
    State.WRONG_CODE: 422,
    State.CODE_EXPIRED: 422,
    State.RESEND_LIMITED: 429,
    State.EXPIRED: 410,
    State.TOO_MANY_TRIES: 429,
    State.CHANNEL_FAILED: 503,
    State.SEND_LIMITED: 429,
    State.FORBIDDEN: 403,
}
_WITH_FORM = frozenset(
    {State.ENTER_CODE, State.RESENT, State.WRONG_CODE, State.CODE_EXPIRED, State.RESEND_LIMITED}
)
_MESSAGE_KEY = {
    State.WRONG_CODE: "wrong",
    State.CODE_EXPIRED: "code_expired",
    State.RESEND_LIMITED: "resend_limited",
    State.EXPIRED: "expired",
    State.TOO_MANY_TRIES: "too_many",
    State.CHANNEL_FAILED: "channel_failed",
    State.SEND_LIMITED: "send_limited",
    State.FORBIDDEN: "forbidden",
}


@dataclass(frozen=True, slots=True)
class View:
    """Everything a page shows.  ``app`` is True when the code comes from an authenticator app."""

    state: State
    lang: str
    app: bool = False
    hold_id: str = ""
    csrf: str = ""
    tries_left: int = 0


@dataclass(frozen=True, slots=True)
class Page:
    """A transport-free answer: the adapter copies status, headers and body to its response."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


def _luminance(hex_colour: str) -> float:
    def channel(c: int) -> float:
        s = c / 255
        return s / 12.92 if s <= 0.03928 else ((s + 0.055) / 1.055) ** 2.4

    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def on_colour(hex_colour: str) -> str:
    """White or near-black text, whichever contrasts more with ``hex_colour`` (WCAG 2 ratio)."""
    lum = _luminance(hex_colour)
    return (
        "#ffffff" if (1.05 / (lum + 0.05)) >= ((lum + 0.05) / (_luminance("#1f2328") + 0.05)) else "#1f2328"
    )


_CSS = """body{{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI","Hiragino Sans","Noto Sans JP",
sans-serif;
background:#f6f8fa;color:#1f2328}}
main{{max-width:30rem;margin:10vh auto;padding:2rem;background:#fff;border-radius:8px;
border-top:6px solid {color};box-shadow:0 1px 3px rgba(0,0,0,.15)}}
h1{{margin:0 0 .75rem;font-size:1.5rem}}
img{{max-height:48px;max-width:100%;display:block;margin-bottom:1rem}}
label{{display:block;font-weight:600;margin:1.25rem 0 .25rem}}
input{{font:inherit;font-size:1.5rem;letter-spacing:.2em;width:100%;box-sizing:border-box;padding:.5rem;
border:2px solid #59636e;border-radius:6px}}
button{{font:inherit;margin:1rem .5rem 0 0;padding:.6rem 1.2rem;border-radius:6px;border:2px solid {color};
background:{color};color:{on};cursor:pointer}}
button.secondary{{background:#fff;color:#1f2328;border-color:#59636e}}
:focus-visible{{outline:3px solid #0b57d0;outline-offset:2px}}
.alert{{padding:.75rem;border-left:4px solid #b3261e;background:#fdecea;color:#5f1410;margin:1rem 0}}
.hint,footer{{font-size:.875rem;color:#59636e}} footer{{margin-top:1.5rem}} a{{color:#0b57d0}}
.qr{{margin:1rem 0;width:max-content;max-width:100%}} .qr svg{{display:block;max-width:100%;height:auto}}
code.key{{font:1rem/1.5 ui-monospace,"SFMono-Regular",Menlo,monospace;word-spacing:.3em;overflow-wrap:anywhere}}"""


class Pages:
    """Renders the challenge pages for one brand; built once at config load."""

    __slots__ = ("_css", "_digits", "_minutes", "action", "brand", "restart")

    def __init__(
        self, brand: BrandSettings, action: str, restart: str, digits: int, code_minutes: int
    ) -> None:
        self.brand = brand
        self.action = action
        self.restart = restart
        self._digits = digits
        self._minutes = code_minutes
        self._css = _CSS.format(color=brand.color, on=on_colour(brand.color))

    def render(self, view: View, want_json: bool, extra_headers: tuple[tuple[str, str], ...] = ()) -> Page:
        status = _STATUS[view.state]
        lang = view.lang if view.lang in i18n.LANGUAGES else "en"
        if want_json:
            body = self._json(view, lang)
            ctype = "application/json"
        else:
            body = self._html(view, lang)
            ctype = "text/html; charset=utf-8"
        headers = (("Content-Type", ctype), ("Content-Language", lang), *PAGE_HEADERS, *extra_headers)
        return Page(status, headers, body)

    # ---- bodies -------------------------------------------------------------------------------

    def _message(self, view: View, lang: str) -> str:
        key = _MESSAGE_KEY.get(view.state)
        return i18n.text(lang, key, tries=view.tries_left) if key else ""

    def _intro(self, view: View, lang: str) -> str:
        if view.app:
            return i18n.text(lang, "intro.totp", digits=self._digits)
        if view.state is State.RESENT:
            return i18n.text(lang, "intro.resent")
        return i18n.text(lang, "intro.sent", digits=self._digits, minutes=self._minutes)

    def _json(self, view: View, lang: str) -> bytes:
        doc: dict[str, object] = {"state": view.state.value, "lang": lang}
        message = self._message(view, lang)
        if message:
            doc["message"] = message
        if view.state in _WITH_FORM:
            doc.update(
                {
                    "prompt": self._intro(view, lang),
                    "hold": view.hold_id,
                    "csrf": view.csrf,
                    "digits": self._digits,
                    "source": "app" if view.app else "sent",
                    "action": self.action,
                }
            )
            if view.state in (State.WRONG_CODE, State.CODE_EXPIRED):
                doc["tries_left"] = view.tries_left
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()

    def _html(self, view: View, lang: str) -> bytes:
        e = html.escape
        parts: list[str] = []
        message = self._message(view, lang)
        if view.state in _WITH_FORM:
            parts.append(f"<p>{e(self._intro(view, lang))}</p>\n")
            described = "hint"
            if message:
                parts.append(f'<p class="alert" id="msg" role="alert">{e(message)}</p>\n')
                described = "msg hint"
            parts.append(
                f'<form method="post" action="{e(self.action)}">\n'
                f'<input type="hidden" name="hold" value="{e(view.hold_id)}">\n'
                f'<input type="hidden" name="csrf" value="{e(view.csrf)}">\n'
                f'<label for="code">{e(i18n.text(lang, "label"))}</label>\n'
                f'<input id="code" name="code" type="text" inputmode="numeric" autocomplete="one-time-code" '
                f'maxlength="{self._digits + 8}" spellcheck="false" autocapitalize="off" required autofocus '
                f'aria-describedby="{described}">\n'
                f'<p class="hint" id="hint">{e(i18n.text(lang, "hint"))}</p>\n'
                f'<button type="submit" name="op" value="verify">{e(i18n.text(lang, "submit"))}</button>\n'
            )
            if not view.app and view.state is not State.RESEND_LIMITED:
                parts.append(
                    f'<button type="submit" name="op" value="resend" class="secondary" formnovalidate>'
                    f"{e(i18n.text(lang, 'resend'))}</button>\n"
                )
            parts.append("</form>\n")
            if not view.app:
                parts.append(f'<p class="hint">{e(i18n.text(lang, "no_code"))}</p>\n')
        else:
            parts.append(
                f'<p class="alert" role="alert">{e(message)}</p>\n'
                f'<p><a href="{e(self.restart)}">{e(i18n.text(lang, "restart"))}</a></p>\n'
            )
        return self.frame(lang, i18n.text(lang, "heading"), "".join(parts))

    def frame(self, lang: str, heading: str, inner: str) -> bytes:
        """A whole page around ``inner`` (HTML the caller escaped): head, logo, heading, support footer.

        Shared by every page of the challenge (the enrolment offer too), so brand,
        CSP-compatible styling and accessibility live in one place.
        """
        e = html.escape
        b = self.brand
        title = e(heading)
        logo = f'<img src="{e(b.logo)}" alt="{e(b.name)}">\n' if b.logo else ""
        support = f"{e(b.support)}<br>" if b.support else ""
        return (
            f'<!doctype html>\n<html lang="{e(lang)}"><head><meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            '<meta name="robots" content="noindex">\n'
            f"<title>{title} - {e(b.title)}</title>\n<style>{self._css}</style></head>\n<body><main>\n"
            f"{logo}<h1>{title}</h1>\n{inner}"
            f"<footer>{support}{e(b.name)}</footer>\n</main></body></html>\n"
        ).encode()


def wants_json(accept: str) -> bool:
    """An API client (asks for JSON and not for HTML) gets JSON; browsers get HTML."""
    a = accept.lower()
    return "json" in a and "text/html" not in a

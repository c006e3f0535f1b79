"""The authenticator-app offer page (and its JSON twin), shown between a passed code and the release.

Apart from the interstitial's own rules (see ``pages``: no script, no external
asset, ``PAGE_CSP``, everything escaped, ``no-store``), two things matter here:

- The QR code is an inline SVG drawn by the guard from its own ``otpauth://``
  URI: no image service ever sees the secret.  The key is also printed as text,
  grouped by four, for a phone that cannot scan its own screen and for screen
  readers (the SVG is one ``role="img"`` with a label).
- The page shows the new secret, so it is only ever rendered for an offer's
  owner (the adapter checks the binding cookie and CSRF token first), and the
  secret is never part of a URL, a log line or a cookie.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from enum import StrEnum

from guard.challenge import i18n
from guard.challenge.pages import PAGE_HEADERS, Page, Pages


class EnrolState(StrEnum):
    OFFER = "enrol_offer"
    WRONG_CODE = "enrol_wrong_code"
    TOO_MANY_TRIES = "enrol_too_many_tries"  # only "continue" is left


_STATUS = {EnrolState.OFFER: 200, EnrolState.WRONG_CODE: 422, EnrolState.TOO_MANY_TRIES: 429}


@dataclass(frozen=True, slots=True)
class EnrolView:
    state: EnrolState
    lang: str
    offer_id: str
    csrf: str
    secret: str  # base32
    uri: str  # otpauth://
    svg: str  # the QR code (guard-made markup, not escaped)
    digits: int
    tries_left: int = 0


def render(pages: Pages, view: EnrolView, want_json: bool, extra_headers: tuple[tuple[str, str], ...] = ()) -> Page:
    lang = view.lang if view.lang in i18n.LANGUAGES else "en"
    if want_json:
        body, ctype = _json(pages, view, lang), "application/json"
    else:
        body, ctype = _html(pages, view, lang), "text/html; charset=utf-8"
    headers = (("Content-Type", ctype), ("Content-Language", lang), *PAGE_HEADERS, *extra_headers)
    return Page(_STATUS[view.state], headers, body)


def grouped(secret: str) -> str:
    """``JBSWY3DPEHPK3PXP`` as ``JBSW Y3DP EHPK 3PXP``: easier to type, and apps ignore the spaces."""
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


def _message(view: EnrolView, lang: str) -> str:
    if view.state is EnrolState.WRONG_CODE:
        return i18n.text(lang, "enrol.wrong", tries=view.tries_left)
    if view.state is EnrolState.TOO_MANY_TRIES:
        return i18n.text(lang, "enrol.too_many")
    return ""


def _json(pages: Pages, view: EnrolView, lang: str) -> bytes:
    doc: dict[str, object] = {
        "state": view.state.value,
        "lang": lang,
        "offer": view.offer_id,
        "csrf": view.csrf,
        "action": pages.action,
        "ops": ["skip"] if view.state is EnrolState.TOO_MANY_TRIES else ["enrol", "skip"],
    }
    message = _message(view, lang)
    if message:
        doc["message"] = message
    if view.state is not EnrolState.TOO_MANY_TRIES:
        doc.update(
            {
                "prompt": i18n.text(lang, "enrol.intro", digits=view.digits),
                "digits": view.digits,
                "otpauth": view.uri,
                "secret": view.secret,
            }
        )
    if view.state is EnrolState.WRONG_CODE:
        doc["tries_left"] = view.tries_left
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def _html(pages: Pages, view: EnrolView, lang: str) -> bytes:
    e = html.escape
    parts: list[str] = []
    message = _message(view, lang)
    form = (
        f'<form method="post" action="{e(pages.action)}">\n'
        f'<input type="hidden" name="offer" value="{e(view.offer_id)}">\n'
        f'<input type="hidden" name="csrf" value="{e(view.csrf)}">\n'
    )
    if view.state is EnrolState.TOO_MANY_TRIES:
        parts.append(
            f'<p class="alert" role="alert">{e(message)}</p>\n{form}'
            f'<button type="submit" name="op" value="skip" autofocus>{e(i18n.text(lang, "enrol.continue"))}</button>\n'
            "</form>\n"
        )
        return pages.frame(lang, i18n.text(lang, "enrol.heading"), "".join(parts))
    parts.append(
        f"<p>{e(i18n.text(lang, 'enrol.intro', digits=view.digits))}</p>\n"
        f'<div class="qr" role="img" aria-label="{e(i18n.text(lang, "enrol.qr"))}">{view.svg}</div>\n'
        f'<p class="hint">{e(i18n.text(lang, "enrol.manual"))}<br>'
        f'<code class="key">{e(grouped(view.secret))}</code></p>\n'
    )
    described = "hint"
    if message:
        parts.append(f'<p class="alert" id="msg" role="alert">{e(message)}</p>\n')
        described = "msg hint"
    parts.append(
        f"{form}"
        f'<label for="code">{e(i18n.text(lang, "enrol.label"))}</label>\n'
        f'<input id="code" name="code" type="text" inputmode="numeric" autocomplete="one-time-code" '
        f'maxlength="{view.digits + 8}" spellcheck="false" autocapitalize="off" required '
        f'aria-describedby="{described}">\n'
        f'<p class="hint" id="hint">{e(i18n.text(lang, "enrol.hint"))}</p>\n'
        f'<button type="submit" name="op" value="enrol">{e(i18n.text(lang, "enrol.submit"))}</button>\n'
        f'<button type="submit" name="op" value="skip" class="secondary" formnovalidate>'
        f"{e(i18n.text(lang, 'enrol.skip'))}</button>\n"
        "</form>\n"
    )
    return pages.frame(lang, i18n.text(lang, "enrol.heading"), "".join(parts))

"""guard.challenge.pages and .i18n: every state in every language, escaping, accessibility, negotiation."""

from __future__ import annotations

import json
import re

import pytest

from guard.challenge import i18n
from guard.challenge.pages import PAGE_CSP, Pages, State, View, on_colour, wants_json
from guard.challenge.settings import BrandSettings

LOGO = "data:image/png;base64,iVBORw0KGgo="
BRAND = BrandSettings(
    title='Help <desk> & "co"', name="Ex<ample>", color="#ffcc00", support="<b>0120</b>", logo=LOGO
)


def pages() -> Pages:
    return Pages(BRAND, "/.loginguard/challenge", "/login", 6, 5)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("", "en"),
        ("ja", "ja"),
        ("ja-JP", "ja"),
        ("en-US,en;q=0.9,ja;q=0.8", "en"),
        ("en;q=0.5, ja;q=0.9", "ja"),
        ("fr-CH, fr;q=0.9, ja;q=0.8, *;q=0.5", "ja"),
        ("fr, de", "en"),
        ("*", "en"),
        ("ja;q=0, *", "en"),
        ("en;q=0, *;q=0.1", "en"),  # nothing acceptable: the default is the last resort
        ("ja;q=abc, en;q=0.1", "en"),
        ("<script>, ja", "ja"),
        ("ja;q=2", "en"),  # out-of-range q: ignored
        ("JA-jp", "ja"),
    ],
)
def test_negotiate(header: str, expected: str) -> None:
    assert i18n.negotiate(header, ("en", "ja"), "en") == expected


def test_catalogues_have_the_same_keys_and_fields() -> None:
    fields = re.compile(r"{(\w+)")
    for key, template in i18n.CATALOGUE["en"].items():
        other = i18n.CATALOGUE["ja"][key]
        assert sorted(fields.findall(template)) == sorted(fields.findall(other)), key
    assert set(i18n.CATALOGUE["en"]) == set(i18n.CATALOGUE["ja"])


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("lang", ["en", "ja"])
def test_every_state_renders_safely(state: State, lang: str) -> None:
    page = pages().render(View(state, lang, hold_id="H" * 22, csrf="C" * 48, tries_left=2), False)
    body = page.body.decode()
    assert page.status in (200, 403, 410, 422, 429, 503)
    assert f'<html lang="{lang}">' in body
    assert "<script" not in body and "http://" not in body and "https://" not in body
    assert "Help &lt;desk&gt; &amp; &quot;co&quot;" in body and "&lt;b&gt;0120&lt;/b&gt;" in body
    assert "<b>" not in body and "Ex<ample>" not in body
    assert f'src="{LOGO}"' in body
    headers = dict(page.headers)
    assert headers["Content-Security-Policy"] == PAGE_CSP and headers["Cache-Control"] == "no-store"
    assert headers["X-Frame-Options"] == "DENY" and headers["Content-Language"] == lang
    doc = json.loads(pages().render(View(state, lang, hold_id="H" * 22, csrf="C" * 48), True).body)
    assert doc["state"] == state.value


def test_form_is_accessible() -> None:
    body = pages().render(View(State.WRONG_CODE, "en", hold_id="h" * 22, csrf="c", tries_left=3), False).body
    text = body.decode()
    assert '<label for="code">Verification code</label>' in text
    assert 'id="code" name="code" type="text" inputmode="numeric" autocomplete="one-time-code"' in text
    assert 'aria-describedby="msg hint"' in text and 'role="alert"' in text and "autofocus" in text
    assert text.index('value="verify"') < text.index('value="resend"')  # Enter verifies
    assert "3 more time(s)" in text


def test_app_prompt_has_no_resend() -> None:
    text = pages().render(View(State.ENTER_CODE, "ja", app=True, hold_id="h", csrf="c"), False).body.decode()
    assert "認証アプリ" in text and 'value="resend"' not in text


def test_terminal_states_link_to_restart_only() -> None:
    text = pages().render(View(State.TOO_MANY_TRIES, "en"), False).body.decode()
    assert "<form" not in text and 'href="/login"' in text


def test_csp_is_strict() -> None:
    assert "script-src" not in PAGE_CSP and "default-src 'none'" in PAGE_CSP
    assert "frame-ancestors 'none'" in PAGE_CSP and "form-action 'self'" in PAGE_CSP


@pytest.mark.parametrize(
    ("colour", "text"),
    [("#ffcc00", "#1f2328"), ("#1f6feb", "#ffffff"), ("#000000", "#ffffff"), ("#ffffff", "#1f2328")],
)
def test_button_text_contrasts_with_brand(colour: str, text: str) -> None:
    assert on_colour(colour) == text


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("application/json", True),
        ("text/html,*/*", False),
        ("", False),
        ("application/json, text/html", False),
    ],
)
def test_wants_json(accept: str, expected: bool) -> None:
    assert wants_json(accept) is expected


def test_logo_must_be_a_data_url() -> None:
    with pytest.raises(ValueError):
        BrandSettings(logo="https://cdn.example/logo.png")
    with pytest.raises(ValueError):
        BrandSettings(logo='data:image/png;base64,AA" onerror="x')

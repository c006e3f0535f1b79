"""guard.challenge.devices and .notify: signed rotating device cookies; localised login notifications."""

from __future__ import annotations

import pytest

from guard.challenge.devices import Devices, DeviceStatus, binding_cookie, clear_binding_cookie
from guard.challenge.keys import KeyRing
from guard.challenge.notify import country_name, format_time, render_notice, summarize_user_agent
from guard.challenge.settings import DeviceSettings

T0 = 1_700_000_000.0
DAY = 86400.0
K1, K2 = b"\x01" * 32, b"\x02" * 32


def devices(*keys: bytes) -> Devices:
    return Devices(
        KeyRing(list(keys or (K1,))), DeviceSettings(idle=30 * DAY, lifetime=90 * DAY, rotate_after=DAY)
    )


def jar(set_cookie: str) -> dict[str, str]:
    name, value = set_cookie.split(";")[0].split("=", 1)
    return {name: value}


def test_cookie_attributes_and_names() -> None:
    d = devices()
    secure = d.issue("acct", T0, secure=True)
    assert secure.startswith("__Host-lgd-") and "; Secure" in secure and "HttpOnly" in secure
    assert "SameSite=Strict" in secure and "Max-Age=2592000" in secure
    assert d.cookie_name("acct", False) != d.cookie_name("other", False)  # one per account
    assert "acct" not in d.cookie_name("acct", False)


def test_known_then_rotated_then_expired() -> None:
    d = devices()
    cookie = jar(d.issue("acct", T0, secure=False))
    check = d.check(cookie, "acct", T0 + 60, secure=False)
    assert check.status is DeviceStatus.KNOWN and check.set_cookie is None
    later = d.check(cookie, "acct", T0 + 2 * DAY, secure=False)
    assert later.status is DeviceStatus.KNOWN and later.set_cookie is not None
    rotated = jar(later.set_cookie)
    assert d.check(rotated, "acct", T0 + 31 * DAY, secure=False).status is DeviceStatus.KNOWN  # idle reset
    assert d.check(cookie, "acct", T0 + 31 * DAY, secure=False).status is DeviceStatus.NEW  # idle expiry


def test_lifetime_cannot_be_extended_by_rotation() -> None:
    d = devices()
    cookie = jar(d.issue("acct", T0, secure=False))
    t = T0
    for _ in range(5):  # used every 20 days: rotated each time
        t += 20 * DAY
        check = d.check(cookie, "acct", t, secure=False)
        if t - T0 > 90 * DAY:
            assert check.status is DeviceStatus.NEW
            break
        assert check.status is DeviceStatus.KNOWN and check.set_cookie is not None
        cookie = jar(check.set_cookie)
    else:
        pytest.fail("the lifetime never ended")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda v: v[:-2] + ("AA" if not v.endswith("AA") else "BB"),
        lambda v: "A" + v[1:] if v[0] != "A" else "B" + v[1:],
        lambda v: v[:20],
        lambda v: "garbage!",
        lambda v: "",
    ],
)
def test_tampered_cookie_is_new(mutate: object) -> None:
    d = devices()
    name, value = next(iter(jar(d.issue("acct", T0, secure=False)).items()))
    assert callable(mutate)
    assert d.check({name: mutate(value)}, "acct", T0, secure=False).status is DeviceStatus.NEW


def test_bound_to_the_account_and_key_rotation() -> None:
    d = devices()
    cookie = jar(d.issue("acct", T0, secure=False))
    # Copied under another account's cookie name: the MAC covers the account key.
    other_name = d.cookie_name("other", False)
    assert d.check({other_name: next(iter(cookie.values()))}, "other", T0, False).status is DeviceStatus.NEW
    rotated_ring = devices(K2, K1)
    check = rotated_ring.check(cookie, "acct", T0 + 60, secure=False)
    assert check.status is DeviceStatus.KNOWN and check.set_cookie is not None  # re-signed with K2
    assert devices(K2).check(cookie, "acct", T0, False).status is DeviceStatus.NEW


def test_binding_cookie() -> None:
    assert (
        binding_cookie("v", 600, True)
        == "__Host-lg-hold=v; Max-Age=600; Path=/; HttpOnly; SameSite=Strict; Secure"
    )
    assert clear_binding_cookie(False) == "lg-hold=; Max-Age=0; Path=/; HttpOnly; SameSite=Strict"


def test_settings_order() -> None:
    with pytest.raises(ValueError):
        DeviceSettings(idle=DAY, rotate_after=2 * DAY)


# ---- notifications ---------------------------------------------------------------------------------

WIN_CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
UA_CASES = [
    (WIN_CHROME, "Chrome on Windows"),
    (WIN_CHROME + " Edg/124.0.0.0", "Edge on Windows"),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 "
        "Safari/605.1.15",
        "Safari on macOS",
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "CriOS/124.0 Mobile/15E148 Safari/604.1",
        "Chrome on iOS",
    ),
    (
        "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
        "SamsungBrowser/24.0 "
        "Chrome/117.0 Mobile Safari/537.36",
        "Samsung Internet on Android",
    ),
    ("Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0", "Firefox on Linux"),
    ("curl/8.5.0", "an unknown browser"),
    ("<script>alert(1)</script> Visit evil.example", "an unknown browser"),
    ("", "an unknown browser"),
]


@pytest.mark.parametrize(("ua", "summary"), UA_CASES)
def test_user_agent_summary(ua: str, summary: str) -> None:
    assert summarize_user_agent(ua) == summary


def test_user_agent_summary_japanese() -> None:
    assert summarize_user_agent(WIN_CHROME, "ja") == "Windows の Chrome"


def test_country_and_time() -> None:
    assert country_name("th", "en") == "Thailand" and country_name("TH", "ja") == "タイ"
    assert country_name("ZZ", "en") == "ZZ" and country_name("??", "en") == "an unknown location"
    assert format_time(T0, "Asia/Tokyo", "ja") == "2023年11月15日 07:13 (Asia/Tokyo)"
    assert format_time(T0, "No/Such_Zone", "en") == "2023-11-14 22:13 UTC"


def test_render_notice() -> None:
    en = render_notice(lang="en", brand="Example", country="TH", user_agent=WIN_CHROME, when=T0, zone="UTC")
    assert en.subject == "Example: new sign-in to your account"
    assert en.text.startswith(
        "A sign-in to your account from Thailand, Chrome on Windows, at 2023-11-14 22:13 UTC."
    )
    assert "change your password" in en.text
    ja = render_notice(
        lang="ja", brand="Example", country="JP", user_agent=WIN_CHROME, when=T0, zone="Asia/Tokyo"
    )
    assert "日本" in ja.text and "Windows の Chrome" in ja.text and "パスワードを変更" in ja.text
    unknown = render_notice(lang="en", brand="E", country="", user_agent="", when=T0, zone="UTC")
    assert "from an unknown location, an unknown browser" in unknown.text

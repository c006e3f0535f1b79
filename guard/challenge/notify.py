"""Login notifications to the owner: "a login to your account from Thailand, Chrome on Windows, at ...".

The incident's service already had these, and they are how an owner learns
of a login they did not make.  Rendering is pure (language, place, device,
time in, subject and text out); sending goes through the code channels and
is rate-limited per account by the service.  The user agent is summarised to
a browser and a system, never quoted: it is attacker-controlled text, and a
notification must not become a phishing message with our name on it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from guard.challenge import i18n
from guard.challenge.channels.base import Notice

# Order matters: Edge and Opera claim to be Chrome, Chrome claims to be Safari.
_BROWSERS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("Edge", re.compile(r"\bEdg(?:e|A|iOS)?/")),
    ("Opera", re.compile(r"\b(?:OPR|Opera)/")),
    ("Samsung Internet", re.compile(r"\bSamsungBrowser/")),
    ("Firefox", re.compile(r"\b(?:Firefox|FxiOS)/")),
    ("Chrome", re.compile(r"\b(?:Chrome|CriOS)/")),
    ("Safari", re.compile(r"\bVersion/[\d.]+.*\bSafari/")),
)
_SYSTEMS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("iOS", re.compile(r"\b(?:iPhone|iPad|iPod)\b")),
    ("Android", re.compile(r"\bAndroid\b")),
    ("ChromeOS", re.compile(r"\bCrOS\b")),
    ("Windows", re.compile(r"\bWindows\b")),
    ("macOS", re.compile(r"\bMac OS X\b|\bMacintosh\b")),
    ("Linux", re.compile(r"\bLinux\b")),
)

# Country names for the places the incident and its neighbours produce; others show their ISO code.
_COUNTRIES: dict[str, tuple[str, str]] = {
    "JP": ("Japan", "日本"),
    "TW": ("Taiwan", "台湾"),
    "TH": ("Thailand", "タイ"),
    "KR": ("South Korea", "韓国"),
    "CN": ("China", "中国"),
    "HK": ("Hong Kong", "香港"),
    "US": ("the United States", "アメリカ合衆国"),
    "GB": ("the United Kingdom", "イギリス"),
    "DE": ("Germany", "ドイツ"),
    "FR": ("France", "フランス"),
    "RU": ("Russia", "ロシア"),
    "IN": ("India", "インド"),
    "ID": ("Indonesia", "インドネシア"),
    "VN": ("Vietnam", "ベトナム"),
    "PH": ("the Philippines", "フィリピン"),
    "SG": ("Singapore", "シンガポール"),
    "MY": ("Malaysia", "マレーシア"),
    "BR": ("Brazil", "ブラジル"),
    "NL": ("the Netherlands", "オランダ"),
    "CA": ("Canada", "カナダ"),
    "AU": ("Australia", "オーストラリア"),
}
_UA_MAX = 512


def summarize_user_agent(ua: str, lang: str = "en") -> str:
    """ "Chrome on Windows" / "Windows の Chrome"; an unknown-browser phrase when nothing is recognised."""
    ua = ua[:_UA_MAX]
    browser = next((name for name, rx in _BROWSERS if rx.search(ua)), None)
    system = next((name for name, rx in _SYSTEMS if rx.search(ua)), None)
    if browser is None:
        return i18n.text(lang, "ua.unknown") if system is None else system
    if system is None:
        return browser
    return i18n.text(lang, "ua.on", browser=browser, os=system)


def country_name(code: str, lang: str) -> str:
    code = code.upper()
    names = _COUNTRIES.get(code)
    if names is None:
        return code if re.fullmatch(r"[A-Z]{2}", code) else i18n.text(lang, "place.unknown")
    return names[1] if lang == "ja" else names[0]


def format_time(when: float, zone: str, lang: str) -> str:
    try:
        tz: ZoneInfo | None = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        tz = None
    t = datetime.fromtimestamp(when, tz or UTC)
    label = zone if tz is not None else "UTC"
    return i18n.text(lang, "when.format", y=t.year, m=t.month, d=t.day, H=t.hour, M=t.minute, tz=label)


def render_notice(*, lang: str, brand: str, country: str, user_agent: str, when: float, zone: str) -> Notice:
    """The owner's notification.  ``country`` is an ISO 3166 code from geo lookup ("" when unknown)."""
    place = country_name(country, lang) if country else i18n.text(lang, "place.unknown")
    body = i18n.text(
        lang,
        "notice.body",
        place=place,
        device=summarize_user_agent(user_agent, lang),
        when=format_time(when, zone, lang),
    )
    return Notice(i18n.text(lang, "notice.subject", brand=brand), body, lang)

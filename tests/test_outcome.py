"""guard.engine.outcome: did the login work?  Tables of upstream answers per configured signal."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy.http import Headers
from multidict import CIMultiDict, CIMultiDictProxy

from guard.config import OutcomeConfig
from guard.engine.outcome import BODY_PEEK, Outcome, classify, header_values, needs_body

S, F, U = Outcome.SUCCESS, Outcome.FAILURE, Outcome.UNKNOWN
DEFAULT = OutcomeConfig.model_validate({})


def cfg(**kw: Any) -> OutcomeConfig:
    return OutcomeConfig.model_validate(kw)


def rows(cases: list[Any]) -> list[Any]:
    return [c[1:] for c in cases]


def ids(cases: list[Any]) -> list[str]:
    return [c[0] for c in cases]


def hdrs(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    """Headers the way aiohttp hands them over: a case-insensitive multidict."""
    return CIMultiDictProxy(CIMultiDict(pairs))


# ---- the default: a redirect after a good password, the form again after a bad one -------------

@pytest.mark.parametrize(
    ("status", "expected"),
    [(301, S), (302, S), (303, S), (307, S), (308, S),
     (200, F), (400, F), (401, F), (403, F), (422, F),
     (100, U), (201, U), (204, U), (304, U), (404, U), (429, U), (500, U), (502, U), (0, U), (999, U)],
)
def test_default_status(status: int, expected: Outcome) -> None:
    assert classify(DEFAULT, status, hdrs(("Location", "/anywhere"))) is expected


def test_custom_status_sets() -> None:
    c = cfg(success_status=[200], failure_status=[401])
    assert [classify(c, s, {}) for s in (200, 401, 302)] == [S, F, U]


# ---- Location ----------------------------------------------------------------------------------

HOME = cfg(success_location="^/home")
ERR = cfg(failure_location=r"[?&]error=")
BOTH = cfg(success_location="^/home", failure_location=r"[?&]error=")
SSO = cfg(success_location=r"^https://sso\.example/")

LOCATION_CASES: list[tuple[str, OutcomeConfig, int, str | None, Outcome]] = [
    ("success-relative", HOME, 302, "/home", S),
    ("success-absolute", HOME, 302, "https://shop.example/home?x=1", S),
    ("success-absolute-no-path", cfg(success_location="^/$"), 302, "https://shop.example", S),
    ("success-elsewhere-is-failure", HOME, 302, "/login?retry=1", F),
    ("success-absolute-elsewhere", HOME, 303, "https://shop.example/login", F),
    ("success-missing-location", HOME, 302, None, F),
    ("success-ignored-on-200", HOME, 200, "/home", F),
    ("success-ignored-on-201", HOME, 201, "/home", U),
    ("failure-matches", ERR, 302, "/login?error=1", F),
    ("failure-absolute", ERR, 302, "https://shop.example/login?x=2&error=bad", F),
    ("failure-no-match-falls-to-status", ERR, 302, "/home", S),
    ("both-success", BOTH, 302, "/home", S),
    ("both-failure", BOTH, 302, "/login?error=1", F),
    ("both-failure-beats-success", BOTH, 302, "/home?error=1", F),
    ("both-neither-unknown", BOTH, 302, "/mfa", U),
    ("absolute-pattern", SSO, 302, "https://sso.example/done", S),
    ("absolute-pattern-relative-location", SSO, 302, "/done", F),
    ("odd-location", HOME, 302, "http://[::1", F),
]


@pytest.mark.parametrize(
    ("c", "status", "location", "expected"), rows(LOCATION_CASES), ids=ids(LOCATION_CASES)
)
def test_location(c: OutcomeConfig, status: int, location: str | None, expected: Outcome) -> None:
    headers = hdrs(("Location", location)) if location is not None else hdrs()
    assert classify(c, status, headers) is expected


# ---- body markers ------------------------------------------------------------------------------

MARKERS = cfg(failure_body="Invalid password", success_body="Welcome back")
JP = cfg(failure_body="パスワードが違います")
PAGE_SJIS = "<p>パスワードが違います</p>".encode("cp932")


def gz(data: bytes) -> bytes:
    return gzip.compress(data)


def raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-15)
    return c.compress(data) + c.flush()


MARKER_CASES: list[tuple[str, OutcomeConfig, int, list[tuple[str, str]], bytes, Outcome]] = [
    ("failure-on-200", MARKERS, 200, [], b"<p>Invalid password</p>", F),
    ("failure-beats-redirect", MARKERS, 302, [], b"Invalid password", F),
    ("success-on-200", MARKERS, 200, [], b"<h1>Welcome back, alice</h1>", S),
    ("failure-beats-success", MARKERS, 200, [], b"Welcome back! Invalid password", F),
    ("neither-falls-to-status", MARKERS, 302, [], b"<html></html>", S),
    ("case-sensitive", MARKERS, 302, [], b"invalid PASSWORD", S),
    ("empty-body", MARKERS, 200, [], b"", F),
    ("utf8", JP, 302, [], "<p>パスワードが違います</p>".encode(), F),
    ("sjis-header", JP, 302, [("Content-Type", "text/html; charset=Shift_JIS")], PAGE_SJIS, F),
    ("sjis-meta", JP, 302, [("Content-Type", "text/html")], b'<meta charset="shift_jis">' + PAGE_SJIS, F),
    ("sjis-http-equiv", JP, 302, [],
     b'<meta http-equiv="Content-Type" content="text/html; charset=Shift_JIS">' + PAGE_SJIS, F),
    ("sjis-undeclared-not-found", JP, 302, [], PAGE_SJIS, S),
    ("eucjp-header", JP, 302, [("Content-Type", "text/html; charset=EUC-JP")],
     "パスワードが違います".encode("euc_jp"), F),
    ("bogus-charset-header", JP, 302, [("Content-Type", "text/html; charset=utf-16")], PAGE_SJIS, S),
    ("gzip", MARKERS, 302, [("Content-Encoding", "gzip")], gz(b"Invalid password"), F),
    ("gzip-truncated", MARKERS, 302, [("Content-Encoding", "gzip")],
     gz(b"Invalid password" + bytes(range(256)) * 40)[:300], F),
    ("gzip-already-decoded", MARKERS, 302, [("Content-Encoding", "gzip")], b"Invalid password", F),
    ("deflate-zlib", MARKERS, 302, [("Content-Encoding", "deflate")], zlib.compress(b"Invalid password"), F),
    ("deflate-raw", MARKERS, 302, [("Content-Encoding", "deflate")], raw_deflate(b"Invalid password"), F),
    ("brotli-body-absent", MARKERS, 302, [("Content-Encoding", "br")], b"Invalid password", S),
    ("marker-past-peek", MARKERS, 302, [], b"x" * BODY_PEEK + b"Invalid password", S),
    ("gzip-bomb-bounded", MARKERS, 302, [("Content-Encoding", "gzip")],
     gz(b"\0" * 10_000_000 + b"Invalid password"), S),
]


@pytest.mark.parametrize(
    ("c", "status", "headers", "body", "expected"), rows(MARKER_CASES), ids=ids(MARKER_CASES)
)
def test_body_markers(
    c: OutcomeConfig, status: int, headers: list[tuple[str, str]], body: bytes, expected: Outcome
) -> None:
    assert classify(c, status, hdrs(*headers), body) is expected


# ---- success cookie ----------------------------------------------------------------------------

COOKIE = cfg(success_cookie="SESSION")
DATE = ("Date", "Wed, 09 Jun 2021 10:18:14 GMT")
EPOCH = "Thu, 01 Jan 1970 00:00:00 GMT"
Y2100 = "Fri, 01 Jan 2100 00:00:00 GMT"

COOKIE_CASES: list[tuple[str, list[tuple[str, str]], Outcome]] = [
    ("set", [("Set-Cookie", "SESSION=abc123; Path=/; HttpOnly")], S),
    ("among-several", [("Set-Cookie", "lang=ja"), ("Set-Cookie", "SESSION=abc"), ("Set-Cookie", "x=1")], S),
    ("lower-case-header", [("set-cookie", "SESSION=abc")], S),
    ("quoted-value", [("Set-Cookie", 'SESSION="abc"')], S),
    ("absent", [("Set-Cookie", "lang=ja")], F),
    ("name-case-sensitive", [("Set-Cookie", "session=abc")], F),
    ("name-prefix-only", [("Set-Cookie", "SESSION_ID=abc")], F),
    ("empty-value", [("Set-Cookie", "SESSION=; Path=/")], F),
    ("empty-quoted", [("Set-Cookie", 'SESSION=""')], F),
    ("no-equals", [("Set-Cookie", "SESSION")], F),
    ("max-age-zero", [("Set-Cookie", "SESSION=x; Max-Age=0")], F),
    ("max-age-negative", [("Set-Cookie", "SESSION=x; max-age=-1")], F),
    ("php-deleted", [("Set-Cookie", "SESSION=deleted; expires=Thu, 01-Jan-1970 00:00:01 GMT; Max-Age=0")], F),
    ("expires-1970", [("Set-Cookie", "SESSION=x; Expires=Thu, 01 Jan 1970 00:00:00 GMT")], F),
    ("max-age-beats-past-expires", [("Set-Cookie", f"SESSION=x; Expires={EPOCH}; Max-Age=60")], S),
    ("max-age-zero-beats-future-expires", [("Set-Cookie", f"SESSION=x; Expires={Y2100}; Max-Age=0")], F),
    ("bad-max-age-ignored", [("Set-Cookie", "SESSION=x; Max-Age=soon")], S),
    ("expires-before-date", [DATE, ("Set-Cookie", "SESSION=x; Expires=Tue, 01 Dec 2020 00:00:00 GMT")], F),
    ("expires-after-date", [DATE, ("Set-Cookie", "SESSION=x; Expires=Fri, 01 Jan 2100 00:00:00 GMT")], S),
    ("expires-2020-without-date", [("Set-Cookie", "SESSION=x; Expires=Tue, 01 Dec 2020 00:00:00 GMT")], S),
    ("garbage-expires-ignored", [("Set-Cookie", "SESSION=x; Expires=someday")], S),
    ("deleted-then-set", [("Set-Cookie", "SESSION=; Max-Age=0"), ("Set-Cookie", "SESSION=new")], S),
    ("set-then-deleted", [("Set-Cookie", "SESSION=old"), ("Set-Cookie", "SESSION=; Max-Age=0")], S),
]


@pytest.mark.parametrize(("headers", "expected"), rows(COOKIE_CASES), ids=ids(COOKIE_CASES))
def test_success_cookie(headers: list[tuple[str, str]], expected: Outcome) -> None:
    # 200 would be a failure by status: only the cookie can make it a success.
    assert classify(COOKIE, 200, hdrs(*headers)) is expected


@pytest.mark.parametrize(
    "headers",
    [
        {"Set-Cookie": "SESSION=abc"},
        {"set-cookie": "SESSION=abc"},
        {"Set-Cookie": ["lang=ja", "SESSION=abc"]},  # tolerated from hand-built facts
        Headers([(b"Set-Cookie", b"lang=ja"), (b"Set-Cookie", b"SESSION=abc")]),
    ],
    ids=["dict", "dict-lower", "dict-list", "mitmproxy"],
)
def test_header_types(headers: Mapping[str, str]) -> None:
    assert classify(COOKIE, 200, headers) is S


def test_mitmproxy_repeated_headers_not_folded() -> None:
    h = Headers([(b"Set-Cookie", b"a=1; Expires=Thu, 01 Jan 1970 00:00:00 GMT"), (b"Set-Cookie", b"b=2")])
    assert header_values(h, "set-cookie") == ["a=1; Expires=Thu, 01 Jan 1970 00:00:00 GMT", "b=2"]


# ---- JSON field --------------------------------------------------------------------------------

def jb(doc: object) -> bytes:
    return json.dumps(doc).encode()


OK_TRUE = cfg(json_field={"pointer": "/ok", "success": True})
CODE_1 = cfg(json_field={"pointer": "/result/code", "success": 1})
STATUS_OK = cfg(json_field={"pointer": "/status", "success": "OK"})
STR_TRUE = cfg(json_field={"pointer": "/ok", "success": "true"})
ARRAY = cfg(json_field={"pointer": "/results/0/ok~1done", "success": True})

JSON_CASES: list[tuple[str, OutcomeConfig, int, bytes, Outcome]] = [
    ("true", OK_TRUE, 200, jb({"ok": True}), S),
    ("false", OK_TRUE, 200, jb({"ok": False}), F),
    ("other-value-is-failure", OK_TRUE, 302, jb({"ok": "yes"}), F),
    ("one-is-not-true", OK_TRUE, 200, jb({"ok": 1}), F),
    ("missing-falls-to-status-302", OK_TRUE, 302, jb({"error": "x"}), S),
    ("missing-falls-to-status-200", OK_TRUE, 200, jb({}), F),
    ("not-json-falls-through", OK_TRUE, 302, b"<html>", S),
    ("truncated-falls-through", OK_TRUE, 500, jb({"ok": True, "pad": "x" * BODY_PEEK}), U),
    ("int", CODE_1, 200, jb({"result": {"code": 1}}), S),
    ("int-as-float", CODE_1, 200, b'{"result": {"code": 1.0}}', S),
    ("int-other", CODE_1, 200, jb({"result": {"code": 2}}), F),
    ("true-is-not-1", CODE_1, 200, jb({"result": {"code": True}}), F),
    ("string", STATUS_OK, 200, jb({"status": "OK"}), S),
    ("string-case-sensitive", STATUS_OK, 200, jb({"status": "ok"}), F),
    ("string-null", STATUS_OK, 302, jb({"status": None}), F),
    ("string-setting-matches-bool-text", STR_TRUE, 200, jb({"ok": True}), S),
    ("string-setting-false", STR_TRUE, 200, jb({"ok": False}), F),
    ("array-and-escape", ARRAY, 200, jb({"results": [{"ok/done": True}]}), S),
    ("nan-body", OK_TRUE, 200, b'{"ok": NaN}', F),
    ("utf16-body", STATUS_OK, 200, '{"status": "OK"}'.encode("utf-16"), S),
    ("gzip-json", STATUS_OK, 200, gz(jb({"status": "OK"})), S),
]


@pytest.mark.parametrize(
    ("c", "status", "body", "expected"), rows(JSON_CASES), ids=ids(JSON_CASES)
)
def test_json_field(c: OutcomeConfig, status: int, body: bytes, expected: Outcome) -> None:
    headers = hdrs(("Content-Encoding", "gzip")) if body[:2] == b"\x1f\x8b" else hdrs()
    assert classify(c, status, headers, body) is expected


# ---- the order of signals ----------------------------------------------------------------------

ALL = cfg(
    json_field={"pointer": "/ok", "success": True},
    failure_body="Invalid", success_body="Welcome",
    success_cookie="SESSION", success_location="^/home",
)

ORDER_CASES: list[tuple[str, int, list[tuple[str, str]], bytes, Outcome]] = [
    ("json-beats-markers", 200, [], b'{"ok": false, "msg": "Welcome"}', F),
    ("json-beats-cookie", 200, [("Set-Cookie", "SESSION=1")], b'{"ok": false}', F),
    ("markers-beat-cookie", 200, [("Set-Cookie", "SESSION=1")], b"Invalid", F),
    ("markers-beat-location", 302, [("Location", "/home")], b"Invalid", F),
    ("cookie-beats-location", 302, [("Location", "/login"), ("Set-Cookie", "SESSION=1")], b"", S),
    ("location-beats-status", 302, [("Location", "/login")], b"", F),
    ("status-last", 200, [], b"", F),
    ("nothing-known", 500, [], b"", U),
]


@pytest.mark.parametrize(
    ("status", "headers", "body", "expected"), rows(ORDER_CASES), ids=ids(ORDER_CASES)
)
def test_signal_order(status: int, headers: list[tuple[str, str]], body: bytes, expected: Outcome) -> None:
    assert classify(ALL, status, hdrs(*headers), body) is expected


@pytest.mark.parametrize(
    ("c", "expected"),
    [(DEFAULT, False), (COOKIE, False), (HOME, False), (MARKERS, True), (cfg(failure_body="x"), True),
     (OK_TRUE, True)],
)
def test_needs_body(c: OutcomeConfig, expected: bool) -> None:
    assert needs_body(c) is expected


def test_outcome_is_a_string() -> None:
    assert str(Outcome.SUCCESS) == "success" and f"{Outcome.UNKNOWN}" == "unknown"
    assert json.dumps({"outcome": Outcome.FAILURE}) == '{"outcome": "failure"}'


def test_bad_pointer_in_config_is_never_present() -> None:
    c = cfg(json_field={"pointer": "/a~2", "success": True})
    assert classify(c, 302, {}, b'{"a~2": false}') is S


# ---- properties --------------------------------------------------------------------------------

CONFIGS = [DEFAULT, ALL, BOTH, JP, COOKIE, OK_TRUE, CODE_1, STR_TRUE]
HEADER_NAMES = st.sampled_from(
    ["Set-Cookie", "Location", "Content-Type", "Content-Encoding", "Date", "X-Other"]
)
HEADER_VALUES = st.one_of(
    st.text(max_size=80),
    st.sampled_from([
        "SESSION=1; Max-Age=0", "SESSION=1; Expires=x", "gzip", "deflate", "text/html; charset=shift_jis",
        "/home", "http://[", EPOCH, "SESSION=x; Expires=Fri, 31 Dec 9999 23:59:59 GMT",
    ]),
)


@settings(max_examples=400, deadline=None)
@given(
    c=st.sampled_from(CONFIGS),
    status=st.integers(min_value=-1000, max_value=10_000),
    pairs=st.lists(st.tuples(st.one_of(HEADER_NAMES, st.text(max_size=10)), HEADER_VALUES), max_size=6),
    body=st.one_of(st.binary(max_size=400), st.binary(max_size=200).map(gzip.compress)),
    as_dict=st.booleans(),
)
def test_classify_never_raises(
    c: OutcomeConfig, status: int, pairs: list[tuple[str, str]], body: bytes, as_dict: bool
) -> None:
    headers: Mapping[str, str] = dict(pairs) if as_dict else hdrs(*pairs)
    assert classify(c, status, headers, body) in (S, F, U)

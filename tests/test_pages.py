"""The guard's own pages: branded, escaped, JSON on request, and saying nothing internal."""

from __future__ import annotations

import json

import pytest

from guard.config import Brand
from guard.http.pages import Pages, wants_json
from tests.proxy_fixtures import parse_response

STATUSES = [400, 403, 408, 413, 414, 429, 431, 451, 500, 502, 503, 504]


@pytest.mark.parametrize("status", STATUSES)
def test_html_page(status: int) -> None:
    pages = Pages(Brand(name="Acme <Support>", color="#abcdef", support="Call 555 & ask"))
    resp = pages.response(status, "text/html,application/xhtml+xml,*/*;q=0.8")
    assert resp.status == status
    assert resp.content_type == "text/html"
    assert resp.body is not None
    text = bytes(resp.body).decode()  # type: ignore[arg-type]
    assert "Acme &lt;Support&gt;" in text and "<Support>" not in text
    assert "Call 555 &amp; ask" in text and "#abcdef" in text
    assert f">{status}<" in text
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Server"] == "Acme <Support>"


@pytest.mark.parametrize("status", STATUSES)
def test_json_page(status: int) -> None:
    resp = Pages(Brand()).response(status, "application/json")
    assert resp.content_type == "application/json"
    body = json.loads(bytes(resp.body).decode())  # type: ignore[arg-type]
    assert body["status"] == status and isinstance(body["error"], str) and body["error"]


@pytest.mark.parametrize(
    ("accept", "json_"),
    [("application/json", True), ("application/problem+json", True), ("APPLICATION/JSON; q=1", True),
     ("text/html,application/json;q=0.9", False), ("*/*", False), ("", False)],
)
def test_wants_json(accept: str, json_: bool) -> None:
    assert wants_json(accept) is json_


def test_raw_page_is_a_complete_response() -> None:
    raw = Pages(Brand(name="Gärd")).raw(431)
    resp = parse_response(raw)
    assert resp.status == 431
    assert resp.header("Connection") == ["close"]
    assert int(resp.header("Content-Length")[0]) == len(resp.body)
    assert resp.header("Server") == ["G?rd"]  # header values stay ASCII
    assert "Gärd" in resp.body.decode()


def test_close_flag() -> None:
    assert Pages(Brand()).response(413, close=True).keep_alive is False


def test_pages_are_rendered_once() -> None:
    pages = Pages(Brand())
    assert pages.body(403, False) is pages.body(403, False)
    assert pages.raw(503) is pages.raw(503)

"""Request targets: forwarded byte for byte, matched the way the upstream will route them."""

from __future__ import annotations

import pytest

from guard.http.target import Target, match_path, parse_target


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/a/b?x=1&y", Target("/a/b?x=1&y", "/a/b", "x=1&y", None)),
        ("/", Target("/", "/", "", None)),
        ("/a%2Fb?", Target("/a%2Fb?", "/a%2Fb", "", None)),
        ("http://Example.com:81/p?q", Target("/p?q", "/p", "q", "Example.com:81")),
        ("https://example.com", Target("/", "/", "", "example.com")),
        ("*", None),
        ("example.com:443", None),
        ("http:///nohost", None),
    ],
)
def test_parse_target(raw: str, expected: Target | None) -> None:
    assert parse_target(raw) == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/login", "/login"),
        ("/%6Cogin", "/login"),
        ("//login", "/login"),
        ("/a//b///login", "/a/b/login"),
        ("/x/../login", "/login"),
        ("/x/%2e%2e/login", "/login"),
        ("/./login", "/login"),
        ("/../../login", "/login"),
        ("/login;jsessionid=ABC", "/login"),
        ("/app;v=1/login;x", "/app/login"),
        ("\\login", "/login"),
        ("/app\\login", "/app/login"),
        ("/a/b/..", "/a/"),
        ("/caf%C3%A9", "/café"),
        ("/bad%zz", "/bad%zz"),
    ],
)
def test_match_path(path: str, expected: str) -> None:
    assert match_path(path) == expected


def test_match_path_common_case_returns_the_same_object() -> None:
    p = "/static/app.js"
    assert match_path(p) is p

"""Login path regexes and outcome Location patterns run on RE2: attacker text cannot make them backtrack.

Every request path is matched against ``match: regex`` login endpoints, and an upstream's
``Location`` often echoes the path it was sent, so both see the attacker's text.  With Python's
``re`` the pairs below take time exponential in the input (30 characters already take seconds);
the bounds asserted are generous sanity figures, the real proof is that they finish at all.
"""

from __future__ import annotations

import time

import pytest

from guard.config import OutcomeConfig, load_config_text
from guard.engine import Engine, VirtualClock
from guard.engine.logins import LoginMatcher
from guard.engine.outcome import Outcome, classify
from guard.store.memory import MemoryStore
from guard.yamlsource import SourceError

# pattern, and an input that makes a backtracking engine explode (2^n ways to split the a's)
EVIL_PATH = ("/(a+)+/login", "/" + "a" * 5000 + "!")
EVIL_LOCATION = ("^/(a|aa)+$", "/" + "a" * 5000 + "!")

FILE = "guard.yaml"


def config(logins: str) -> str:
    return f"upstream: http://127.0.0.1:8000\nattack: {{enabled: false}}\nlogins:\n{logins}"


def test_a_catastrophic_login_path_regex_on_an_attackers_path_finishes() -> None:
    cfg = load_config_text(config(f"  - id: evil\n    match: regex\n    path: '{EVIL_PATH[0]}'\n"), FILE, env={})
    matcher = LoginMatcher(cfg.logins)
    started = time.perf_counter()
    for _ in range(100):
        assert matcher.match("POST", EVIL_PATH[1]) is None
    assert time.perf_counter() - started < 1.0
    # still the whole path, as before: a prefix or a suffix match is no login
    assert matcher.match("POST", "/aaa/login") is not None
    assert matcher.match("POST", "/aaa/login/x") is None
    assert matcher.match("POST", "/x/aaa/login") is None
    assert matcher.match("GET", "/aaa/login") is None


async def test_the_engine_asks_the_same_linear_time_matcher() -> None:
    """``Engine.match_login`` is what both adapters call on every request's path."""
    cfg = load_config_text(config(f"  - id: evil\n    match: regex\n    path: '{EVIL_PATH[0]}'\n"), FILE, env={})
    engine = Engine(cfg, MemoryStore(), VirtualClock(), secret=b"k" * 32)
    await engine.start()
    try:
        started = time.perf_counter()
        for _ in range(100):
            assert engine.match_login("POST", EVIL_PATH[1]) is None
        assert time.perf_counter() - started < 1.0
        assert engine.match_login("POST", "/a/login") == "evil"
    finally:
        await engine.close()


@pytest.mark.parametrize("key", ["success_location", "failure_location"])
def test_a_catastrophic_location_pattern_on_an_echoed_path_finishes(key: str) -> None:
    outcome = OutcomeConfig.model_validate({key: EVIL_LOCATION[0]})
    started = time.perf_counter()
    for location in (EVIL_LOCATION[1], "https://shop.example" + EVIL_LOCATION[1]):
        for _ in range(50):
            verdict = classify(outcome, 302, {"Location": location})
            assert verdict is (Outcome.FAILURE if key == "success_location" else Outcome.SUCCESS)
    assert time.perf_counter() - started < 1.0
    assert classify(outcome, 302, {"Location": "/aaaa"}) is (
        Outcome.SUCCESS if key == "success_location" else Outcome.FAILURE)


@pytest.mark.parametrize(("logins", "line", "key", "why"), [
    ("  - id: a\n    match: regex\n    path: '/lo(gin'\n", 6, "logins[0].path", "missing )"),
    ("  - id: a\n    match: regex\n    path: '/(?=x)login'\n", 6, "logins[0].path", "linear-time engine (RE2)"),
    # match after path in the file: still located at the path
    ("  - id: a\n    path: '/(\\w+)\\1'\n    match: regex\n", 5, "logins[0].path", "linear-time engine (RE2)"),
    ("  - id: a\n    path: /login\n    outcome:\n      success_location: '^/ho(me'\n", 7,
     "logins[0].outcome.success_location", "missing )"),
    ("  - id: a\n    path: /login\n    outcome:\n      failure_location: '(?<!x)error'\n", 7,
     "logins[0].outcome.failure_location", "linear-time engine (RE2)"),
])
def test_a_bad_pattern_is_one_located_config_error(logins: str, line: int, key: str, why: str) -> None:
    with pytest.raises(SourceError) as exc:
        load_config_text(config(logins), FILE, env={})
    (problem,) = exc.value.problems
    assert (problem.file, problem.line, problem.key) == (FILE, line, key)
    assert why in problem.message


def test_a_regex_like_exact_or_prefix_path_is_not_compiled() -> None:
    """Only ``match: regex`` paths are patterns; a literal path with brackets stays a literal."""
    cfg = load_config_text(config("  - id: a\n    path: '/login(old'\n"), FILE, env={})
    assert LoginMatcher(cfg.logins).match("POST", "/login(old") is not None

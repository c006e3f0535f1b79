"""Rule files: every problem located (file:line:col: key), lint findings included."""

from __future__ import annotations

from pathlib import Path

import pytest

from guard.engine.decision import Action
from guard.rules.context import CounterSpec, Phase
from guard.rules.loader import compile_documents, load_rules
from guard.rules.registry import CompileEnv
from guard.yamlsource import SourceError, load_text

ENV = CompileEnv(list_names=frozenset({"blocklist"}))


def compile_text(text: str, env: CompileEnv = ENV):  # type: ignore[no-untyped-def]
    return compile_documents([load_text(text, "r.yaml")], env)


def problems(text: str, env: CompileEnv = ENV) -> list[str]:
    with pytest.raises(SourceError) as exc:
        compile_text(text, env)
    return [str(p) for p in exc.value.problems]


GOOD = """
rules:
  - id: cs-ip
    description: many usernames from one IP
    when:
      velocity: {key: ip, metric: distinct_usernames, window: 10m, over: 5}
    action: ban
    ban: {duration: 1h}
    tags: [Stuffing]
  - id: block-list
    description: blocklisted
    when:
      ip_list: blocklist
    action: block
  - id: ua
    description: tools
    when:
      login: true
      any:
        - user_agent: {tooling: true}
        - header: {name: Accept-Language, missing: true}
    action: score
    score: 30
    mode: shadow
"""


def test_good_file_compiles_into_phases_and_shared_counters() -> None:
    rs = compile_text(GOOD)
    assert [r.id for r in rs.rules] == ["cs-ip", "block-list", "ua"]
    assert [r.id for r in rs.request_rules] == ["block-list", "ua"]
    assert [r.id for r in rs.login_rules] == ["cs-ip"]
    assert rs.counters == (CounterSpec("ip", "distinct_usernames", 600.0),)
    cs = rs.by_id("cs-ip")
    assert cs is not None and cs.action is Action.BAN and cs.phase is Phase.LOGIN
    assert cs.ban is not None and cs.ban.duration == 3600 and cs.tags == ("stuffing",)
    assert cs.line == 3 and cs.file == "r.yaml"
    ua = rs.by_id("ua")
    assert ua is not None and ua.shadow and ua.score == 30


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rules:\n  - id: a\n    description: d\n    when: {ip_list: nope}\n    action: block\n",
         "r.yaml:4:12: rules[0].when.ip_list: unknown IP list nope (known: blocklist)"),
        ("rules:\n  - id: a\n    description: d\n    when: {colour: red}\n    action: block\n",
         "r.yaml:4:12: rules[0].when.colour: unknown condition 'colour'"),
        ("rules:\n  - id: a\n    description: d\n    when: {path: {regex: '(['}}\n    action: block\n",
         "r.yaml:4:12: rules[0].when.path: invalid regular expression"),
        ("rules:\n  - id: a\n    description: d\n    when: {ip: [10.0.0.0/8, 300.1.1.1]}\n    action: block\n",
         'r.yaml:4:12: rules[0].when.ip: not an IP address or CIDR (got "300.1.1.1")'),
        ("rules:\n  - id: a\n    description: d\n    when:\n      velocity: {key: ip, metric: attempts, window: 0s, over: 1}\n    action: block\n",
         "r.yaml:5:45: rules[0].when.velocity.window: Input should be greater than 0"),
        ("rules:\n  - id: a\n    description: d\n    when: {login: true}\n    action: explode\n",
         "r.yaml:5:5: rules[0].action: Input should be 'allow', 'block', 'ban', 'tarpit', 'challenge', 'score' or 'log'"),
        ("rules:\n  - id: a\n    description: d\n    when: {login: true}\n    action: block\n    colour: red\n",
         "r.yaml:6:5: rules[0].colour: unknown key (not allowed here)"),
        ("rules:\n  - id: a\n    when: {login: true}\n    action: block\n",
         "r.yaml:2:5: rules[0].description: required key is missing"),
        ("rules:\n  - id: a\n    description: d\n    when: {login: true}\n    action: block\n"
         "  - id: a\n    description: d\n    when: {login: false}\n    action: block\n",
         'r.yaml:6:5: rules[1].id: duplicate rule id "a" (first at r.yaml:2)'),
        ("rules:\n  - id: a\n    description: d\n    when: {login: false, velocity: {key: ip, metric: attempts, window: 1m, over: 3}}\n    action: log\n",
         "r.yaml:4:5: rules[0].when: can never match: login: false with a condition that only login requests have"),
        ("rules:\n  - id: a\n    description: d\n    when: {country: [JP]}\n    action: block\n",
         "r.yaml:4:12: rules[0].when.country: can never match: no GeoIP database is configured (geoip)"),
        ("rules:\n  - id: a\n    description: d\n    when: {velocity: {key: username, metric: failures, window: 1h, over: 5}}\n    action: block\n",
         "r.yaml:5:5: rules[0].action: blocking on a per-account key lets anyone lock the owner out; use challenge instead"),
        ("rules:\n  - id: a\n    description: d\n    when: {login: true}\n    action: score\n",
         "r.yaml:5:5: rules[0].action: action: score needs a score above 0 (add score: N)"),
        ("rules:\n  - id: a\n    description: d\n    when: {velocity: {key: ip, metric: distinct_ips, window: 1h, over: 5}}\n    action: log\n",
         "r.yaml:4:12: rules[0].when.velocity: distinct_ips keyed by ip is always 1; choose another key"),
        ("rules:\n  - id: a\n    description: d\n    when: {hosting: true}\n    action: log\n",
         "can never match: no hosting ASN list is configured"),
    ],
)
def test_problems_are_located(text: str, expected: str) -> None:
    found = problems(text, CompileEnv(list_names=frozenset({"blocklist"}), has_geo=True)
                     if "hosting" in text else ENV)
    assert any(expected in p for p in found), found


def test_every_problem_in_one_pass() -> None:
    text = (
        "rules:\n"
        "  - id: a\n    description: d\n    when: {colour: red}\n    action: block\n"
        "  - id: b\n    description: d\n    when: {ip_list: nope}\n    action: nope\n"
        "  - id: c\n    description: d\n    when: {login: true}\n    action: block\n"
    )
    found = problems(text)
    assert len(found) == 3, found


def test_rule_paths_load_in_name_order_and_skip_tests(tmp_path: Path) -> None:
    (tmp_path / "20-b.yaml").write_text("rules:\n  - {id: b, description: d, when: {login: true}, action: log}\n")
    (tmp_path / "10-a.yaml").write_text("rules:\n  - {id: a, description: d, when: {login: true}, action: log}\n")
    (tmp_path / "x.test.yaml").write_text("cases: []\n")
    rs = load_rules([tmp_path], CompileEnv())
    assert [r.id for r in rs.rules] == ["a", "b"]


def test_missing_rule_file_is_a_problem(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as exc:
        load_rules([tmp_path / "nope.yaml"], CompileEnv())
    assert "file not found" in str(exc.value)

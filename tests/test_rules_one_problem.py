"""One mistake in a rule condition is one located problem, not one per branch of a pydantic union.

``path`` takes a string or ``{exact|prefix|regex}``; as the union ``str | PathArgs`` a bad regex
also failed the string branch, so ``guard check`` printed a second, spurious "Input should be a
valid string" at the same line.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from guard.engine import RequestFacts
from guard.rules.context import Context
from guard.rules.loader import compile_documents, load_rules
from guard.rules.model import walk
from guard.rules.registry import CompileEnv
from guard.yamlsource import SourceError, load_text

FILE = "rules.yaml"


def rules(when: str) -> str:
    return f"rules:\n  - id: a\n    description: d\n    when: {when}\n    action: block\n"


def test_a_bad_path_regex_in_a_rule_file_is_exactly_one_located_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(rules("{path: {regex: 'a(?=b)'}}"))
    with pytest.raises(SourceError) as exc:
        load_rules([path], CompileEnv())
    (problem,) = exc.value.problems
    assert (problem.file, problem.line, problem.key) == (str(path), 4, "rules[0].when.path")
    assert "invalid perl operator" in problem.message and "RE2" in problem.message
    assert str(problem).startswith(f"{path}:4:")


@pytest.mark.parametrize(("when", "key", "words"), [
    ("{path: {regex: '(a'}}", "rules[0].when.path", ["invalid regular expression", "missing )"]),
    ("{path: {regex: '(\\w+)\\1'}}", "rules[0].when.path", ["RE2"]),
    ("{path: {exact: /a, regex: b}}", "rules[0].when.path", ["exactly one of exact, prefix, regex"]),
    ("{path: {}}", "rules[0].when.path", ["exactly one of exact, prefix, regex"]),
    ("{path: 5}", "rules[0].when.path", ["a path (exact), or a mapping"]),
    ("{path: [/a, /b]}", "rules[0].when.path", ["a path (exact), or a mapping"]),
    ("{path: {regx: a}}", "rules[0].when.path.regx", ["unknown key"]),
    # a value that fits no branch of `str | list[str]`: one problem naming both
    ("{country: {a: 1}}", "rules[0].when.country", ["a valid string or a valid list", "(got dict)"]),
    ("{ip: 5}", "rules[0].when.ip", ["a valid string or a valid list", "(got 5)"]),
    ("{login: {a: 1}}", "rules[0].when.login", ["valid boolean or a valid string or a valid list"]),
])
def test_one_mistake_is_one_problem(when: str, key: str, words: list[str]) -> None:
    with pytest.raises(SourceError) as exc:
        compile_documents([load_text(rules(when), FILE, env={})], CompileEnv())
    (problem,) = exc.value.problems
    assert (problem.file, problem.line, problem.key) == (FILE, 4, key)
    assert all(w in problem.message for w in words), problem.message


def test_two_mistakes_are_still_two_problems() -> None:
    """Merging is per key: distinct keys keep their own problems and lines."""
    text = rules("{velocity: {key: ip}}") + "  - id: b\n    description: d\n    when: {path: {regex: '(b'}}\n" \
        "    action: block\n"
    with pytest.raises(SourceError) as exc:
        compile_documents([load_text(text, FILE, env={})], CompileEnv())
    keys = sorted(p.key for p in exc.value.problems)
    assert keys == ["rules[0].when.velocity.metric", "rules[0].when.velocity.over",
                    "rules[0].when.velocity.window", "rules[1].when.path"]


@pytest.mark.parametrize(("when", "path", "hit"), [
    ("{path: /admin}", "/admin", True),
    ("{path: /admin}", "/admin/x", False),
    ("{path: {prefix: /admin}}", "/admin/x", True),
    ("{path: {regex: '^/a+dmin$'}}", "/aaadmin", True),
    ("{path: {regex: '^/a+dmin$'}}", "/admin/", False),
])
def test_the_path_condition_still_matches(when: str, path: str, hit: bool) -> None:
    (rule,) = compile_documents([load_text(rules(when), FILE, env={})], CompileEnv()).rules
    (leaf,) = walk(rule.condition)
    ctx = Context(req=RequestFacts("203.0.113.1", "GET", path), now=0.0, ip="203.0.113.1", subnet="203.0.113.0/24")
    assert (leaf.test(ctx) is not None) is hit

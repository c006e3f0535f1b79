"""A tarpit keyed on an account is refused like an account-keyed block: anyone could slow its owner.

The lint is the block lint's (``account_keyed``), so every shape that hides a per-username
counter (``any:``, ``all:``, nesting, the global key) is caught, and a rule that also needs
something of the source stays allowed.
"""

from __future__ import annotations

import pytest

from guard.engine import Action
from guard.rules.loader import compile_documents
from guard.rules.registry import CompileEnv
from guard.yamlsource import SourceError, load_text

FILE = "rules.yaml"
PER_ACCOUNT = "velocity: {key: username, metric: failures, window: 10m, over: 5}"
PER_IP = "velocity: {key: ip, metric: failures, window: 10m, over: 5}"


def rule(when: str, action: str = "tarpit") -> str:
    return (f"rules:\n  - id: slow\n    description: d\n    when:\n      {when}\n    action: {action}\n"
            + ("    tarpit: 10s\n" if action == "tarpit" else ""))


@pytest.mark.parametrize("when", [
    PER_ACCOUNT,
    f"login: true\n      {PER_ACCOUNT}",
    f"any:\n        - {{{PER_IP}}}\n        - {{{PER_ACCOUNT}}}",
    f"all:\n        - {{login: true}}\n        - any: [{{{PER_ACCOUNT}}}, {{path: /x}}]",
    "velocity: {key: global, metric: failures, window: 10m, over: 500}",
    # a negation is the attacker's to satisfy, as the block lint assumes
    f"all:\n        - not: {{{PER_IP}}}\n        - {{{PER_ACCOUNT}}}",
])
def test_an_account_keyed_tarpit_is_refused_whatever_its_shape(when: str) -> None:
    with pytest.raises(SourceError) as exc:
        compile_documents([load_text(rule(when), FILE, env={})], CompileEnv())
    (problem,) = exc.value.problems
    assert (problem.file, problem.key) == (FILE, "rules[0].action")
    assert problem.line == rule(when).splitlines().index("    action: tarpit") + 1
    assert "slow the owner's logins" in problem.message and "challenge" in problem.message


@pytest.mark.parametrize("when", [
    PER_IP,
    f"{PER_ACCOUNT}\n      ip_list: blocklist",          # needs the source on a list too
    f"all:\n        - {{{PER_ACCOUNT}}}\n        - {{{PER_IP}}}",
    "path: {prefix: /slow}",
])
def test_a_tarpit_that_needs_the_source_is_allowed(when: str) -> None:
    (compiled,) = compile_documents([load_text(rule(when), FILE, env={})],
                                    CompileEnv(list_names=frozenset({"blocklist"}))).rules
    assert compiled.action is Action.TARPIT and compiled.tarpit == 10.0


def test_challenge_stays_the_way_to_act_on_an_account() -> None:
    (compiled,) = compile_documents([load_text(rule(PER_ACCOUNT, "challenge"), FILE, env={})], CompileEnv()).rules
    assert compiled.action is Action.CHALLENGE and compiled.account_only

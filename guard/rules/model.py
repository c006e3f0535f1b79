"""Compiled rules: what the YAML said, checked and turned into objects that only match.

Everything that can be decided at load (regexes, CIDR sets, durations, which
counters exist, which phase a rule runs in) is decided here, once, so the
request path does lookups and comparisons only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Literal

from guard.engine.decision import Action
from guard.rules.context import Context, CounterSpec, Phase
from guard.rules.registry import NO_VALUES, Condition, Values


class Severity(IntEnum):
    PASS = 0
    LOG = 1
    TARPIT = 2
    CHALLENGE = 3
    BLOCK = 4
    BAN = 5


SEVERITY = {
    Action.PASS: Severity.PASS, Action.ALLOW: Severity.PASS, Action.LOG: Severity.LOG,
    Action.TARPIT: Severity.TARPIT, Action.CHALLENGE: Severity.CHALLENGE, Action.BLOCK: Severity.BLOCK,
    Action.BAN: Severity.BAN,
}


class All(Condition):
    kind = "all"

    def __init__(self, children: list[Condition]) -> None:
        self.children = children

    def test(self, ctx: Context) -> Values | None:
        merged: dict[str, float | int | str] | None = None
        for c in self.children:
            v = c.test(ctx)
            if v is None:
                return None
            if v:
                merged = {**(merged or {}), **v}
        return merged if merged is not None else NO_VALUES


class AnyOf(Condition):
    kind = "any"

    def __init__(self, children: list[Condition]) -> None:
        self.children = children

    def test(self, ctx: Context) -> Values | None:
        for c in self.children:
            v = c.test(ctx)
            if v is not None:
                return v
        return None


class Not(Condition):
    kind = "not"

    def __init__(self, child: Condition) -> None:
        self.child = child

    def test(self, ctx: Context) -> Values | None:
        return NO_VALUES if self.child.test(ctx) is None else None


def walk(cond: Condition) -> list[Condition]:
    """Every leaf condition under ``cond``."""
    if isinstance(cond, (All, AnyOf)):
        return [leaf for c in cond.children for leaf in walk(c)]
    if isinstance(cond, Not):
        return walk(cond.child)
    return [cond]


@dataclass(frozen=True, slots=True)
class BanSpec:
    key: Literal["ip", "subnet"]
    duration: float
    factor: float
    max: float

    def duration_for(self, previous_bans: int) -> float:
        """fail2ban's bantime.increment: each repeat multiplies the duration, up to ``max``."""
        return min(self.duration * self.factor ** max(previous_bans, 0), self.max)


@dataclass(frozen=True, slots=True)
class FlagSpec:
    subjects: tuple[Literal["ip", "subnet", "account"], ...]
    duration: float


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    description: str
    action: Action
    condition: Condition
    phase: Phase
    file: str = ""
    line: int = 0
    score: float = 0.0
    tags: tuple[str, ...] = ()
    shadow: bool = False
    ban: BanSpec | None = None
    tarpit: float = 0.0
    flag: FlagSpec | None = None
    account_only: bool = False   # a per-username counter alone can make it match: never blocks

    @property
    def severity(self) -> Severity:
        return SEVERITY.get(self.action, Severity.PASS)


@dataclass(frozen=True, slots=True)
class RuleSet:
    """Rules in load order, split by phase, with the union of what they need from the store."""

    rules: tuple[Rule, ...] = ()
    request_rules: tuple[Rule, ...] = ()     # evaluated for every request when headers are in
    login_rules: tuple[Rule, ...] = ()       # evaluated on login requests once the body is read
    counters: tuple[CounterSpec, ...] = ()
    needs_account: bool = False
    needs_flags: bool = False
    needs_attack: bool = False
    needs_geo_request: bool = False
    files: tuple[str, ...] = field(default=())
    # Each phase's rules in two parts, in load order: the enforced allow rules, tried first
    # (``first_allow``), and the rules ``decide`` can use (every action but allow).  Every
    # request goes through both lists, so the split is made once per rule set, not per test.
    request_allows: tuple[Rule, ...] = field(init=False, default=())
    request_judged: tuple[Rule, ...] = field(init=False, default=())
    login_allows: tuple[Rule, ...] = field(init=False, default=())
    login_judged: tuple[Rule, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        for phase, rules in (("request", self.request_rules), ("login", self.login_rules)):
            allows = tuple(r for r in rules if r.action is Action.ALLOW and not r.shadow)
            judged = tuple(r for r in rules if r.action is not Action.ALLOW)
            object.__setattr__(self, f"{phase}_allows", allows)
            object.__setattr__(self, f"{phase}_judged", judged)

    @classmethod
    def build(cls, rules: list[Rule], files: tuple[str, ...] = ()) -> RuleSet:
        counters: dict[CounterSpec, None] = {}
        needs_account = needs_flags = needs_attack = geo_req = False
        for r in rules:
            for leaf in walk(r.condition):
                for spec in leaf.counters():
                    counters[spec] = None
                needs_account |= leaf.needs_account
                needs_flags |= leaf.needs_flags
                needs_attack |= leaf.needs_attack
                if r.phase == Phase.REQUEST and leaf.needs_geo:
                    geo_req = True
        return cls(
            rules=tuple(rules),
            request_rules=tuple(r for r in rules if r.phase == Phase.REQUEST),
            login_rules=tuple(r for r in rules if r.phase == Phase.LOGIN),
            counters=tuple(counters),
            needs_account=needs_account,
            needs_flags=needs_flags,
            needs_attack=needs_attack,
            needs_geo_request=geo_req,
            files=files,
        )

    def by_id(self, rule_id: str) -> Rule | None:
        for r in self.rules:
            if r.id == rule_id:
                return r
        return None

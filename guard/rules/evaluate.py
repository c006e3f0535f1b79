"""From matched rules to one decision: pure, so every combination is a table test.

The order of precedence, and why:

1. An ``allow`` rule that matches wins over everything, bans included: an
   allowlist that a ban can override is not an allowlist.  The engine runs
   allow rules before it looks at bans.
2. Otherwise the most severe enforcing action wins (ban > block > challenge >
   tarpit > log), and the summed score of the matching rules may raise it
   through the configured thresholds (anomaly scoring).
3. ``mode: shadow`` rules, and everything under global shadow mode, are
   reported as reasons but change nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from guard.engine.decision import PASS, Action, Decision, Reason
from guard.rules.context import Context
from guard.rules.model import SEVERITY, Rule, Severity
from guard.rules.registry import Values


@dataclass(frozen=True, slots=True)
class Scoring:
    """Score thresholds: a total at or above a threshold takes that action."""

    log: float | None = None
    challenge: float | None = None
    block: float | None = None

    def action_for(self, total: float) -> Action | None:
        levels = ((self.block, Action.BLOCK), (self.challenge, Action.CHALLENGE), (self.log, Action.LOG))
        for threshold, action in levels:
            if threshold is not None and total >= threshold:
                return action
        return None


NO_SCORING = Scoring()


@dataclass(frozen=True, slots=True)
class Verdict:
    """A decision plus the rules that produced it (the engine applies their side effects)."""

    decision: Decision
    winner: Rule | None = None
    matched: tuple[Rule, ...] = ()


NOTHING_MATCHED = Verdict(PASS)
"""``decide`` of no matches: immutable, so one for every request that matched nothing."""


def match(rules: Iterable[Rule], ctx: Context) -> list[tuple[Rule, Values]]:
    out: list[tuple[Rule, Values]] = []
    for rule in rules:
        values = rule.condition.test(ctx)
        if values is not None:
            out.append((rule, values))
    return out


def first_allow(allows: Iterable[Rule], ctx: Context) -> tuple[Rule, Values] | None:
    """The first of ``allows``, the enforced allow rules (``RuleSet.request_allows`` or
    ``login_allows``, which ``RuleSet`` selects), whose condition holds."""
    for rule in allows:
        values = rule.condition.test(ctx)
        if values is not None:
            return rule, values
    return None


def _reason(rule: Rule, values: Values) -> Reason:
    return Reason(rule.id, rule.description, rule.score, values, shadow=rule.shadow)


def decide(matches: list[tuple[Rule, Values]], scoring: Scoring = NO_SCORING, shadow: bool = False) -> Verdict:
    """Combine the rules that matched (excluding allow rules, handled first) into a verdict."""
    if not matches:
        return NOTHING_MATCHED
    best: Rule | None = None
    total = 0.0
    reasons: list[Reason] = []
    enforced: list[Rule] = []
    for rule, values in matches:
        if rule.action is Action.ALLOW:
            continue
        reasons.append(_reason(rule, values))
        if rule.shadow:
            continue
        enforced.append(rule)
        total += rule.score
        if best is None or rule.severity > best.severity:
            best = rule
    action = best.action if best is not None else Action.PASS
    if best is not None and best.severity == Severity.PASS:
        action = Action.PASS
    by_score = scoring.action_for(total) if enforced else None
    if by_score is Action.BLOCK and all(r.account_only for r in enforced if r.score):
        # scores that anyone who knows a username can run up may challenge, never lock out
        by_score = Action.CHALLENGE
    winner = best
    if by_score is not None and SEVERITY[by_score] > SEVERITY.get(action, Severity.PASS):
        action = by_score
        winner = None
        reasons.append(Reason("score", f"total score {total:g} reached the {by_score.value} threshold", total))
    if action is Action.PASS:
        if not reasons:
            return Verdict(PASS)
        return Verdict(Decision(Action.LOG, tuple(reasons)), None, tuple(enforced))
    status = {Action.BLOCK: 403, Action.BAN: 403, Action.CHALLENGE: 403}.get(action, 0)
    delay = winner.tarpit if winner is not None and action is Action.TARPIT else 0.0
    decision = Decision(action, tuple(reasons), status=status, shadow=shadow, delay=0.0 if shadow else delay)
    return Verdict(decision, winner, tuple(enforced))


def allow_verdict(rule: Rule, values: Values) -> Verdict:
    return Verdict(Decision(Action.ALLOW, (_reason(rule, values),)), rule, (rule,))

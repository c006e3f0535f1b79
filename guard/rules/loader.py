"""Rule files: YAML in, a compiled ``RuleSet`` out, or every problem with file:line:col.

A rule file is ``rules: [ ... ]``; each rule has an ``id``, a ``description``, a
``when`` (conditions, all of which must hold; ``any``/``all``/``not`` nest), an
``action`` and optional ``score``, ``tags``, ``mode``, ``ban``, ``tarpit`` and
``flag``.  Loading never stops at the first problem: a security team fixing a
file wants the whole list.  Lint findings (rules that can never match) are
problems too, so ``guard check`` fails on them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

import guard.rules.conditions  # noqa: F401  (registers every condition kind)
from guard.engine.decision import Action
from guard.rules.context import Phase
from guard.rules.model import All, AnyOf, BanSpec, FlagSpec, Not, Rule, RuleSet, walk
from guard.rules.registry import REGISTRY, CompileEnv, Condition
from guard.units import Duration
from guard.yamlsource import Loc, Located, Problem, SourceError, load_file, problems_from_validation

COMPOSITES = ("all", "any", "not")
MAX_DEPTH = 8


def one_per_place(problems: list[Problem]) -> list[Problem]:
    """Merge problems at one key into one: a value that fits no branch of a union (``str | list[str]``).

    pydantic reports each branch's complaint, so one mistake read as two or three problems at the
    same line; the operator made one, and learns the alternatives from one message.
    """
    places: dict[tuple[str, int, int, str], list[str]] = {}
    for p in problems:
        places.setdefault((p.file, p.line, p.column, p.key), []).append(p.message)
    return [Problem(*place, _alternatives(msgs)) for place, msgs in places.items()]


def _alternatives(messages: list[str]) -> str:
    if len(messages) == 1:
        return messages[0]
    lead = "Input should be "
    got = messages[0][messages[0].rfind(" (got "):] if " (got " in messages[0] else ""
    if all(m.startswith(lead) and m.endswith(got) for m in messages):
        return lead + " or ".join(m.removeprefix(lead).removesuffix(got) for m in messages) + got
    return "; or: ".join(messages)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BanArgs(_Model):
    key: Literal["ip", "subnet"] = "ip"
    duration: Duration = Field(3600.0, gt=0)
    factor: float = Field(2.0, ge=1.0, description="each repeat ban lasts this many times longer")
    max: Duration = Field(7 * 86400.0, gt=0)


class FlagArgs(_Model):
    subjects: tuple[Literal["ip", "subnet", "account"], ...] = Field(min_length=1)
    duration: Duration = Field(86400.0, gt=0, alias="for")


class RuleArgs(_Model):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,79}$")
    description: str = Field(min_length=1)
    when: dict[str, Any] = Field(min_length=1)
    action: Literal["allow", "block", "ban", "tarpit", "challenge", "score", "log"]
    score: float = Field(0.0, ge=0, le=10_000)
    tags: tuple[str, ...] = ()
    mode: Literal["enforce", "shadow"] = "enforce"
    ban: BanArgs | None = None
    tarpit: Duration | None = Field(None, gt=0, le=30)
    flag: FlagArgs | None = None

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(t.strip().lower() for t in v)


class RuleFileArgs(_Model):
    rules: list[dict[str, Any]] = Field(default_factory=list)


ACTIONS = {
    "allow": Action.ALLOW, "block": Action.BLOCK, "ban": Action.BAN, "tarpit": Action.TARPIT,
    "challenge": Action.CHALLENGE, "score": Action.LOG, "log": Action.LOG,
}


class _Compiler:
    def __init__(self, doc: Located, env: CompileEnv) -> None:
        self.doc = doc
        self.env = env
        self.problems: list[Problem] = []

    def fail(self, loc: Loc, message: str) -> None:
        self.problems.append(self.doc.problem(loc, message))

    def condition(self, when: Any, loc: Loc, depth: int = 0) -> Condition | None:
        if depth > MAX_DEPTH:
            self.fail(loc, f"conditions nest deeper than {MAX_DEPTH} levels")
            return None
        if not isinstance(when, Mapping) or not when:
            self.fail(loc, "expected a mapping of conditions, e.g. {login: true, country: [JP]}")
            return None
        children: list[Condition] = []
        for name, args in when.items():
            here = (*loc, name)
            if name in ("all", "any"):
                if not isinstance(args, list) or not args:
                    self.fail(here, f"{name}: expected a non-empty list of condition mappings")
                    continue
                subs = [self.condition(a, (*here, i), depth + 1) for i, a in enumerate(args)]
                if all(s is not None for s in subs):
                    kids = [s for s in subs if s is not None]
                    children.append(All(kids) if name == "all" else AnyOf(kids))
                continue
            if name == "not":
                sub = self.condition(args, here, depth + 1)
                if sub is not None:
                    children.append(Not(sub))
                continue
            kind = REGISTRY.get(str(name))
            if kind is None:
                known = ", ".join(sorted([*REGISTRY, *COMPOSITES]))
                self.fail(here, f"unknown condition {name!r} (known: {known})")
                continue
            try:
                value = kind.args.validate_python(args)
            except ValidationError as exc:
                self.problems.extend(one_per_place(problems_from_validation(self.doc, exc, here)))
                continue
            try:
                children.append(kind.build(value, self.env))
            except ValueError as exc:
                self.fail(here, str(exc))
        if len(children) != len(when):
            return None
        return children[0] if len(children) == 1 else All(children)

    def rule(self, raw: Any, loc: Loc) -> Rule | None:
        if not isinstance(raw, Mapping):
            self.fail(loc, "a rule must be a mapping with id, description, when and action")
            return None
        try:
            args = RuleArgs.model_validate(raw)
        except ValidationError as exc:
            self.problems.extend(problems_from_validation(self.doc, exc, loc))
            # still check the conditions, so one pass reports everything
            if isinstance(raw.get("when"), Mapping):
                self.condition(raw["when"], (*loc, "when"))
            return None
        before = len(self.problems)
        cond = self.condition(args.when, (*loc, "when"))
        if cond is None or len(self.problems) > before:
            return None
        leaves = walk(cond)
        phase = max((leaf.phase for leaf in leaves), default=Phase.REQUEST)
        action = ACTIONS[args.action]
        if args.action == "ban" and args.ban is None:
            ban: BanArgs | None = BanArgs()
        else:
            ban = args.ban
        if ban is not None and args.action != "ban":
            self.fail((*loc, "ban"), 'ban settings only apply to action: ban')
        if args.tarpit is not None and args.action != "tarpit":
            self.fail((*loc, "tarpit"), "tarpit delay only applies to action: tarpit")
        if args.action == "score" and args.score <= 0:
            self.fail((*loc, "action"), "action: score needs a score above 0 (add score: N)")
        self._lint(cond, leaves, args, loc)
        line = self.doc.where(loc)[0]
        return Rule(
            id=args.id,
            description=args.description,
            action=action,
            condition=cond,
            phase=phase,
            file=self.doc.file,
            line=line,
            score=args.score,
            tags=args.tags,
            shadow=args.mode == "shadow",
            ban=BanSpec(ban.key, ban.duration, ban.factor, ban.max) if ban is not None else None,
            tarpit=args.tarpit if args.tarpit is not None else (2.0 if args.action == "tarpit" else 0.0),
            flag=FlagSpec(args.flag.subjects, args.flag.duration) if args.flag is not None else None,
            account_only=account_keyed(cond),
        )

    def _lint(self, cond: Condition, leaves: list[Condition], args: RuleArgs, loc: Loc) -> None:
        where = (*loc, "when")
        for leaf in leaves:
            why = leaf.impossible()
            if why:
                self.fail((*where, leaf.kind), f"can never match: {why}")
            if leaf.needs_geo and not self.env.has_geo:
                self.fail((*where, leaf.kind), "can never match: no GeoIP database is configured (geoip)")
        top = cond.children if isinstance(cond, All) else [cond]
        login_false = any(getattr(c, "kind", "") == "login" and getattr(c, "want", True) is False for c in top)
        if login_false and any(leaf.phase == Phase.LOGIN for leaf in leaves):
            self.fail(where, "can never match: login: false with a condition that only login requests have")
        if args.action in ("ban", "block") and account_keyed(cond):
            self.fail(
                (*loc, "action"),
                "blocking on a per-account key lets anyone lock the owner out; use challenge instead",
            )
        if args.action == "tarpit" and account_keyed(cond):
            # a delay is a softer lock-out: anyone who knows a username makes its owner wait up to 30 s a login
            self.fail(
                (*loc, "action"),
                "tarpit on a per-account key lets anyone slow the owner's logins; use challenge instead",
            )


# What an anonymous attacker who knows a username can make true by itself: request
# shape, and counters keyed on that username.  Anything about the source is not theirs.
_ATTACKER_CAN = frozenset({"login", "method", "path", "header", "user_agent", "login_body_error"})


def account_keyed(cond: Condition) -> bool:
    """True when a per-username counter alone (plus request shape) can make ``cond`` hold.

    Such a rule lets anyone who knows a username trigger it against its owner, so it
    may only challenge (never block, ban or tarpit), and its score can never reach a block.
    """
    return _reach(cond) == "account"


def _reach(cond: Condition) -> str:
    from guard.rules.conditions.velocity import Velocity

    if isinstance(cond, All):
        kinds = [_reach(c) for c in cond.children]
        if "source" in kinds:
            return "source"
        return "account" if "account" in kinds else "free"
    if isinstance(cond, AnyOf):
        kinds = [_reach(c) for c in cond.children]
        if "account" in kinds:
            return "account"
        return "free" if "free" in kinds else "source"
    if isinstance(cond, Not):
        return "free"  # conservative: a negation is assumed satisfiable by the attacker
    if isinstance(cond, Velocity) and cond.args.key in ("username", "global"):
        return "account"
    if cond.kind in _ATTACKER_CAN:
        return "free"
    return "source"


def compile_documents(docs: Iterable[Located], env: CompileEnv) -> RuleSet:
    """Compile rule documents in order; raise ``SourceError`` with every problem found."""
    problems: list[Problem] = []
    rules: list[Rule] = []
    seen: dict[str, Rule] = {}
    files: list[str] = []
    for doc in docs:
        files.append(doc.file)
        if doc.data in (None, {}):
            continue
        try:
            parsed = RuleFileArgs.model_validate(doc.data)
        except ValidationError as exc:
            problems.extend(problems_from_validation(doc, exc))
            continue
        comp = _Compiler(doc, env)
        for i, raw in enumerate(parsed.rules):
            rule = comp.rule(raw, ("rules", i))
            if rule is None:
                continue
            prev = seen.get(rule.id)
            if prev is not None:
                comp.fail(("rules", i, "id"), f'duplicate rule id "{rule.id}" (first at {prev.file}:{prev.line})')
                continue
            seen[rule.id] = rule
            rules.append(rule)
        problems.extend(comp.problems)
    if problems:
        raise SourceError(problems)
    return RuleSet.build(rules, tuple(files))


def rule_paths(entries: Iterable[Path]) -> list[Path]:
    """Files as listed; folders expand to their ``*.yaml``/``*.yml`` in name order (tests excluded)."""
    out: list[Path] = []
    for entry in entries:
        if entry.is_dir():
            out.extend(
                sorted(
                    p for p in entry.iterdir()
                    if p.suffix in (".yaml", ".yml") and p.is_file()
                    and not p.name.endswith((".test.yaml", ".test.yml"))
                )
            )
        else:
            out.append(entry)
    return out


def load_rules(entries: Iterable[Path], env: CompileEnv) -> RuleSet:
    problems: list[Problem] = []
    docs: list[Located] = []
    for path in rule_paths(entries):
        try:
            docs.append(load_file(path))
        except SourceError as exc:
            problems.extend(exc.problems)
    try:
        ruleset = compile_documents(docs, env)
    except SourceError as exc:
        problems.extend(exc.problems)
    if problems:
        raise SourceError(problems)
    return ruleset

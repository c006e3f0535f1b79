"""``guard test``: login-flow regression tests for rule packs, on a virtual clock.

A test file holds cases; a case is a sequence of login events (time, client IP,
username, password, upstream outcome) with the action and rule ids expected at
each step.  Each case runs against the real engine with a fresh memory store and
a virtual clock, so a case covering a day of attacks runs in milliseconds and
gives the same answer every time.  Like a WAF's regression suite (go-ftw), but
for login flows.

    cases:
      - name: one IP spraying usernames is banned
        steps:
          - repeat: 6
            every: 10s
            ip: 203.0.113.7
            username: "user{i}@example.jp"
            outcome: failure
            expect: pass
          - ip: 203.0.113.7
            username: someone
            expect: {action: ban, rules: [cs-ip-distinct-users]}
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from guard.config import Config, load_config
from guard.engine.clock import VirtualClock
from guard.engine.core import Engine
from guard.engine.facts import RequestFacts, ResponseFacts
from guard.engine.runtime import build_runtime
from guard.units import Duration
from guard.yamlsource import Located, Problem, SourceError, load_file, problems_from_validation

START = 1_767_225_600.0  # 2026-01-01T00:00:00Z: a fixed epoch so cases are reproducible


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Expect(_M):
    action: Literal["pass", "allow", "log", "block", "ban", "tarpit", "challenge", "unavailable"]
    rules: tuple[str, ...] = Field((), description="rule ids that must be among the reasons")
    not_rules: tuple[str, ...] = Field((), description="rule ids that must not be among the reasons")
    outcome: Literal["success", "failure", "unknown"] | None = None


class Step(_M):
    at: Duration | None = Field(None, description="time since the case started")
    after: Duration = Field(1.0, description="time since the previous step (when at is not given)")
    repeat: int = Field(1, ge=1, le=100_000)
    every: Duration = Field(1.0, description="spacing of repeated events")
    ip: str = "192.0.2.1"
    username: str | None = "user"
    password: str | None = Field(
        None, description="default: a different password for every event, so spraying rules stay quiet"
    )
    path: str | None = None
    method: str = "POST"
    headers: dict[str, str] = Field(default_factory=lambda: {"User-Agent": "Mozilla/5.0 (test)"})
    outcome: Literal["success", "failure", "none"] = "failure"
    expect: Expect | None = None

    @field_validator("expect", mode="before")
    @classmethod
    def _expect(cls, v: Any) -> Any:
        return {"action": v} if isinstance(v, str) else v


class Case(_M):
    name: str
    steps: list[Step] = Field(min_length=1)


class TestFile(_M):
    config: str | None = None
    cases: list[Case] = Field(min_length=1)


@dataclass(slots=True)
class StepFailure:
    case: str
    step: int
    event: int
    message: str


@dataclass(slots=True)
class FileResult:
    file: str
    passed: list[str] = field(default_factory=list)
    failed: list[StepFailure] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def _fill(text: str | None, i: int) -> str | None:
    return None if text is None else text.replace("{i}", str(i))


async def run_case(config: Config, case: Case, runtime_factory: Any = None) -> list[StepFailure]:
    from guard.store.memory import MemoryStore

    clock = VirtualClock(START)
    store = MemoryStore(prefix="t:", max_keys=200_000, max_members=10_000)
    rt = runtime_factory() if runtime_factory else build_runtime(config)
    engine = Engine(config, store, clock, runtime=rt, secret=b"guard-test-fixed-secret")
    await store.start()
    failures: list[StepFailure] = []
    default_path = config.logins[0].path if config.logins else "/login"
    try:
        for n, step in enumerate(case.steps, 1):
            if step.at is not None:
                clock.set(START + step.at)
            else:
                clock.advance(step.after)
            for i in range(1, step.repeat + 1):
                if i > 1:
                    clock.advance(step.every)
                password = step.password if step.password is not None else f"pw-{n}-{i}-{case.name}"
                got, reasons, outcome = await _event(engine, step, i, default_path, password)
                exp = step.expect
                if exp is None:
                    continue
                problems = []
                if got != exp.action:
                    problems.append(f"expected {exp.action}, got {got}")
                missing = [r for r in exp.rules if r not in reasons]
                if missing:
                    problems.append(f"rules {missing} did not fire")
                unwanted = [r for r in exp.not_rules if r in reasons]
                if unwanted:
                    problems.append(f"rules {unwanted} fired")
                if exp.outcome is not None and outcome != exp.outcome:
                    problems.append(f"expected outcome {exp.outcome}, got {outcome}")
                if problems:
                    detail = "; ".join(problems)
                    failures.append(StepFailure(case.name, n, i, f"{detail} (reasons: {sorted(reasons) or '-'})"))
                    return failures
    finally:
        await store.close()
    return failures


async def _event(
    engine: Engine, step: Step, i: int, default_path: str, password: str
) -> tuple[str, list[str], str | None]:
    path = _fill(step.path, i) or default_path
    login = engine.match_login(step.method, path)
    headers = {k: _fill(v, i) or "" for k, v in step.headers.items()}
    fields: dict[str, str] = {}
    ep = engine.rt.logins.endpoints.get(login or "")
    if ep is not None:
        username = _fill(step.username, i)
        if username is not None:
            fields[ep.username.lstrip("/")] = username
        if ep.password:
            fields[ep.password] = _fill(password, i) or ""
    body = urlencode(fields).encode()
    req = RequestFacts(
        client_ip=_fill(step.ip, i) or "192.0.2.1", method=step.method, path=path, headers=headers,
        login=login, body=body if login else None, content_type="application/x-www-form-urlencoded",
    )
    decision = await engine.on_request(req)
    if decision.forwards and login is not None:
        decision = await engine.on_login(req)
    reasons = decision.reason_ids()
    action = decision.action.value
    if decision.shadow:
        action = "pass"
    outcome = None
    if decision.forwards and login is not None and step.outcome != "none":
        status = 302 if step.outcome == "success" else 200
        resp_headers = {"Location": "/home"} if status == 302 else {}
        outcome = await engine.on_response(req, ResponseFacts(status, resp_headers))
    return action, reasons, outcome


def load_test_file(path: Path) -> tuple[Located, TestFile]:
    doc = load_file(path)
    try:
        return doc, TestFile.model_validate(doc.data)
    except ValidationError as exc:
        raise SourceError(problems_from_validation(doc, exc)) from None


def test_files(target: Path) -> list[Path]:
    if target.is_dir():
        return sorted([*target.rglob("*.test.yaml"), *target.rglob("*.test.yml")])
    return [target]


def run_file(path: Path, default_config: Path) -> FileResult:
    result = FileResult(str(path))
    try:
        _doc, spec = load_test_file(path)
        cfg_path = (path.parent / spec.config) if spec.config else default_config
        config = load_config(cfg_path)
        rt = build_runtime(config)
    except SourceError as exc:
        result.problems = exc.problems
        return result
    for case in spec.cases:
        fails = asyncio.run(run_case(config, case, runtime_factory=lambda: rt))
        if fails:
            result.failed.extend(fails)
        else:
            result.passed.append(case.name)
    return result


def run(target: Path, default_config: Path, out: Any = None) -> int:
    import logging
    import sys

    out = out or sys.stdout
    guard_log = logging.getLogger("guard")
    previous = guard_log.level
    guard_log.setLevel(logging.ERROR)  # the engine's operational warnings are noise here
    try:
        return _run(target, default_config, out)
    finally:
        guard_log.setLevel(previous)


def _run(target: Path, default_config: Path, out: Any) -> int:
    files = test_files(target)
    if not files:
        print(f"guard test: no *.test.yaml files under {target}", file=out)
        return 1
    total_pass = total_fail = 0
    for path in files:
        res = run_file(path, default_config)
        for p in res.problems:
            print(p, file=out)
            total_fail += 1
        for name in res.passed:
            print(f"PASS {path}: {name}", file=out)
        for f in res.failed:
            print(f"FAIL {path}: {f.case}: step {f.step} event {f.event}: {f.message}", file=out)
        total_pass += len(res.passed)
        total_fail += len(res.failed)
    print(f"{total_pass} passed, {total_fail} failed", file=out)
    return 1 if total_fail else 0

"""The shipped rule packs lint clean and pass their own regression cases."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from guard.checks import check_all
from guard.ruletest import run

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_config_and_rules_check_clean() -> None:
    assert check_all(ROOT / "guard.yaml") == []


def test_shipped_rule_cases_pass() -> None:
    out = io.StringIO()
    code = run(ROOT / "rules", ROOT / "guard.yaml", out)
    text = out.getvalue()
    assert code == 0, text
    assert " 0 failed" in text
    assert text.count("PASS ") >= 14


def test_guard_test_cli_reports_failures(tmp_path: Path) -> None:
    case = tmp_path / "wrong.test.yaml"
    case.write_text(
        f"config: {ROOT / 'guard.yaml'}\n"
        "cases:\n"
        "  - name: expects a ban that cannot happen\n"
        "    steps:\n"
        "      - {ip: 192.0.2.1, username: a, outcome: success, expect: ban}\n"
    )
    res = subprocess.run(
        [sys.executable, "-m", "guard", "test", str(case)], capture_output=True, text=True, cwd=ROOT
    )
    assert res.returncode == 1
    assert "FAIL" in res.stdout and "expected ban, got pass" in res.stdout
    assert "0 passed, 1 failed" in res.stdout


def test_guard_check_cli_fails_with_located_problems(tmp_path: Path) -> None:
    rules = tmp_path / "bad.yaml"
    rules.write_text("rules:\n  - id: x\n    description: d\n    when: {velocity: {key: ip}}\n    action: block\n")
    cfg = tmp_path / "g.yaml"
    cfg.write_text(f"upstream: http://127.0.0.1:1\nrules: [{rules}]\n")
    res = subprocess.run([sys.executable, "-m", "guard", "check", "-c", str(cfg)], capture_output=True, text=True)
    assert res.returncode == 1
    assert f"{rules}:4:12: rules[0].when.velocity.metric: required key is missing" in res.stdout

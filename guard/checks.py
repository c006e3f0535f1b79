"""``guard check``: every problem in the config and the files it names, one line each.

The point is to report all problems at once, located, so a security team fixes a
rule file in one pass instead of one error per run.  Lint findings (rules that
can never match, account-keyed blocks) count as problems.
"""

from __future__ import annotations

from pathlib import Path

from guard.config import load_config
from guard.engine.runtime import build_runtime
from guard.yamlsource import Problem, SourceError


def check_all(config_path: Path) -> list[Problem]:
    try:
        config = load_config(config_path)
    except SourceError as exc:
        return exc.problems
    problems: list[Problem] = []
    for entry in config.rules:
        if not entry.exists():
            problems.append(Problem(str(config_path), 0, 0, "rules", f"{entry}: no such file or folder"))
    try:
        rt = build_runtime(config, strict_lists=True)
        rt.close()
    except SourceError as exc:
        problems.extend(p for p in exc.problems if "file not found" not in p.message or not problems)
    except Exception as exc:  # a broken GeoIP database or list file: still one clear line
        problems.append(Problem(str(config_path), 0, 0, "", f"cannot load: {exc}"))
    return problems

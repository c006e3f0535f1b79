"""``guard check``: every problem in the config and the files it names, one line each.

The point is to report all problems at once, located, so a security team fixes a
rule file in one pass instead of one error per run.
"""

from __future__ import annotations

from pathlib import Path

from guard.config import Config, load_config
from guard.yamlsource import Problem, SourceError, load_file


def rule_files(config: Config) -> list[Path]:
    """Rule files in load order: files as listed, folders expanded to their *.yaml in name order."""
    out: list[Path] = []
    for entry in config.rules:
        if entry.is_dir():
            out.extend(sorted(p for p in entry.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()))
        else:
            out.append(entry)
    return out


def check_all(config_path: Path) -> list[Problem]:
    try:
        config = load_config(config_path)
    except SourceError as exc:
        return exc.problems
    problems: list[Problem] = []
    for entry in config.rules:
        if not entry.exists():
            problems.append(Problem(str(config_path), 0, 0, "rules", f"{entry}: no such file or folder"))
    for path in rule_files(config):
        try:
            load_file(path)
        except SourceError as exc:
            problems.extend(exc.problems)
    return problems

"""``guard check``: every problem in the config and the files it names, one line each.

The point is to report all problems at once, located, so a security team fixes a
rule file in one pass instead of one error per run.  Lint findings (rules that
can never match, account-keyed blocks) count as problems.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from guard.config import Config, load_config
from guard.engine.runtime import build_runtime
from guard.yamlsource import Problem, SourceError, load_file


def print_warning(problem: Problem) -> None:
    print(problem, file=sys.stderr)


def check_all(config_path: Path, warn: Callable[[Problem], None] = print_warning) -> list[Problem]:
    """Every problem (they fail the check); ``warn`` hears of risky but valid settings (they do not).

    A warning is for a setting that keeps an existing deployment working but trusts more
    than it should; failing the check on it would break every such deployment's CI at once.
    """
    try:
        config = load_config(config_path)
    except SourceError as exc:
        return exc.problems
    for warning in warnings(config_path, config):
        warn(warning)
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


def warnings(config_path: Path, config: Config) -> list[Problem]:
    """Valid settings that leave a door open: located like problems, marked ``warning:``."""
    out: list[Problem] = []
    if config.proxy_protocol and config.proxy_protocol_from is None:
        out.append(_located(
            config_path, ("proxy_protocol",),
            "warning: a PROXY header is believed from any peer that can connect, and it names the client "
            "every IP rule, ban and allowlist sees; set proxy_protocol_from to the balancers' addresses",
        ))
    return out


def _located(config_path: Path, loc: tuple[str | int, ...], message: str) -> Problem:
    try:
        return load_file(config_path).problem(loc, message)
    except SourceError:    # it loaded a moment ago; if it cannot now, say it unlocated
        return Problem(str(config_path), 0, 0, ".".join(map(str, loc)), message)

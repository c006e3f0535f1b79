"""``guard report exposed|attack``: the exposure list for forced resets, and an attack's summary.

Reads the ledger where the guard writes it (the local file, or the Redis
stream when ``store.backend`` is redis) and, for ``attack``, the decision-log
files (the live one and its rotated backups).  Works whether or not a guard is
running.  Login ids are printed only when the caller supplies ``open_login``
(the key holder); otherwise rows show the sealed id's hash prefix.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from guard.observe.decisionlog import RotatingFile
from guard.observe.events import ExposureEntry
from guard.observe.ledger import make_backend
from guard.observe.reports import OpenLogin, attack, exposed, read_decisions, render_attack, render_exposed
from guard.observe.settings import observe_settings
from guard.units import parse_duration


def parse_when(text: str | None, now: float | None = None) -> float | None:
    """``7d`` / ``36h`` (that long ago), ``2021-01-19`` or ``2021-01-19T08:30:00+09:00`` (naive means UTC)."""
    if text is None or text == "":
        return None
    now = time.time() if now is None else now
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        try:
            return now - parse_duration(text)
        except ValueError:
            raise ValueError(
                f"not a time or a duration: {text!r} (e.g. 7d, 2021-01-19, 2021-01-19T08:30+09:00)"
            ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``guard report`` on the CLI's sub-parsers; returns the new parser."""
    rep: argparse.ArgumentParser = sub.add_parser(
        "report", help="exposed accounts (for forced resets) and attack summaries",
        description="exposed accounts (for forced resets) and attack summaries",
        epilog="example:  guard report exposed --since 30d --format csv > reset.csv",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rep.add_argument("-c", "--config", default="guard.yaml", help="config file (default: %(default)s)")
    rsub = rep.add_subparsers(dest="report_command", metavar="REPORT", required=True)
    ex = rsub.add_parser("exposed", help="accounts whose valid password was presented from a flagged source")
    ex.add_argument("--since", help="start: 30d, 2021-01-19, an ISO time (default: everything)")
    ex.add_argument("--until", help="end (default: now)")
    ex.add_argument("--format", choices=("table", "csv", "json"), default="table")
    ex.add_argument("--countries", type=int, default=10, help="country rows before 'other' (table format)")
    at = rsub.add_parser("attack", help="summarise an attack window: sources, countries, accounts, outcomes")
    at.add_argument("--since", help="start (default: 24h)", default="24h")
    at.add_argument("--until", help="end (default: now)")
    at.add_argument("--format", choices=("table", "json"), default="table")
    at.add_argument("--log", action="append", type=Path,
                    help="decision-log file(s) to read instead of the config's")
    return rep


async def _ledger_rows(config: Any, since: float | None, until: float | None) -> list[ExposureEntry]:
    backend = make_backend(observe_settings(config).ledger, config.store, config.state_dir)
    try:
        return await backend.read(since, until)
    finally:
        await backend.close()


def _log_files(config: Any, explicit: list[Path] | None) -> list[Path]:
    if explicit:
        return explicit
    dl = observe_settings(config).decision_log
    if dl.path is None:
        return []
    return RotatingFile(dl.path, dl.max_bytes, dl.backups).files()


def run(args: argparse.Namespace, config: Any, open_login: OpenLogin | None = None) -> str:
    since = parse_when(args.since)
    until = parse_when(args.until)
    rows = asyncio.run(_ledger_rows(config, since, until))
    if args.report_command == "exposed":
        return render_exposed(exposed(rows, open_login, since, until), args.format, args.countries)
    files = _log_files(config, args.log)
    rep = attack(read_decisions(files, since, until), rows, since, until, logs_read=bool(files))
    return render_attack(rep, args.format)


def main(args: argparse.Namespace, open_login: OpenLogin | None = None) -> int:
    from guard.config import load_config_or_report

    config = load_config_or_report(Path(args.config))
    if config is None:
        return 2
    if open_login is None:
        from guard.engine.sealing import LoginSealer, stored_secret

        secret = stored_secret(config)
        if secret is not None:
            open_login = LoginSealer(secret).open
    try:
        sys.stdout.write(run(args, config, open_login))
    except ValueError as exc:
        print(f"guard report: {exc}", file=sys.stderr)
        return 2
    except (OSError, ConnectionError) as exc:
        print(f"guard report: cannot read the ledger: {exc}", file=sys.stderr)
        return 2
    return 0

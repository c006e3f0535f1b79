"""``guard reset add|del LOGIN... [--exposed]``: the forced-reset list.

Accounts whose valid password was presented from a flagged source (the exposure
ledger) should change it.  On the list, an account's next successful login
through the guard is sent to ``forced_reset_url`` instead of into its session.
Login ids come from the command line, a file, or the ledger itself
(``--exposed --since 30d``); they are stored only as keyed hashes.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from guard.config import Config, load_config_or_report


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "reset", help="put exposed accounts on the forced-reset list (next login goes to forced_reset_url)",
        description="put exposed accounts on the forced-reset list (next login goes to forced_reset_url)",
        epilog="example:  guard reset add --exposed --since 30d",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("action", choices=("add", "del"))
    p.add_argument("logins", nargs="*", help="login ids")
    p.add_argument("-c", "--config", default="guard.yaml", help="config file (default: %(default)s)")
    p.add_argument("--file", type=Path, help="a file of login ids, one per line")
    p.add_argument("--exposed", action="store_true", help="every account in the exposure ledger")
    p.add_argument("--since", help="with --exposed: start of the window (e.g. 30d)")
    p.set_defaults(func=main)
    return p


def _exposed_logins(config: Config, since: str | None) -> list[str]:
    from guard.engine.sealing import LoginSealer, stored_secret
    from guard.reportcli import _ledger_rows, parse_when

    secret = stored_secret(config)
    if secret is None:
        raise RuntimeError("no fingerprint key found: the ledger's login ids cannot be opened")
    opener = LoginSealer(secret).open
    rows = asyncio.run(_ledger_rows(config, parse_when(since), None))
    return sorted({login for r in rows if (login := opener(r.login_sealed)) is not None})


async def _direct(config: Config, logins: list[str], on: bool) -> int:
    from guard.engine.core import Engine
    from guard.engine.sealing import stored_secret
    from guard.store import make_store

    store = make_store(config.store)
    engine = Engine(config, store, secret=stored_secret(config))
    await engine.connect()
    try:
        return await engine.set_forced_reset(logins, on)
    finally:
        await store.close()


def main(args: argparse.Namespace) -> int:
    config = load_config_or_report(Path(args.config))
    if config is None:
        return 2
    if config.forced_reset_url is None:
        print("guard reset: set forced_reset_url in the config first", file=sys.stderr)
        return 2
    logins = list(args.logins)
    try:
        if args.file is not None:
            logins += [ln.strip() for ln in args.file.read_text().splitlines() if ln.strip()]
        if args.exposed:
            logins += _exposed_logins(config, args.since)
        if not logins:
            print("guard reset: no login ids given", file=sys.stderr)
            return 2
        on = args.action == "add"
        if config.store.backend == "redis":
            n = asyncio.run(_direct(config, logins, on))
        else:
            from guard.bancli import _api

            n = int(_api(config, "POST", "/api/resets", {"logins": logins, "on": on})["accounts"])
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"guard reset: {exc}", file=sys.stderr)
        return 2
    verb, prep = ("added", "to") if on else ("removed", "from")
    print(f"{verb} {n} account(s) {prep} the forced-reset list")
    return 0

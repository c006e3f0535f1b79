"""``guard totp import FILE`` and ``guard totp del LOGIN...``: authenticator enrolments from a shell.

For a service that already runs TOTP: its users' secrets are exported once
(``username,secret`` CSV or JSON, see ``channels.totp.parse_enrolments``) and
imported here, so those accounts are challenged through the app they have.
With Redis the command writes the store directly (no guard needs to run); with
the memory store the enrolments live inside the running guard, so it goes
through the admin API (``PUT /api/totp/{login}``, bearer token).  Either way
the secrets are sealed with the challenge keys before they are stored.

Nothing the file holds is printed: errors name the file and line, never a
login id or a secret, and the result is a count.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import urllib.error
from pathlib import Path
from typing import Any
from urllib.parse import quote

from guard.config import Config, load_config_or_report


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "totp", help="import or remove authenticator-app (TOTP) enrolments",
        description="import authenticator-app (TOTP) secrets from a username,secret CSV or JSON file, or "
                    "remove accounts' enrolments",
        epilog="examples:  guard totp import secrets.csv -c guard.yaml\n           guard totp del alice@example.com",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("action", choices=("import", "del"))
    p.add_argument("items", nargs="+", metavar="FILE|LOGIN", help="import: one file; del: login ids")
    p.add_argument("-c", "--config", default="guard.yaml", help="config file (default: %(default)s)")
    p.set_defaults(func=main)
    return p


async def _direct(config: Config, rows: dict[str, str] | None, logins: list[str]) -> int:
    from guard.challenge.channels.totp import Enrolments
    from guard.challenge.keys import KeyRing
    from guard.challenge.sealed import Sealer
    from guard.engine.core import Engine
    from guard.engine.sealing import stored_secret
    from guard.http.adminapi import account_key
    from guard.store import make_store

    challenge = config.challenge
    if challenge is None:
        raise RuntimeError("challenge is not configured")
    store = make_store(config.store)
    engine = Engine(config, store, secret=stored_secret(config))
    await engine.connect()
    try:
        ring = KeyRing.from_text(k.get_secret_value() for k in challenge.keys)
        enrolments = Enrolments(store, Sealer(ring), challenge.channels.totp)
        now = time.time()
        if rows is not None:
            for login, secret in rows.items():
                await enrolments.enroll(account_key(engine, login), secret, now)
            return len(rows)
        removed = 0
        for login in logins:
            removed += await enrolments.remove(account_key(engine, login), now)
        return removed
    finally:
        await store.close()


def _via_api(config: Config, rows: dict[str, str] | None, logins: list[str]) -> int:
    from guard.bancli import _api

    if rows is not None:
        for login, secret in rows.items():
            _api(config, "PUT", f"/api/totp/{quote(login, safe='')}", {"secret": secret})
        return len(rows)
    return sum(bool(_api(config, "DELETE", f"/api/totp/{quote(login, safe='')}")["removed"]) for login in logins)


def main(args: argparse.Namespace) -> int:
    from guard.challenge.channels.totp import EnrolmentError, parse_enrolments

    config = load_config_or_report(Path(args.config))
    if config is None:
        return 2
    if config.challenge is None or not config.challenge.channels.totp.enabled:
        print("guard totp: configure challenge (with channels.totp enabled) first", file=sys.stderr)
        return 2
    items = list(args.items)
    if args.action == "import" and len(items) != 1:
        print("guard totp: import takes one file", file=sys.stderr)
        return 2
    try:
        rows = None
        if args.action == "import":  # the whole file is checked before anything is written
            path = Path(items[0])
            rows = parse_enrolments(path.read_text(encoding="utf-8"), str(path))
        if config.store.backend == "redis":
            n = asyncio.run(_direct(config, rows, items))
        else:
            n = _via_api(config, rows, items)
    except urllib.error.HTTPError as exc:
        print(f"guard totp: the admin API answered {exc.code} {exc.reason}", file=sys.stderr)
        return 2
    except (EnrolmentError, OSError, RuntimeError, ValueError) as exc:
        print(f"guard totp: {exc}", file=sys.stderr)
        return 2
    if args.action == "import":
        print(f"enrolled {n} account(s)")
    else:
        print(f"removed {n} enrolment(s)")
    return 0

"""``guard ban list|add|del``: manage bans from a shell.

With Redis the command talks to the store directly, so it works even when no
guard is running and every instance sees the change within a poll interval.
With the memory store the bans live inside the running guard, so the command
goes through its admin API (bearer token from ``admin.token`` /
``GUARD_ADMIN_TOKEN``).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from guard.config import Config, load_config_or_report
from guard.units import parse_duration


def subject_of(text: str) -> str:
    """``203.0.113.7`` -> ``ip:203.0.113.7``; ``203.0.113.0/24`` -> ``net:203.0.113.0/24``."""
    from guard.clientip import normalize

    raw = text.strip()
    if raw.startswith(("ip:", "net:")):
        raw = raw.split(":", 1)[1]
    if "/" in raw:
        net = ipaddress.ip_network(raw, strict=False)
        if net.num_addresses == 1:
            return f"ip:{net.network_address}"
        return f"net:{net}"
    ip = normalize(raw)
    if ip is None:
        raise ValueError(f"not an IP address or CIDR: {text!r}")
    return f"ip:{ip}"


def _print_bans(bans: list[dict[str, Any]]) -> None:
    if not bans:
        print("no active bans")
        return
    now = time.time()
    print(f"{'SUBJECT':<45} {'REMAINING':>10}  REASON")
    for b in sorted(bans, key=lambda b: b["until"]):
        left = max(0, int(b["until"] - now))
        print(f"{b['subject']:<45} {left // 3600:>4}h{left % 3600 // 60:02d}m{left % 60:02d}s  {b.get('reason', '')}")


async def _direct(config: Config, args: argparse.Namespace) -> int:
    from guard.engine.core import Engine
    from guard.store import make_store

    store = make_store(config.store)
    engine = Engine(config, store)
    await store.start()
    try:
        if args.ban_command == "list":
            bans = await store.bans(time.time())
            _print_bans([{"subject": b.subject, "until": b.until, "reason": b.reason} for b in bans])
        elif args.ban_command == "add":
            ban = await engine.ban(subject_of(args.subject), parse_duration(args.duration), args.reason)
            print(f"banned {ban.subject} for {args.duration}")
        else:
            existed = await engine.unban(subject_of(args.subject))
            print(f"unbanned {subject_of(args.subject)}" if existed else f"{subject_of(args.subject)} was not banned")
    finally:
        await store.close()
    return 0


def _api(config: Config, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    token = config.admin.token
    if not token:
        raise RuntimeError("the admin API needs a token: set admin.token or GUARD_ADMIN_TOKEN")
    host, port = config.admin.listen
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}{path}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
        return json.loads(resp.read() or b"null")


def _via_api(config: Config, args: argparse.Namespace) -> int:
    from urllib.parse import quote

    if args.ban_command == "list":
        _print_bans(_api(config, "GET", "/api/bans")["bans"])
    elif args.ban_command == "add":
        subject = subject_of(args.subject)
        _api(config, "POST", "/api/bans",
             {"subject": subject, "seconds": parse_duration(args.duration), "reason": args.reason})
        print(f"banned {subject} for {args.duration}")
    else:
        subject = subject_of(args.subject)
        res = _api(config, "DELETE", f"/api/bans/{quote(subject, safe='')}")
        print(f"unbanned {subject}" if res.get("removed") else f"{subject} was not banned")
    return 0


def main(args: argparse.Namespace) -> int:
    config = load_config_or_report(Path(args.config))
    if config is None:
        return 2
    try:
        if config.store.backend == "redis":
            return asyncio.run(_direct(config, args))
        return _via_api(config, args)
    except (ValueError, RuntimeError) as exc:
        print(f"guard ban: {exc}", file=sys.stderr)
        return 2
    except urllib.error.HTTPError as exc:
        print(f"guard ban: the admin API answered {exc.code} {exc.reason}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"guard ban: cannot reach the guard's admin API at {config.admin.listen}: {exc}", file=sys.stderr)
        return 2

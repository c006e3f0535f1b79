"""The ``guard`` command: run, check, test, ban, simulate, audit, schema, version.

Exit codes are part of the interface: 0 fine, 1 the checked files have
problems, 2 the command itself was used wrongly or could not start.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from guard import __version__

DEFAULT_CONFIG = "guard.yaml"


def _cmd_version(args: argparse.Namespace) -> int:
    import aiohttp

    try:
        import uvloop

        loop = f"uvloop {importlib.metadata.version('uvloop')}"
        del uvloop
    except ImportError:
        loop = "asyncio"
    print(f"loginguard {__version__} (Python {sys.version.split()[0]}, aiohttp {aiohttp.__version__}, {loop})")
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from guard.config import Config

    schema = Config.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "loginguard guard.yaml"
    print(json.dumps(schema, indent=2, sort_keys=False))
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from guard.checks import check_all

    problems = check_all(Path(args.config))
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{args.config}: ok")
    return 0


def _cmd_test(args: argparse.Namespace) -> int:
    from guard.ruletest import run

    return run(Path(args.path), Path(args.config))


def _cmd_ban(args: argparse.Namespace) -> int:
    from guard.bancli import main as ban_main

    return ban_main(args)


def _cmd_simulate(args: argparse.Namespace) -> int:
    import asyncio

    from guard.demo.simulate import Scenario, check, report, run

    summary = asyncio.run(run(Scenario(seed=args.seed).scaled(args.scale), progress=False))
    for line in report(summary):
        print(line)
    return 0 if all(ok for _, ok, _ in check(summary)) else 1


def _cmd_audit(args: argparse.Namespace) -> int:
    from guard.pii.audit import run

    return run(
        args.urls, args.cookie, fmt=args.format, show_masked=args.show_masked, time_limit=args.timeout,
        insecure=args.insecure, config=args.config,
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    import asyncio

    from guard.demo.run import demo
    from guard.supervisor import _install_uvloop
    from guard.units import parse_hostport

    _install_uvloop()
    try:
        return asyncio.run(
            demo(parse_hostport(args.app), parse_hostport(args.listen), parse_hostport(args.admin),
                 args.attack, args.duration)
        )
    except KeyboardInterrupt:
        return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from guard.supervisor import run

    return run(
        Path(args.config),
        workers=args.workers,
        allow_split_state=args.allow_split_state,
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="guard",
        description="loginguard: a reverse proxy that guards the login forms of legacy web services.",
        epilog="example:  guard run -c guard.yaml",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help: str, example: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=help, description=help, epilog=f"example:  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    run = add("run", "run the guard in front of the configured upstream", "guard run -c guard.yaml --workers 2")
    run.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="config file (default: %(default)s)")
    run.add_argument(
        "--workers", type=int, default=1, metavar="N",
        help="worker processes sharing the port with SO_REUSEPORT (default: 1)",
    )
    run.add_argument(
        "--allow-split-state", action="store_true",
        help="allow --workers > 1 with the memory store (each worker then counts and bans on its own)",
    )
    run.set_defaults(func=_cmd_run)

    check = add(
        "check", "validate the config and every rule file it names; one line per problem",
        "guard check -c guard.yaml && echo ok",
    )
    check.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="config file (default: %(default)s)")
    check.set_defaults(func=_cmd_check)

    test = add(
        "test", "run the login-flow regression cases (*.test.yaml) against the rules, on a virtual clock",
        "guard test rules/tests -c guard.yaml",
    )
    test.add_argument("path", nargs="?", default="rules", help="a test file or a folder (default: %(default)s)")
    test.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="config whose rules are tested")
    test.set_defaults(func=_cmd_test)

    ban = add(
        "ban", "list, add or remove bans (through the running guard's admin API, or Redis directly)",
        "guard ban add 203.0.113.7 --for 1h --reason 'manual: stuffing'",
    )
    ban.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="config file (default: %(default)s)")
    # -c works after the action too (guard ban add 1.2.3.4 -c guard.yaml)
    cfg = argparse.ArgumentParser(add_help=False)
    cfg.add_argument("-c", "--config", default=argparse.SUPPRESS, help="config file")
    bsub = ban.add_subparsers(dest="ban_command", metavar="ACTION", required=True)
    bsub.add_parser("list", help="active bans", parents=[cfg])
    badd = bsub.add_parser("add", help="ban an IP or a CIDR", parents=[cfg])
    badd.add_argument("subject", help="an IP address or a CIDR (a /24 or /64 bans the subnet)")
    badd.add_argument("--for", dest="duration", default="1h", help="duration, e.g. 30m, 1h, 7d (default: 1h)")
    badd.add_argument("--reason", default="manual", help="why (shown in logs and the dashboard)")
    bdel = bsub.add_parser("del", help="remove a ban (and the counters that caused it)", parents=[cfg])
    bdel.add_argument("subject", help="an IP address or a CIDR")
    ban.set_defaults(func=_cmd_ban)

    dem = add(
        "demo", "the incident's legacy site behind the guard, a demo phone for codes, and the dashboard",
        "guard demo --attack",
    )
    dem.add_argument("--attack", action="store_true", help="replay a short credential-stuffing attack")
    dem.add_argument("--listen", default="127.0.0.1:8080", help="the guard (default: %(default)s)")
    dem.add_argument("--admin", default="127.0.0.1:9090", help="admin listener and dashboard (default: %(default)s)")
    dem.add_argument("--app", default="127.0.0.1:8000", help="the legacy site (default: %(default)s)")
    dem.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    dem.set_defaults(func=_cmd_demo)

    sim = add(
        "simulate", "replay a credential-stuffing attack against a bundled legacy app behind the guard",
        "guard simulate --scale 0.5",
    )
    sim.add_argument("--scale", type=float, default=1.0, help="population scale (1.0: 3,000 accounts)")
    sim.add_argument("--seed", type=int, default=2021, help="random seed (default: %(default)s)")
    sim.set_defaults(func=_cmd_simulate)

    audit = add(
        "audit", "fetch pages and list the PII they carry (hidden fields, other fields, attributes, text); "
        "values are never printed. Exit 1 when PII is found",
        "guard audit https://support.example/contact --cookie SID=abc123 --show-masked",
    )
    audit.add_argument("urls", nargs="+", metavar="URL", help="pages to fetch (redirects are followed)")
    audit.add_argument(
        "--cookie", action="append", default=[], metavar="NAME=VALUE",
        help="send this cookie (repeatable): audit pages as a logged-in user sees them",
    )
    audit.add_argument("--format", choices=("table", "json"), default="table", help="output (default: table)")
    audit.add_argument(
        "--show-masked", action="store_true",
        help="add a masked sample per row (+81 **-****-5678, t***@example.jp)",
    )
    audit.add_argument("--timeout", type=float, default=15.0, metavar="SECONDS", help="per page (default 15)")
    audit.add_argument("--insecure", action="store_true", help="skip TLS certificate checks (test servers)")
    audit.add_argument(
        "-c", "--config", default=None, help="take custom detectors (pii.detectors) from this config file"
    )
    audit.set_defaults(func=_cmd_audit)

    from guard import reportcli

    report = reportcli.add_parser(sub)
    report.set_defaults(func=lambda a: reportcli.main(a))

    from guard import resetcli

    resetcli.add_parser(sub)

    from guard.challenge import enrolcli

    enrolcli.add_parser(sub)

    schema = add("schema", "print the JSON Schema of guard.yaml (for editors)", "guard schema > guard.schema.json")
    schema.set_defaults(func=_cmd_schema)

    version = add("version", "print the version", "guard version")
    version.set_defaults(func=_cmd_version)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if getattr(args, "workers", 1) < 1:
        parser.error("--workers must be at least 1")
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())

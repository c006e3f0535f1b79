"""Serve the bundled legacy login app (``guard.demo.legacyapp``): the upstream the compose guards protect.

docker-compose runs it from the loginguard image (which has aiohttp and the
``guard`` package) with this file mounted read-only; install-check.sh runs it
as the upstream of its smoke test.  The accounts are deterministic fakes, so
the first one is printed for trying a login through the guard.
"""

from __future__ import annotations

import argparse

from aiohttp import web

from guard.demo.legacyapp import make_accounts, make_app


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    p.add_argument("--accounts", type=int, default=1000, help="fake accounts (default: %(default)s)")
    args = p.parse_args(argv)
    accounts = make_accounts(args.accounts)
    first = next(iter(accounts.values()))
    print(f"demo app on http://{args.host}:{args.port}  (try {first.login} / {first.password})", flush=True)
    web.run_app(make_app(accounts), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()

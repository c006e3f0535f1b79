#!/usr/bin/env bash
# Perform the image build's install steps in a fresh virtualenv, then start the guard.
#
# No Docker engine is needed: this copies the build context exactly as `docker build`
# would send it (.dockerignore applied, deploy/buildcontext.py), runs the same
# deploy/install.sh steps as deploy/Dockerfile in the same order (wheels, venv, config;
# tests/test_deploy.py checks the order matches), validates the container config with
# `guard check`, then runs the guard with that config adapted to free local ports and
# the memory store, in front of the demo app, and checks /readyz, a page and a login
# through it, and a clean SIGTERM shutdown.
#
#   deploy/install-check.sh            # PYTHON=python3.11 to pick the interpreter
#   KEEP=1 deploy/install-check.sh     # keep the temporary folder for a look
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
PYTHON=${PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/loginguard-install-check.XXXXXX")
demo_pid=
guard_pid=
started=$SECONDS

cleanup() {
    local pid
    for pid in $guard_pid $demo_pid; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n "${KEEP:-}" ]]; then
        echo "install-check: kept $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

phase() {
    echo "install-check: [$((SECONDS - started))s] $1"
}

fail() {
    echo "install-check: FAILED: $*" >&2
    for log in "$work"/*.log; do
        [[ -f "$log" ]] && { echo "---- $log" >&2; tail -n 40 "$log" >&2; }
    done
    exit 1
}

"$PYTHON" - <<'EOF' || fail "the image uses Python 3.11 ($PYTHON is not)"
import sys
if sys.version_info[:2] != (3, 11):
    print(f"install-check: warning: {sys.version.split()[0]} here, the image has 3.11", file=sys.stderr)
    raise SystemExit(0 if sys.version_info >= (3, 11) else 1)
EOF

phase "build context (.dockerignore applied)"
"$PYTHON" "$repo/deploy/buildcontext.py" "$repo" "$work/context"

# The three steps of deploy/Dockerfile, with its paths moved under $work:
#   /src -> $work/context, /wheels -> $work/wheels,
#   /opt/loginguard/venv -> $work/venv, /etc/loginguard -> $work/etc
phase "install.sh wheels"
PYTHON=$PYTHON sh "$work/context/deploy/install.sh" wheels "$work/context" "$work/wheels"
phase "install.sh venv"
PYTHON=$PYTHON sh "$work/context/deploy/install.sh" venv "$work/wheels" "$work/venv"
phase "install.sh config"
PYTHON=$PYTHON sh "$work/context/deploy/install.sh" config "$work/context" "$work/etc"

py=$work/venv/bin/python
[[ -x "$work/venv/bin/guard" ]] || fail "no guard console script in the venv"
if "$py" -c "import pip" 2>/dev/null; then fail "pip is inside the runtime venv"; fi

phase "guard check (the container config as shipped, Redis URL from the environment)"
GUARD_REDIS_URL=redis://redis:6379/0 GUARD_SECRET_KEY=install-check-key-0123456789 \
    "$work/venv/bin/guard" check -c "$work/etc/guard.yaml" \
    || fail "guard check rejected deploy/guard.docker.yaml"

phase "adapt the config: free local ports, memory store, state in the temp folder"
read -r port admin upstream < <("$py" - <<'EOF'
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
for s in socks:
    s.close()
EOF
)
"$py" - "$work/etc/guard.yaml" "$work/etc/guard.local.yaml" "$port" "$admin" "$upstream" "$work/state" <<'EOF'
import sys
import yaml
src, dst, port, admin, upstream, state = sys.argv[1:]
with open(src) as f:
    cfg = yaml.safe_load(f)
cfg["listen"] = f"127.0.0.1:{port}"
cfg["admin"]["listen"] = f"127.0.0.1:{admin}"
cfg["upstream"] = f"http://127.0.0.1:{upstream}"
cfg["store"]["backend"] = "memory"
cfg["state_dir"] = state
cfg["timeouts"]["shutdown_grace"] = "5s"
with open(dst, "w") as f:
    yaml.safe_dump(cfg, f, sort_keys=False)
EOF
env -u GUARD_REDIS_URL -u GUARD_LISTEN -u GUARD_UPSTREAM "$work/venv/bin/guard" check -c "$work/etc/guard.local.yaml" \
    || fail "guard check rejected the adapted config"

phase "start the demo app and the guard"
"$py" "$repo/deploy/demoapp.py" --host 127.0.0.1 --port "$upstream" --accounts 10 >"$work/demoapp.log" 2>&1 &
demo_pid=$!
env -u GUARD_REDIS_URL -u GUARD_LISTEN -u GUARD_UPSTREAM \
    "$work/venv/bin/guard" run -c "$work/etc/guard.local.yaml" >"$work/guard.log" 2>&1 &
guard_pid=$!

"$py" - "$port" "$admin" <<'EOF' || fail "the guard did not become ready or did not pass a login through"
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from guard.demo.legacyapp import make_accounts

port, admin = sys.argv[1:]


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


# no proxy from the environment (http_proxy) between us and 127.0.0.1; redirects are answers
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect)
deadline = time.monotonic() + 30
while True:
    try:
        with opener.open(f"http://127.0.0.1:{admin}/readyz", timeout=2) as r:
            if r.status == 200:
                break
    except OSError:
        pass
    if time.monotonic() > deadline:
        raise SystemExit("install-check: /readyz never answered 200")
    time.sleep(0.2)
print(f"install-check: /readyz ok after {30 - (deadline - time.monotonic()):.1f}s")

with opener.open(f"http://127.0.0.1:{port}/login", timeout=5) as r:
    page = r.read().decode()
    assert r.status == 200 and "Sign in" in page, (r.status, page[:200])

acct = next(iter(make_accounts(10).values()))
body = urllib.parse.urlencode({"username": acct.login, "password": acct.password}).encode()
try:
    opener.open(f"http://127.0.0.1:{port}/login", data=body, timeout=5)
    raise SystemExit("install-check: a good login was not answered with the upstream's redirect")
except urllib.error.HTTPError as exc:
    assert exc.code == 302 and exc.headers["Location"] == "/contact", (exc.code, exc.headers)
print("install-check: GET /login and a good POST /login passed through the guard")
EOF

phase "SIGTERM: drain and exit"
kill -TERM "$guard_pid"
code=0
wait "$guard_pid" || code=$?
guard_pid=
[[ $code -eq 0 ]] || fail "the guard exited with status $code after SIGTERM"
grep -q '"msg": "stopped"' "$work/guard.log" || fail "no 'stopped' line in the guard's log"

echo "install-check: ok in $((SECONDS - started))s"

"""``proxy_protocol_from``: only the balancers may send a PROXY header; anyone else is closed unread.

Real sockets on loopback: the whole of 127.0.0.0/8 reaches the guard on 127.0.0.1, so a
client bound to 127.0.0.2 is "another peer" than the balancer on 127.0.0.1.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from guard.checks import check_all
from guard.config import load_config_text
from guard.proxyproto import build_v1, build_v2
from guard.yamlsource import Problem, SourceError
from tests.proxy_fixtures import (
    GuardFactory,
    Upstream,
    make_config,
    make_guard,
    parse_response,
    raw_exchange,
    upstream,
)

__all__ = ["make_guard", "upstream"]

GET = b"GET /pp HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
BALANCER, STRANGER = "127.0.0.1", "127.0.0.2"
FORGED = build_v1(("198.51.100.99", 40000), ("192.0.2.1", 443))   # "I am an allowlisted office address"


async def exchange(port: int, source: str, prefix: bytes, data: bytes = GET) -> bytes:
    """Connect from ``source``, send ``prefix`` and ``data`` in one write, read until the guard closes."""
    return await raw_exchange(port, prefix + data, source=source)


async def test_a_peer_outside_the_list_is_closed_before_its_header_is_read(
    upstream: Upstream, make_guard: GuardFactory,
) -> None:
    g = await make_guard(upstream.url, proxy_protocol=True, proxy_protocol_from=[f"{BALANCER}/32"])
    # the balancer: its header names the client
    resp = parse_response(await exchange(g.port, BALANCER, FORGED))
    assert resp.status == 200
    assert g.log()[-1]["ip"] == "198.51.100.99"
    assert len(upstream.seen) == 1
    # anyone else: nothing back, nothing forwarded, nothing logged as a request, whatever it sends
    lines = len(g.log())
    for prefix in (FORGED, build_v2(("198.51.100.99", 1), ("192.0.2.1", 443)), b""):
        assert await exchange(g.port, STRANGER, prefix) == b""
    assert len(upstream.seen) == 1
    assert len(g.log()) == lines
    # the balancer still gets through afterwards
    assert parse_response(await exchange(g.port, BALANCER, FORGED)).status == 200


async def test_unset_keeps_believing_any_peer(upstream: Upstream, make_guard: GuardFactory) -> None:
    """The residual risk the warning is about: without the list, a direct client picks its address."""
    g = await make_guard(upstream.url, proxy_protocol=True)
    assert parse_response(await exchange(g.port, STRANGER, FORGED)).status == 200
    assert g.log()[-1]["ip"] == "198.51.100.99"


async def test_a_reload_changes_who_may_connect(
    upstream: Upstream, make_guard: GuardFactory, tmp_path: Path,
) -> None:
    g = await make_guard(upstream.url, proxy_protocol=True, proxy_protocol_from=[f"{BALANCER}/32"])
    assert await exchange(g.port, STRANGER, FORGED) == b""
    await g.server.reload(make_config(upstream.url, tmp_path, proxy_protocol=True,
                                      proxy_protocol_from=["127.0.0.0/30"]))
    assert parse_response(await exchange(g.port, STRANGER, FORGED)).status == 200


@pytest.mark.parametrize(("text", "line", "key", "why"), [
    ("proxy_protocol_from: [10.0.0.0/8]\n", 2, "proxy_protocol_from", "only applies with proxy_protocol: true"),
    ("proxy_protocol: true\nproxy_protocol_from: []\n", 3, "proxy_protocol_from", "no peer could connect"),
    ("proxy_protocol: true\nproxy_protocol_from: [10.0.0.0/8, lb.example]\n", 3, "proxy_protocol_from[1]",
     "not an IP address or CIDR"),
])
def test_bad_settings_are_located_errors(text: str, line: int, key: str, why: str) -> None:
    with pytest.raises(SourceError) as exc:
        load_config_text("upstream: http://127.0.0.1:8000\n" + text, "guard.yaml", env={})
    (problem,) = exc.value.problems
    assert (problem.file, problem.line, problem.key) == ("guard.yaml", line, key)
    assert why in problem.message


@pytest.mark.parametrize(("text", "warned"), [
    ("proxy_protocol: true\n", True),
    ("proxy_protocol: true\nproxy_protocol_from: [10.0.0.0/8]\n", False),
    ("proxy_protocol: false\n", False),
])
def test_guard_check_warns_when_any_peer_is_believed(tmp_path: Path, text: str, warned: bool) -> None:
    path = tmp_path / "guard.yaml"
    path.write_text(f"upstream: http://127.0.0.1:8000\nstate_dir: {tmp_path / 'state'}\n{text}")
    heard: list[Problem] = []
    assert check_all(path, warn=heard.append) == []          # a warning never fails the check
    if warned:
        (w,) = heard
        assert (w.file, w.line, w.key) == (str(path), 3, "proxy_protocol")
        assert w.message.startswith("warning:") and "proxy_protocol_from" in w.message
    else:
        assert heard == []


def test_the_cli_prints_the_warning_and_still_passes(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "guard.yaml"
    path.write_text(f"upstream: http://127.0.0.1:8000\nstate_dir: {tmp_path / 'state'}\nproxy_protocol: true\n")
    done = subprocess.run([sys.executable, "-m", "guard", "check", "-c", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{path}:3:1: proxy_protocol: warning:" in done.stderr

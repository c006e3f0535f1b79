"""guard.yaml validation: errors name file, line, key and what was expected."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from guard.config import load_config, load_config_text
from guard.units import HostPort, parse_duration, parse_hostport, parse_size
from guard.yamlsource import SourceError, load_text

ROOT = Path(__file__).resolve().parent.parent


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(SourceError) as exc:
        load_config_text(text, "guard.yaml", env or {})
    return [str(p) for p in exc.value.problems]


def test_shipped_config_loads() -> None:
    cfg = load_config(ROOT / "guard.yaml", env={})
    assert cfg.store.backend == "memory"
    assert cfg.listen == HostPort("127.0.0.1", 8080)
    assert cfg.upstream == "http://127.0.0.1:8000"
    assert cfg.trusted_proxies == ()


def test_minimal_config_gets_safe_defaults() -> None:
    cfg = load_config_text("upstream: http://127.0.0.1:8000/\n", env={})
    assert cfg.upstream == "http://127.0.0.1:8000"
    assert cfg.admin.listen == HostPort("127.0.0.1", 9090)
    assert cfg.store.fail_open is True
    assert cfg.upstream_tls.verify is True
    assert cfg.limits.max_body_size == 1024 * 1024
    assert cfg.timeouts.client_header == 10.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("upstream: ftp://x\n", 'guard.yaml:1:1: upstream: expected an http:// or https:// URL with a host (got "ftp://x")'),
        ("upstream: http://x\nstore:\n  backend: redus\n", "guard.yaml:3:3: store.backend: Input should be 'memory' or 'redis' (got \"redus\")"),
        ("upstream: http://x\nstore:\n  colour: blue\n", "guard.yaml:3:3: store.colour: unknown key (not allowed here)"),
        ("upstream: http://x\nlimits:\n  max_body_size: 12 parsecs\n", 'guard.yaml:3:3: limits.max_body_size: expected a size such as 8KiB, 1MiB or 10MB (got "12 parsecs")'),
        ("upstream: http://x\ntimeouts:\n  client_header: soon\n", 'guard.yaml:3:3: timeouts.client_header: expected a duration such as 250ms, 30s, 5m, 2h or 7d (got "soon")'),
        ("upstream: http://x\ntrusted_proxies:\n  - 10.0.0.0/8\n  - nope\n", 'guard.yaml:4:5: trusted_proxies[1]: not an IP address or CIDR (got "nope")'),
        ("listen: 127.0.0.1:99999\nupstream: http://x\n", 'guard.yaml:1:1: listen: port must be a number from 0 to 65535 (got "99999")'),
        ("store: {}\n", "guard.yaml:1:1: upstream: required key is missing"),
        ("upstream: http://x\nupstream: http://y\n", "guard.yaml:2:1: upstream: duplicate key"),
        ("upstream: [http://x\n", "guard.yaml:2:1: YAML syntax: while parsing a flow sequence expected ',' or ']', but got '<stream end>'"),
        ("- a\n- b\n", "guard.yaml:1:1: the config must be a mapping of keys to values"),
        ("upstream: http://x\nstore:\n  url: http://nope\n", 'guard.yaml:3:3: store.url: expected a redis://, rediss:// or unix:// URL (got "http://nope")'),
    ],
)
def test_errors_are_located(text: str, expected: str) -> None:
    assert expected in problems(text)


def test_all_problems_reported_at_once() -> None:
    found = problems("upstream: x\nstore:\n  backend: nope\nlimits:\n  bogus: 1\n")
    assert len(found) == 3


def test_redis_password_never_echoed_in_errors() -> None:
    found = problems("upstream: http://x\nstore:\n  url: http://user:hunter2@redis:6379\n")
    assert not any("hunter2" in p for p in found)
    assert any("***" in p for p in found)


def test_env_overrides_and_interpolation() -> None:
    env = {"GUARD_REDIS_URL": "redis://r:6380/1", "GUARD_ADMIN_TOKEN": "t0k", "UP": "http://up:81",
           "GUARD_SECRET_KEY": "k" * 32}
    cfg = load_config_text("upstream: ${UP}\nstore:\n  backend: redis\n", env=env)
    assert cfg.store.url == "redis://r:6380/1"
    assert cfg.admin.token == "t0k"
    assert cfg.upstream == "http://up:81"
    cfg = load_config_text("upstream: ${MISSING:-http://fallback:1}\n", env={})
    assert cfg.upstream == "http://fallback:1"
    assert "guard.yaml:1:11: environment variable MISSING is not set" in problems("upstream: ${MISSING}\n")


def test_relative_paths_resolve_against_config_dir(tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()
    cfgfile = tmp_path / "g.yaml"
    cfgfile.write_text("upstream: http://x\nrules: [rules]\nlog:\n  file: guard.log\n")
    cfg = load_config(cfgfile, env={})
    assert cfg.rules == (tmp_path / "rules",)
    assert cfg.log.file == tmp_path / "guard.log"


def test_tls_files_must_exist(tmp_path: Path) -> None:
    found = problems(f"upstream: http://x\ntls:\n  cert: {tmp_path}/c.pem\n  key: {tmp_path}/k.pem\n")
    assert any("tls" in p and "does not exist" in p for p in found)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("250ms", 0.25), ("30s", 30), ("5m", 300), ("2h", 7200), ("7d", 604800), (12, 12), ("1.5s", 1.5)],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(("value", "size"), [("8KiB", 8192), ("1MiB", 1 << 20), ("10MB", 10_000_000), (512, 512)])
def test_sizes(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("bad", ["-1s", "1y", True, None, "", [1]])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("text", "hp"),
    [("127.0.0.1:80", ("127.0.0.1", 80)), ("[::1]:8080", ("::1", 8080)), (":9", ("0.0.0.0", 9)), (7, ("0.0.0.0", 7))],
)
def test_hostport(text: object, hp: tuple[str, int]) -> None:
    assert parse_hostport(text) == hp


def test_positions_of_nested_keys() -> None:
    doc = load_text("a:\n  b:\n    - c: 1\n      d: 2\n")
    assert doc.where(("a", "b", 0, "d")) == (4, 7)
    assert doc.where(("a", "b", 0, "missing")) == (3, 7)


def test_schema_command_prints_json_schema() -> None:
    out = subprocess.run([sys.executable, "-m", "guard", "schema"], capture_output=True, text=True, check=True)
    schema = json.loads(out.stdout)
    assert schema["additionalProperties"] is False
    assert {"listen", "upstream", "trusted_proxies", "admin", "store", "limits", "timeouts", "log"} <= set(
        schema["properties"]
    )
    assert schema["$defs"]["StoreConfig"]["properties"]["backend"]["enum"] == ["memory", "redis"]

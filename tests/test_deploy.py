"""deploy/: the container image, compose, Kubernetes, systemd and GeoIP files, checked without Docker.

No Docker engine runs here, so these tests check what can be checked: every
file parses, every file and port one of them names exists and agrees with
deploy/guard.docker.yaml, the security settings are in place, the container
config passes ``guard check``, and (slow) the image's install steps run in a
fresh virtualenv and the guard serves from the result.
"""

from __future__ import annotations

import configparser
import importlib.util
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from guard.config import ENV_OVERRIDES

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
CONFIG_DIR = "/etc/loginguard"          # where the image and the pods keep guard.yaml
VENV = "/opt/loginguard/venv"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_all(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def buildcontext() -> ModuleType:
    spec = importlib.util.spec_from_file_location("buildcontext", DEPLOY / "buildcontext.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("buildcontext", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def docker_config() -> dict[str, Any]:
    cfg: dict[str, Any] = load(DEPLOY / "guard.docker.yaml")
    return cfg


@pytest.fixture(scope="module")
def ports(docker_config: dict[str, Any]) -> tuple[int, int]:
    return port_of(docker_config["listen"]), port_of(docker_config["admin"]["listen"])


def stage_config(dest: Path, src: Path = ROOT) -> Path:
    """``install.sh config``: the image's /etc/loginguard, under ``dest``."""
    subprocess.run(["sh", str(DEPLOY / "install.sh"), "config", str(src), str(dest)], check=True)
    return dest / "guard.yaml"


# ---- every file parses ----------------------------------------------------------------------------------


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml") and p.is_file())


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    docs = load_all(path)
    assert docs, f"{path} is empty"


def test_owned_files_exist() -> None:
    for rel in (
        "Dockerfile", "docker-compose.yml", "guard.docker.yaml", "install.sh", "install-check.sh",
        "buildcontext.py", "demoapp.py", "README.md", "k8s/kustomization.yaml", "k8s/deployment.yaml",
        "k8s/service.yaml", "k8s/secret.yaml", "k8s/redis.yaml", "k8s/pdb.yaml", "systemd/loginguard.service",
        "systemd/loginguard.env.example", "geoip/GeoIP.conf", "geoip/geoipupdate.service",
        "geoip/geoipupdate.timer", "geoip/k8s/cronjob.yaml",
    ):
        assert (DEPLOY / rel).is_file(), rel
    assert (ROOT / ".dockerignore").is_file()
    for script in ("install.sh", "install-check.sh"):
        assert os.access(DEPLOY / script, os.X_OK), f"{script} is not executable"


# ---- Dockerfile -----------------------------------------------------------------------------------------


@dataclass
class Instruction:
    stage: int
    name: str
    args: str


@dataclass
class Dockerfile:
    instructions: list[Instruction] = field(default_factory=list)
    stage_names: list[str | None] = field(default_factory=list)
    args: dict[str, str] = field(default_factory=dict)

    def final(self, name: str) -> list[Instruction]:
        last = len(self.stage_names) - 1
        return [i for i in self.instructions if i.stage == last and i.name == name]

    def all(self, name: str) -> list[Instruction]:
        return [i for i in self.instructions if i.name == name]


def parse_dockerfile(text: str) -> Dockerfile:
    """Instructions with continuation lines joined and comments dropped, tagged with their stage."""
    out = Dockerfile()
    logical: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not buf):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    stage = -1
    for line in logical:
        name, _, args = line.partition(" ")
        name = name.upper()
        if name == "FROM":
            stage += 1
            m = re.search(r"\s+AS\s+(\S+)$", args, re.IGNORECASE)
            out.stage_names.append(m.group(1) if m else None)
        if name == "ARG" and stage == -1:
            key, _, default = args.partition("=")
            out.args[key.strip()] = default.strip()
        out.instructions.append(Instruction(stage, name, args.strip()))
    return out


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile((DEPLOY / "Dockerfile").read_text())


def exec_form(args: str) -> list[str]:
    import json

    value = json.loads(args)
    assert isinstance(value, list), f"not exec form: {args}"
    return [str(v) for v in value]


def run_mounts(args: str) -> tuple[list[dict[str, str]], list[str]]:
    """A RUN's --mount options as dicts, and the command's words."""
    words = shlex.split(args)
    mounts = []
    while words and words[0].startswith("--"):
        opt = words.pop(0)
        if opt.startswith("--mount="):
            mount: dict[str, str] = {}
            for kv in opt.removeprefix("--mount=").split(","):
                key, _, value = kv.partition("=")
                mount[key] = value
            mounts.append(mount)
    return mounts, words


def test_dockerfile_stages(dockerfile: Dockerfile) -> None:
    froms = dockerfile.all("FROM")
    assert len(froms) == 2, "multi-stage: a builder and the runtime"
    assert dockerfile.stage_names[0] == "builder"
    base = dockerfile.args.get("PYTHON_IMAGE", "")
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", base), base
    for f in froms:
        assert f.args.split()[0] == "${PYTHON_IMAGE}"
    text = (DEPLOY / "Dockerfile").read_text()
    assert text.startswith("# syntax=docker/dockerfile:1"), "RUN --mount needs the BuildKit syntax line"


def test_dockerfile_runtime(dockerfile: Dockerfile, ports: tuple[int, int]) -> None:
    (user,) = dockerfile.final("USER")
    assert user.args == "10001:10001", "numeric uid:gid so Kubernetes' runAsNonRoot can verify it"
    (expose,) = dockerfile.final("EXPOSE")
    assert sorted(int(p) for p in expose.args.split()) == sorted(ports)
    (entry,) = dockerfile.final("ENTRYPOINT")
    (cmd,) = dockerfile.final("CMD")
    assert exec_form(entry.args) == ["guard"]
    assert exec_form(cmd.args) == ["run", "-c", f"{CONFIG_DIR}/guard.yaml"]
    (health,) = dockerfile.final("HEALTHCHECK")
    assert f"http://127.0.0.1:{ports[1]}/readyz" in health.args
    assert "python" in health.args and "curl" not in health.args
    env = " ".join(i.args for i in dockerfile.final("ENV"))
    assert f"PATH={VENV}/bin:" in env and "PYTHONDONTWRITEBYTECODE=1" in env
    labels = " ".join(i.args for i in dockerfile.final("LABEL"))
    assert "org.opencontainers.image.title" in labels and "org.opencontainers.image.version" in labels
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert any(i.args == f"VERSION={version}" for i in dockerfile.final("ARG")), "label = pyproject version"
    # state_dir is created for the runtime user; nothing reaches the image except through install.sh
    docker_state = "/var/lib/loginguard"
    assert any(docker_state in i.args and "10001" in i.args for i in dockerfile.final("RUN"))
    assert not dockerfile.all("COPY") and not dockerfile.all("ADD"), "install steps belong in install.sh"


def install_steps(text: str) -> list[str]:
    """The install.sh steps a file runs, in order (``sh .../install.sh STEP``)."""
    return re.findall(r"\bsh\s+\"?[^\"\s]*install\.sh\"?\s+(wheels|venv|config)\b", text)


def test_dockerfile_installs_only_through_install_sh(dockerfile: Dockerfile) -> None:
    allowed_other = (re.compile(r"^groupadd .* && useradd "), re.compile(r"^install -d -o 10001 -g 10001 "))
    steps = []
    for run in dockerfile.all("RUN"):
        _, words = run_mounts(run.args)
        command = " ".join(words)
        if "install.sh" in command:
            steps.append(words[2])
            assert words[0] == "sh" and words[1].endswith("install.sh"), command
            continue
        assert any(p.match(command) for p in allowed_other), f"RUN outside install.sh: {command}"
        assert "pip" not in command and "venv" not in command
    assert steps == ["wheels", "venv", "config"]
    # install-check.sh runs the very same steps, in the same order
    assert install_steps((DEPLOY / "install-check.sh").read_text()) == steps


def test_dockerfile_mount_sources_are_in_the_context(dockerfile: Dockerfile) -> None:
    context = set(buildcontext().context_files(ROOT))
    stage_names = {n for n in dockerfile.stage_names if n}
    for run in dockerfile.all("RUN"):
        mounts, words = run_mounts(run.args)
        for m in mounts:
            if m.get("type") != "bind":
                continue
            if "from" in m:
                assert m["from"] in stage_names, m
                continue
            source = m.get("source", ".")
            if source == ".":
                continue
            assert (ROOT / source).exists(), source
            assert source in context, f"{source} is excluded by .dockerignore"
        # the script a RUN executes is one of its bind mounts
        if words and words[0] == "sh":
            script = words[1]
            assert any(
                script == m.get("target") or script.startswith(m.get("target", "//") + "/") for m in mounts
            ), f"{script} is not mounted"


def test_hadolint() -> None:
    """The Dockerfile passes hadolint (installed with the test extras, next to this interpreter)."""
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    subprocess.run([hadolint, str(DEPLOY / "Dockerfile")], check=True)


# ---- build context (.dockerignore) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patterns", "path", "excluded"),
    [
        ("*", "guard/cli.py", True),
        ("*\n!guard", "guard/cli.py", False),
        ("*\n!guard\n**/__pycache__", "guard/__pycache__/cli.cpython-311.pyc", True),
        ("*\n!rules\nrules/tests", "rules/tests/a.test.yaml", True),
        ("*\n!rules\nrules/tests", "rules/lists/allowlist.txt", False),
        ("*\n!deploy/install.sh", "deploy/install.sh", False),
        ("*\n!deploy/install.sh", "deploy/Dockerfile", True),
        ("**/.env", "deploy/.env", True),
        ("**/.env", ".env", True),
        ("*.md", "docs/x.md", False),         # * does not cross a folder
        ("/tests/", "tests/test_x.py", True),  # leading and trailing slashes are cleaned
        ("**/*.py[cod]", "a/b/c.pyc", True),
        ("?.txt", "ab.txt", False),
    ],
)
def test_dockerignore_matching(patterns: str, path: str, excluded: bool) -> None:
    bc = buildcontext()
    assert bc.excluded(path, bc.parse(patterns)) is excluded


def test_build_context_has_what_the_build_needs() -> None:
    context = set(buildcontext().context_files(ROOT))
    needed = {"pyproject.toml", "deploy/install.sh", "deploy/guard.docker.yaml", "geoip/hosting-asns.txt"}
    # the whole package, package data (Lua scripts, static pages, py.typed) included
    needed |= {
        p.relative_to(ROOT).as_posix() for p in (ROOT / "guard").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    }
    needed |= {
        p.relative_to(ROOT).as_posix() for p in (ROOT / "rules").rglob("*")
        if p.is_file() and "tests" not in p.relative_to(ROOT / "rules").parts
    }
    if (ROOT / "README.md").exists():
        needed.add("README.md")  # pyproject.toml's readme
    missing = sorted(needed - context)
    assert not missing, f"excluded by .dockerignore but needed by the build: {missing}"


def test_build_context_leaves_out_secrets_and_bulk() -> None:
    context = buildcontext().context_files(ROOT)
    bad = [
        f for f in context
        if f.startswith((".git/", ".venv/", "tests/", "var/", "bench/", "rules/tests/", "deploy/k8s/"))
        or f.endswith((".env", ".mmdb", ".pyc")) or "/__pycache__/" in f
    ]
    assert not bad, bad


# ---- the container config -------------------------------------------------------------------------------


def test_docker_config_shape(docker_config: dict[str, Any]) -> None:
    assert docker_config["listen"].startswith("0.0.0.0:")
    assert docker_config["admin"]["listen"].startswith("0.0.0.0:")
    assert docker_config["store"]["backend"] == "redis"
    assert docker_config["upstream"] == "http://demoapp:8000"
    assert docker_config["state_dir"] == "/var/lib/loginguard"
    assert "file" not in docker_config.get("log", {}), "logs go to stderr in containers"
    assert "token" not in docker_config["admin"], "secrets come from the environment"
    assert "secret_key" not in docker_config, "secrets come from the environment"
    assert docker_config["trusted_proxies"] == []


def test_docker_config_passes_guard_check(tmp_path: Path) -> None:
    """On the image's layout (install.sh config): its relative paths are relative to /etc/loginguard."""
    config = stage_config(tmp_path / "etc")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARD_")}
    env["GUARD_REDIS_URL"] = "redis://redis:6379/0"
    env["GUARD_SECRET_KEY"] = "deploy-check-key-0123456789abcdef"
    r = subprocess.run(
        [sys.executable, "-m", "guard", "check", "-c", str(config)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().endswith(": ok")
    assert not (tmp_path / "etc" / "rules" / "tests").exists(), "rule tests stay out of the image"


def test_install_sh_config_is_the_image_layout(tmp_path: Path) -> None:
    stage_config(tmp_path)
    assert (tmp_path / "guard.yaml").read_bytes() == (DEPLOY / "guard.docker.yaml").read_bytes()
    for rel in ("rules/lists/allowlist.txt", "rules/lists/blocklist.txt", "geoip/hosting-asns.txt"):
        assert (tmp_path / rel).is_file(), rel


def test_shutdown_grace_fits_every_stop_timeout(docker_config: dict[str, Any]) -> None:
    grace = int(str(docker_config["timeouts"]["shutdown_grace"]).rstrip("s"))
    compose = load(DEPLOY / "docker-compose.yml")
    for name in ("guard-a", "guard-b"):
        assert int(compose["services"][name]["stop_grace_period"].rstrip("s")) >= grace + 5
    pod = deployment()["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= grace + pre_stop_seconds(pod) + 5
    unit = unit_options(DEPLOY / "systemd" / "loginguard.service")
    assert int(unit["TimeoutStopSec"][0]) >= grace + 5


# ---- docker-compose -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = load(DEPLOY / "docker-compose.yml")
    return data


def published(service: dict[str, Any]) -> dict[int, tuple[str, int]]:
    """container port -> (host address, host port)."""
    out = {}
    for spec in service.get("ports", []):
        parts = str(spec).split(":")
        host_ip = parts[0] if len(parts) == 3 else "0.0.0.0"
        out[int(parts[-1])] = (host_ip, int(parts[-2]))
    return out


def test_compose_services(compose: dict[str, Any]) -> None:
    assert {"guard-a", "guard-b", "redis", "demoapp", "prometheus", "grafana"} <= set(compose["services"])


def test_compose_guards(compose: dict[str, Any], ports: tuple[int, int]) -> None:
    listen, admin = ports
    host_ports = []
    for name in ("guard-a", "guard-b"):
        svc = compose["services"][name]
        pub = published(svc)
        assert set(pub) == {listen, admin}, f"{name} publishes {pub}"
        assert pub[admin][0] == "127.0.0.1", "the admin port is never published beyond the host"
        host_ports += [p for _, p in pub.values()]
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in svc["security_opt"]
        assert svc["environment"]["GUARD_REDIS_URL"] == "redis://redis:6379/0"
        assert "GUARD_ADMIN_TOKEN" in svc["environment"]
        mounts = {str(v).split(":")[1] for v in svc["volumes"]}
        assert "/var/lib/loginguard" in mounts, "state_dir on a volume (read-only root)"
        assert any(str(t).startswith("/tmp") for t in svc["tmpfs"])
        build = svc["build"]
        context = (DEPLOY / build["context"]).resolve()
        assert context == ROOT and (context / build["dockerfile"]).is_file()
    assert len(set(host_ports)) == len(host_ports), "each instance has its own host ports"


def test_compose_upstream_and_redis(compose: dict[str, Any], docker_config: dict[str, Any]) -> None:
    up = urllib.parse.urlsplit(docker_config["upstream"])
    demo = compose["services"][up.hostname]
    argv = demo["entrypoint"]
    assert argv[argv.index("--port") + 1] == str(up.port)
    assert f":{up.port}/" in " ".join(demo["healthcheck"]["test"]), "its own check, not the image's /readyz"
    script = argv[1]
    assert any(str(v).split(":")[1] == script for v in demo["volumes"])
    redis_url = urllib.parse.urlsplit(compose["services"]["guard-a"]["environment"]["GUARD_REDIS_URL"])
    assert redis_url.hostname in compose["services"]
    backend = compose["networks"]["backend"]
    assert backend.get("internal") is True
    assert compose["services"]["redis"]["networks"] == ["backend"]
    assert compose["services"]["demoapp"]["networks"] == ["backend"]


def test_compose_bind_mounts_exist(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        for vol in svc.get("volumes", []):
            source = str(vol).split(":")[0]
            if source.startswith((".", "/")):
                path = (DEPLOY / source).resolve()
                if path.is_relative_to(DEPLOY / "prometheus") or path.is_relative_to(DEPLOY / "grafana"):
                    continue  # written by another change; checked below when present
                assert path.exists(), f"{name}: {source}"


def guard_hosts(compose: dict[str, Any]) -> set[str]:
    hosts = set()
    for name in ("guard-a", "guard-b"):
        hosts.add(name)
        for net in compose["services"][name]["networks"].values():
            hosts.update((net or {}).get("aliases", []))
    return hosts


def test_compose_prometheus(compose: dict[str, Any], ports: tuple[int, int]) -> None:
    prom_file = DEPLOY / "prometheus" / "prometheus.yml"
    prom = load(prom_file)
    svc = compose["services"]["prometheus"]
    mounts = {str(v).split(":")[1]: (DEPLOY / str(v).split(":")[0]) for v in svc["volumes"]}
    assert mounts["/etc/prometheus/prometheus.yml"].resolve() == prom_file.resolve()
    for rule_file in prom.get("rule_files", []):
        target = f"/etc/prometheus/{rule_file}"
        assert target in mounts, f"{rule_file} is not mounted"
        assert mounts[target].is_file(), f"{mounts[target]} missing"
    hosts = guard_hosts(compose)
    for job in prom["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                assert host in hosts, f"scrapes {host}: no guard service or alias {sorted(hosts)}"
                assert int(port) == ports[1]
        cred = job.get("authorization", {}).get("credentials_file")
        if cred:
            targets = [s["target"] for s in svc.get("secrets", [])]
            assert cred in targets, f"{cred} is not provided to the prometheus container"
    for secret in svc.get("secrets", []):
        assert secret["source"] in compose["secrets"]


def test_compose_grafana(compose: dict[str, Any]) -> None:
    svc = compose["services"]["grafana"]
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in svc["volumes"]}
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    providers = DEPLOY / "grafana" / "provisioning" / "dashboards"
    files = list(providers.glob("*.y*ml"))
    assert files, f"no dashboard provider in {providers}"
    for f in files:
        for provider in load(f).get("providers", []):
            path = provider["options"]["path"]
            assert path in mounts, f"{f.name}: dashboards path {path} is not mounted"
            assert (DEPLOY / mounts[path]).is_dir()
    assert svc["environment"]["GF_SECURITY_ADMIN_PASSWORD"].startswith("${")
    assert published(svc)[3000][0] == "127.0.0.1"


# ---- Kubernetes -----------------------------------------------------------------------------------------


def kustomization() -> dict[str, Any]:
    data: dict[str, Any] = load(K8S / "kustomization.yaml")
    return data


def k8s_docs(path: Path) -> list[dict[str, Any]]:
    return load_all(path)


def deployment() -> dict[str, Any]:
    (doc,) = [d for d in k8s_docs(K8S / "deployment.yaml") if d["kind"] == "Deployment"]
    return doc


def pre_stop_seconds(pod: dict[str, Any]) -> int:
    pre_stop = pod["containers"][0].get("lifecycle", {}).get("preStop", {})
    cmd = " ".join(pre_stop.get("exec", {}).get("command", []))
    m = re.search(r"sleep\((\d+)\)", cmd)
    return int(m.group(1)) if m else 0


def generator_files() -> dict[str, Path]:
    """configMapGenerator key -> the repository file it reads."""
    out: dict[str, Path] = {}
    for gen in kustomization()["configMapGenerator"]:
        for spec in gen["files"]:
            key, _, src = spec.partition("=") if "=" in spec else (Path(spec).name, "", spec)
            out[key] = (K8S / src).resolve()
    return out


def test_kustomization_references_exist() -> None:
    k = kustomization()
    for res in k["resources"]:
        assert (K8S / res).exists(), res
    assert "secret.yaml" not in k["resources"], "the secret template is never applied as is"
    for key, path in generator_files().items():
        assert path.is_file(), f"{key}: {path}"


def test_k8s_documents_are_objects() -> None:
    for path in sorted(K8S.glob("*.yaml")) + sorted((DEPLOY / "geoip" / "k8s").glob("*.yaml")):
        for doc in k8s_docs(path):
            assert doc.get("apiVersion") and doc.get("kind"), path
            if doc["kind"] not in ("Kustomization", "Component"):
                assert doc["metadata"]["name"], path


def test_k8s_configmap_carries_config_and_every_rule_file() -> None:
    files = generator_files()
    assert files["guard.yaml"] == (DEPLOY / "guard.docker.yaml").resolve()
    volume = next(v for v in deployment()["spec"]["template"]["spec"]["volumes"] if v["name"] == "config")
    items = {i["key"]: i["path"] for i in volume["configMap"]["items"]}
    assert set(items) == set(files), "deployment.yaml items and the configMapGenerator list the same keys"
    # each key lands where the image has the same file (the config's relative paths resolve alike)
    for key, path in items.items():
        source = files[key]
        if key == "guard.yaml":
            assert path == "guard.yaml"
        else:
            assert path == source.relative_to(ROOT).as_posix(), (key, path)
    shipped = {
        p.relative_to(ROOT).as_posix() for p in (ROOT / "rules").rglob("*")
        if p.is_file() and "tests" not in p.relative_to(ROOT / "rules").parts
    }
    missing = sorted(shipped - set(items.values()))
    assert not missing, f"add to k8s/kustomization.yaml and k8s/deployment.yaml: {missing}"


def container(doc: dict[str, Any], name: str = "guard") -> dict[str, Any]:
    return next(c for c in doc["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def test_k8s_deployment_ports_probes_mounts(ports: tuple[int, int], docker_config: dict[str, Any]) -> None:
    dep = deployment()
    c = container(dep)
    named = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert named == {"http": ports[0], "admin": ports[1]}
    ready, live = c["readinessProbe"]["httpGet"], c["livenessProbe"]["httpGet"]
    assert ready["path"] == "/readyz" and named[ready["port"]] == ports[1]
    assert live["path"] == "/healthz" and named[live["port"]] == ports[1]
    assert c["args"] == ["run", "-c", f"{CONFIG_DIR}/guard.yaml"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert mounts[CONFIG_DIR]["readOnly"] is True
    for writable in (docker_config["state_dir"], "/tmp"):
        assert "emptyDir" in volumes[mounts[writable]["name"]], writable
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod template of a workload (the GeoIP component's Deployment patch is partial: skipped)."""
    for path in [*K8S.glob("*.yaml"), *(DEPLOY / "geoip" / "k8s").glob("*.yaml")]:
        if path.name == "deployment-patch.yaml":
            continue
        for doc in k8s_docs(path):
            spec = doc.get("spec", {})
            if doc["kind"] == "CronJob":
                spec = spec["jobTemplate"]["spec"]
            if doc["kind"] in ("Deployment", "StatefulSet", "CronJob", "Job", "DaemonSet"):
                yield f"{path.name}:{doc['metadata']['name']}", spec["template"]["spec"]


def test_k8s_pods_meet_the_restricted_profile() -> None:
    seen = []
    for where, pod in pod_specs():
        seen.append(where)
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] > 0, where
        assert psc["seccompProfile"]["type"] == "RuntimeDefault", where
        assert pod.get("automountServiceAccountToken") is False, where
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"], where
            assert sc.get("privileged", False) is False, where
            assert "memory" in c["resources"]["limits"], where
    assert len(seen) >= 3, seen  # guard, redis, geoipupdate
    ns = k8s_docs(K8S / "namespace.yaml")[0]
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_k8s_secret_template_matches_references() -> None:
    (secret,) = k8s_docs(K8S / "secret.yaml")
    keys = set(secret["stringData"])
    assert keys == {"GUARD_ADMIN_TOKEN", "GUARD_SECRET_KEY", "GUARD_REDIS_URL"}
    assert keys <= set(ENV_OVERRIDES)
    for value in (secret["stringData"]["GUARD_ADMIN_TOKEN"], secret["stringData"]["GUARD_SECRET_KEY"]):
        assert value.startswith("REPLACE"), "the template holds placeholders only"
    env = container(deployment())["env"]
    refs = [e["valueFrom"]["secretKeyRef"] for e in env if "valueFrom" in e]
    assert {r["name"] for r in refs} == {secret["metadata"]["name"]}
    assert {r["key"] for r in refs} == keys
    redis = urllib.parse.urlsplit(secret["stringData"]["GUARD_REDIS_URL"])
    svc = next(d for d in k8s_docs(K8S / "redis.yaml") if d["kind"] == "Service")
    assert redis.hostname == svc["metadata"]["name"] and redis.port == svc["spec"]["ports"][0]["port"]


def test_k8s_services_pdb_networkpolicy(ports: tuple[int, int]) -> None:
    labels = deployment()["spec"]["template"]["metadata"]["labels"]
    named = {p["name"]: p["containerPort"] for p in container(deployment())["ports"]}
    services = {d["metadata"]["name"]: d for d in k8s_docs(K8S / "service.yaml")}
    public = [p["targetPort"] for p in services["loginguard"]["spec"]["ports"]]
    assert public == ["http"], "the public Service never carries the admin port"
    assert [p["targetPort"] for p in services["loginguard-admin"]["spec"]["ports"]] == ["admin"]
    for svc in services.values():
        assert svc["spec"]["selector"].items() <= labels.items()
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in named
    (pdb,) = k8s_docs(K8S / "pdb.yaml")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < deployment()["spec"]["replicas"]
    (netpol,) = k8s_docs(K8S / "networkpolicy.yaml")
    redis_pod = next(d for d in k8s_docs(K8S / "redis.yaml") if d["kind"] == "StatefulSet")
    redis_labels = redis_pod["spec"]["template"]["metadata"]["labels"]
    assert netpol["spec"]["podSelector"]["matchLabels"].items() <= redis_labels.items()
    allowed = netpol["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert allowed.items() <= labels.items()


def kustomize(target: Path) -> list[dict[str, Any]]:
    r = subprocess.run(
        ["kubectl", "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(target)],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_builds() -> None:
    docs = kustomize(K8S)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds.count("Deployment") == 1 and "StatefulSet" in kinds and "PodDisruptionBudget" in kinds
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert cm["data"]["guard.yaml"] == (DEPLOY / "guard.docker.yaml").read_text()
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    volume = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == cm["metadata"]["name"], "the hashed name reaches the Deployment"
    assert all(d["metadata"].get("namespace") == "loginguard" for d in docs if d["kind"] != "Namespace")


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_with_the_geoip_component(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(K8S, overlay)],
        "components": [os.path.relpath(DEPLOY / "geoip" / "k8s", overlay)],
    }))
    docs = kustomize(overlay)
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    mounts = {m["mountPath"]: m for m in container(dep)["volumeMounts"]}
    assert mounts["/var/lib/GeoIP"]["readOnly"] is True
    (cron,) = [d for d in docs if d["kind"] == "CronJob"]
    job = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in job["env"]}
    assert env["GEOIPUPDATE_DB_DIR"]["value"] == "/var/lib/GeoIP"
    assert "secretKeyRef" in env["GEOIPUPDATE_LICENSE_KEY"]["valueFrom"]
    assert "secretKeyRef" in env["GEOIPUPDATE_ACCOUNT_ID"]["valueFrom"]
    assert all(d["metadata"].get("namespace") == "loginguard" for d in docs if d["kind"] != "Namespace")


# ---- systemd --------------------------------------------------------------------------------------------


def unit_options(path: Path) -> dict[str, list[str]]:
    """key -> every value (systemd allows a key several times), over all sections."""
    out: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not key=value: {line}"
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_systemd_unit_sandbox(docker_config: dict[str, Any]) -> None:
    unit = DEPLOY / "systemd" / "loginguard.service"
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(unit.read_text())
    assert set(parser.sections()) == {"Unit", "Service", "Install"}
    o = unit_options(unit)
    expect = {
        "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes", "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "", "AmbientCapabilities": "", "MemoryDenyWriteExecute": "yes",
        "Restart": "on-failure", "StateDirectory": "loginguard", "PrivateDevices": "yes",
        "RestrictNamespaces": "yes", "LockPersonality": "yes", "SystemCallArchitectures": "native",
    }
    for key, value in expect.items():
        assert o.get(key) == [value], f"{key}={o.get(key)}"
    families = o["RestrictAddressFamilies"][0].split()
    assert {"AF_INET", "AF_INET6"} <= set(families) and "AF_PACKET" not in families
    assert "@system-service" in o["SystemCallFilter"]
    assert docker_config["state_dir"] in o["ReadWritePaths"][0].split()
    assert o["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert o["ExecStart"] == [f"{VENV}/bin/guard run -c {CONFIG_DIR}/guard.yaml"]
    assert o["User"] == ["loginguard"]
    env_keys = {
        line.split("=", 1)[0].lstrip("#")
        for line in (DEPLOY / "systemd" / "loginguard.env.example").read_text().splitlines()
        if re.match(r"^#?GUARD_\w+=", line)
    }
    assert env_keys and env_keys <= set(ENV_OVERRIDES), env_keys - set(ENV_OVERRIDES)


def verifiable_copy(unit: Path, dest: Path) -> Path:
    """The unit with executables that only exist on an installed host swapped for real ones."""
    text = unit.read_text()
    guard_bin = shutil.which("guard") or str(Path(sys.executable).parent / "guard")
    text = text.replace(f"{VENV}/bin/guard", guard_bin)
    text = text.replace("/usr/bin/geoipupdate", shutil.which("geoipupdate") or "/bin/true")
    out = dest / unit.name
    out.write_text(text)
    return out


SYSTEMD_UNITS = [
    DEPLOY / "systemd" / "loginguard.service",
    DEPLOY / "geoip" / "geoipupdate.service",
    DEPLOY / "geoip" / "geoipupdate.timer",
]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    copies = [verifiable_copy(u, tmp_path) for u in SYSTEMD_UNITS]
    r = subprocess.run(
        ["systemd-analyze", "verify", *map(str, copies)], capture_output=True, text=True, timeout=60
    )
    ours = [line for line in (r.stdout + r.stderr).splitlines() if str(tmp_path) in line]
    assert r.returncode == 0 and not ours, r.stdout + r.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize("unit", SYSTEMD_UNITS[:2], ids=lambda p: p.name)
def test_systemd_security_exposure(tmp_path: Path, unit: Path) -> None:
    copy = verifiable_copy(unit, tmp_path)
    r = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(copy)],
        capture_output=True, text=True, timeout=60,
    )
    if "--offline" in r.stderr and r.returncode != 0:
        pytest.skip("systemd-analyze security --offline needs systemd 252")
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    assert m, r.stdout[-500:] + r.stderr
    assert float(m.group(1)) <= 2.0, f"{unit.name}: exposure {m.group(1)} (we keep it at most 2.0)"


# ---- GeoIP ----------------------------------------------------------------------------------------------


def test_geoip_files() -> None:
    conf = (DEPLOY / "geoip" / "GeoIP.conf").read_text().splitlines()
    active = dict(line.split(None, 1) for line in conf if line.strip() and not line.startswith("#"))
    assert "AccountID" not in active and "LicenseKey" not in active, "credentials come from the environment"
    assert set(active["EditionIDs"].split()) == {"GeoLite2-City", "GeoLite2-ASN"}
    db_dir = active["DatabaseDirectory"]
    env = (DEPLOY / "geoip" / "geoipupdate.env.example").read_text()
    assert "GEOIPUPDATE_ACCOUNT_ID=" in env and "GEOIPUPDATE_LICENSE_KEY=" in env
    service = unit_options(DEPLOY / "geoip" / "geoipupdate.service")
    assert service["StateDirectory"] == [Path(db_dir).name] and db_dir.startswith("/var/lib/")
    assert "/etc/loginguard/GeoIP.conf" in service["ExecStart"][0]
    # the guard config's commented example and the Kubernetes mount use the same folder
    example = (DEPLOY / "guard.docker.yaml").read_text()
    assert f"city: {db_dir}/GeoLite2-City.mmdb" in example and f"asn: {db_dir}/GeoLite2-ASN.mmdb" in example
    (patch,) = k8s_docs(DEPLOY / "geoip" / "k8s" / "deployment-patch.yaml")
    assert container(patch)["volumeMounts"][0]["mountPath"] == db_dir
    timer = unit_options(DEPLOY / "geoip" / "geoipupdate.timer")
    assert timer["Persistent"] == ["true"] and timer["OnCalendar"]


def test_readme_mentions_only_existing_paths() -> None:
    text = (DEPLOY / "README.md").read_text()
    paths = set(re.findall(r"(?<![\w/.-])((?:deploy|rules|geoip)/[\w./-]+\w)", text))
    # another change writes the first two; the README has the user create the last two
    others = ("deploy/prometheus", "deploy/grafana", "deploy/.env", "deploy/geoip-data")
    missing = sorted(p for p in paths if not (ROOT / p).exists() and not p.startswith(others))
    assert not missing, missing
    for name in ("install-check.sh", "docker-compose.yml", "k8s/", "loginguard.service", "GeoIP.conf"):
        assert name in text


# ---- processes (slow) -----------------------------------------------------------------------------------


def _no_proxy_opener() -> urllib.request.OpenerDirector:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    return urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    opener = _no_proxy_opener()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            with opener.open(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} never answered 200: {log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


MDWE_WRAPPER = """
import ctypes, mmap, runpy, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:          # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    sys.exit(77)
try:                                          # prove the kernel now refuses W+X memory
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit(78)
except PermissionError:
    pass
from cryptography.hazmat.primitives.ciphers.aead import AESGCM   # cffi/Rust extension at work
AESGCM(AESGCM.generate_key(bit_length=128)).encrypt(b"0" * 12, b"x", None)
sys.argv = ["guard", *sys.argv[1:]]
runpy.run_module("guard", run_name="__main__")
"""


def _serve_container_config(tmp_path: Path, redis_url: str, mdwe: bool) -> str:
    """deploy/guard.docker.yaml from the image layout, with Redis, on free ports; a login passes through."""
    config = stage_config(tmp_path / "etc")
    cfg = yaml.safe_load(config.read_text())
    listen, admin, upstream = free_port(), free_port(), free_port()
    cfg["listen"], cfg["admin"]["listen"] = f"127.0.0.1:{listen}", f"127.0.0.1:{admin}"
    cfg["state_dir"] = str(tmp_path / "state")
    cfg["timeouts"]["shutdown_grace"] = "3s"
    cfg["store"]["key_prefix"] = f"deploytest{os.getpid()}:"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARD_")}
    env |= {"GUARD_REDIS_URL": redis_url, "GUARD_UPSTREAM": f"http://127.0.0.1:{upstream}",
            "GUARD_SECRET_KEY": "deploy-check-key-0123456789abcdef"}
    demo_log, guard_log = tmp_path / "demo.log", tmp_path / "guard.log"
    with demo_log.open("wb") as dl:
        demo = subprocess.Popen(
            [sys.executable, str(DEPLOY / "demoapp.py"), "--host", "127.0.0.1", "--port", str(upstream),
             "--accounts", "5"], stdout=dl, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
        )
    argv = [sys.executable, "-c", MDWE_WRAPPER] if mdwe else [sys.executable, "-m", "guard"]
    with guard_log.open("wb") as gl:
        guard = subprocess.Popen([*argv, "run", "-c", str(config)], stdout=gl, stderr=subprocess.STDOUT,
                                 cwd=ROOT, env=env)
    try:
        _wait_ready(f"http://127.0.0.1:{upstream}/login", demo, demo_log)
        try:
            _wait_ready(f"http://127.0.0.1:{admin}/readyz", guard, guard_log)
        except AssertionError:
            if guard.returncode == 77:
                pytest.skip("the kernel has no PR_SET_MDWE (Linux 6.3+)")
            raise
        from guard.demo.legacyapp import make_accounts

        acct = next(iter(make_accounts(5).values()))
        body = urllib.parse.urlencode({"username": acct.login, "password": acct.password}).encode()
        opener = _no_proxy_opener()
        with opener.open(f"http://127.0.0.1:{listen}/login", timeout=5) as r:
            assert r.status == 200 and b"Sign in" in r.read()
        with pytest.raises(urllib.error.HTTPError) as answer:
            opener.open(f"http://127.0.0.1:{listen}/login", data=body, timeout=5)
        assert answer.value.code == 302 and answer.value.headers["Location"] == "/contact"
        answer.value.close()
    finally:
        code = _stop(guard)
        _stop(demo)
    assert code == 0, guard_log.read_text()[-3000:]
    return guard_log.read_text()


@pytest.mark.slow
def test_container_config_serves_with_redis(tmp_path: Path, redis_url: str) -> None:
    log = _serve_container_config(tmp_path, redis_url, mdwe=False)
    assert '"store": "redis"' in log


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_MDWE is Linux-only")
def test_guard_runs_without_writable_executable_memory(tmp_path: Path, redis_url: str) -> None:
    """What systemd's MemoryDenyWriteExecute=yes enforces, enforced here by the kernel's PR_SET_MDWE."""
    log = _serve_container_config(tmp_path, redis_url, mdwe=True)
    assert '"msg": "stopped"' in log


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_install_check_script(tmp_path: Path) -> None:
    started = time.monotonic()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARD_")}
    env["PYTHON"] = shutil.which("python3.11") or sys.executable
    env["TMPDIR"] = str(tmp_path)  # even a killed run leaves nothing outside pytest's folders
    r = subprocess.run(
        ["bash", str(DEPLOY / "install-check.sh")], capture_output=True, text=True, timeout=280, env=env
    )
    took = time.monotonic() - started
    # this machine's pip configuration warns about every package; keep the real error visible
    stderr = "\n".join(line for line in r.stderr.splitlines() if not line.startswith("WARNING: Location"))
    assert r.returncode == 0, r.stdout[-3000:] + stderr[-5000:]
    assert "install-check: ok" in r.stdout
    assert took < 180, f"install-check.sh took {took:.0f}s (budget: 3 minutes)"

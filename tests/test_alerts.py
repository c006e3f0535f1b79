"""Alert rules, scrape config and the Grafana dashboard: valid, and only about metrics the guard exports.

With ``promtool`` (Debian package ``prometheus``) the rules are checked and their unit tests
(deploy/prometheus/alerts.test.yml) run; without it the YAML is parsed and every metric name in
every expression must be one the guard exports.  The name check runs in both cases.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from guard.observe.metrics import Metrics

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
PROMTOOL = shutil.which("promtool")
IDENT = re.compile(r"\b(guard_[a-z0-9_]+)\b")


def exported() -> set[str]:
    """Every series name /metrics can carry (counters' _total, histograms' _bucket/_sum/_count)."""
    m = Metrics(multiproc=False)
    m.challenge("issued", "email")
    m.pii("/", "phone", "strip", 1)
    m.reload(True)
    m.ban("ip:1.2.3.4", 1, "manual")
    m.exposures.labels("true").inc()
    m.drop_counter("decision_log")(1)
    m.rule_hits.labels("r", "enforce").inc()
    m.logins.labels("login", "failure").inc()
    m.requests.labels("pass", "2xx").inc()
    m.overload({("request", "loop_lag"): 1}, 0.2)
    names: set[str] = set()
    for fam in text_string_to_metric_families(m.render().decode()):
        names.update(s.name for s in fam.samples)
    return names


def expressions() -> list[str]:
    doc = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


def test_alert_expressions_use_exported_metrics() -> None:
    names = exported()
    exprs = expressions()
    assert {"LoginGuardAttackInProgress", "LoginGuardFailureRatioSpike", "LoginGuardStoreDown",
            "LoginGuardUpstreamErrors", "LoginGuardChallengeChannelFailing", "LoginGuardShedding"} <= {
        r["alert"] for g in yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
        for r in g["rules"]}
    for expr in exprs:
        used = set(IDENT.findall(expr))
        assert used, expr
        assert used <= names, (used - names, expr)


def test_grafana_dashboard_uses_exported_metrics() -> None:
    names = exported()
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "loginguard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [a["expr"] for a in dash["annotations"]["list"]]
    assert len(exprs) >= 15 and dash["uid"] == "loginguard"
    for expr in exprs:
        assert set(IDENT.findall(expr)) <= names, expr
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for name in ("dashboards/loginguard.yml", "datasources/prometheus.yml"):
        assert yaml.safe_load((DEPLOY / "grafana" / "provisioning" / name).read_text())["apiVersion"] == 1


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")
def test_promtool_checks_rules_and_runs_their_unit_tests() -> None:
    assert PROMTOOL is not None
    folder = DEPLOY / "prometheus"
    subprocess.run([PROMTOOL, "check", "rules", "alerts.yml"], cwd=folder, check=True, capture_output=True,
                   timeout=60)
    res = subprocess.run([PROMTOOL, "test", "rules", "alerts.test.yml"], cwd=folder, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")
def test_promtool_checks_the_scrape_config(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    token = tmp_path / "token"
    token.write_text("x")
    text = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    text = text.replace("/etc/prometheus/loginguard-admin-token", str(token))
    (tmp_path / "prometheus.yml").write_text(text)
    shutil.copy(DEPLOY / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    res = subprocess.run([PROMTOOL, "check", "config", "prometheus.yml"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr

"""Shipped operations files are valid: Prometheus alert rules pass promtool and name only
metrics the service exports."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest

from monitor.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_prometheus_rules_are_valid() -> None:
    r = subprocess.run(["promtool", "check", "rules", str(ROOT / "deploy/prometheus/rules.yml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "9 rules found" in r.stdout


def test_prometheus_rules_name_only_exported_metrics() -> None:
    rules = yaml.safe_load((ROOT / "deploy/prometheus/rules.yml").read_text())
    used = {m for group in rules["groups"] for rule in group["rules"] for m in re.findall(r"deepfake_monitor_\w+", rule["expr"])}
    metrics = Metrics()
    metrics.sink_failures.labels("webhook")  # labelled series appear once used
    metrics.sink_rejected.labels("webhook")
    exported = set(re.findall(r"^# TYPE (\w+) (\w+)", generate_latest(metrics.registry).decode(), re.M))
    names = set()
    for name, kind in exported:
        names |= {name, f"{name}_total"} if kind == "counter" else {name}
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    assert used and used <= names, sorted(used - names)

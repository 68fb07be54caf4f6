"""Shipped operations files are valid: Prometheus alert rules pass promtool, and the rules and
the Grafana dashboard name only metrics the service exports."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest

from monitor.metrics import Metrics
from tests.support import dashboards

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_prometheus_rules_are_valid() -> None:
    r = subprocess.run(["promtool", "check", "rules", str(ROOT / "deploy/prometheus/rules.yml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "10 rules found" in r.stdout
    # Behaviour, not only syntax: two severities at once, two monitors with one stream name.
    t = subprocess.run(["promtool", "test", "rules", "rules_test.yml"], cwd=ROOT / "deploy/prometheus", capture_output=True, text=True)
    assert t.returncode == 0, t.stdout + t.stderr


def exported_names() -> set[str]:
    """Every series name the service's registry can export (a counter's _total, a histogram's
    _bucket/_sum/_count)."""
    metrics = Metrics()
    metrics.sink_failures.labels("webhook")  # labelled series appear once used
    metrics.sink_rejected.labels("webhook")
    metrics.sink_lag.labels("webhook")
    exported = set(re.findall(r"^# TYPE (\w+) (\w+)", generate_latest(metrics.registry).decode(), re.M))
    names = set()
    for name, kind in exported:
        names |= {name, f"{name}_total"} if kind == "counter" else {name}
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def test_prometheus_rules_name_only_exported_metrics() -> None:
    rules = yaml.safe_load((ROOT / "deploy/prometheus/rules.yml").read_text())
    used = {m for group in rules["groups"] for rule in group["rules"] for m in re.findall(r"deepfake_monitor_\w+", rule["expr"])}
    names = exported_names()
    assert used and used <= names, sorted(used - names)


def test_grafana_dashboard_names_only_exported_metrics_and_filters_by_instance() -> None:
    queries = dashboards.queries(dashboards.load())
    names = exported_names()
    assert len(queries) > 30
    for where, expr in queries:
        used = set(re.findall(r"(?:deepfake_monitor|process)_\w+", expr))
        assert used and used <= names, f"{where}: {sorted(used - names)}"
        # Every selector keeps to the chosen instances, so one dashboard serves several monitors.
        selectors = re.findall(r"(?:deepfake_monitor|process)_\w+(\{[^}]*\})?", expr)
        if not where.startswith("variable 'instance'"):
            assert all('instance=~"$instance"' in sel for sel in selectors), f"{where}: {expr}"
        # Prometheus and every exporter have process_* series too: with Instance "All" they
        # would be charted as monitors unless the query keeps to deepfake-monitor's targets.
        if "process_" in expr:
            assert expr.endswith(' and on(job, instance) deepfake_monitor_build_info{instance=~"$instance"}'), f"{where}: {expr}"


def test_grafana_dashboard_layout_is_sound() -> None:
    dash = dashboards.load()
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: dict[tuple[int, int], str] = {}
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
    assert {v["name"] for v in dash["templating"]["list"]} == {"datasource", "instance", "stream"}


def test_compose_mounts_files_that_exist_and_grafana_is_provisioned_with_the_dashboard() -> None:
    # Nothing here runs Docker; a mount of a missing file would make Docker create a directory.
    deploy = ROOT / "deploy"
    compose = yaml.safe_load((deploy / "compose.yaml").read_text())
    mounts: dict[str, str] = {}
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("./"):
                assert (deploy / source).exists(), volume
                mounts[target] = source
    grafana = compose["services"]["grafana"]
    assert all(p.startswith("127.0.0.1:") for s in compose["services"].values() for p in s.get("ports", []))
    assert grafana["environment"]["GF_ANALYTICS_REPORTING_ENABLED"] == "false"  # no outside host
    provisioning = deploy / mounts["/etc/grafana/provisioning"]
    (source,) = yaml.safe_load((provisioning / "datasources/prometheus.yaml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090" and "prometheus" in compose["services"]
    (provider,) = yaml.safe_load((provisioning / "dashboards/deepfake-monitor.yaml").read_text())["providers"]
    folder = provider["options"]["path"]
    dashboards_mounted = [s for t, s in mounts.items() if t.startswith(folder + "/")]
    assert dashboards_mounted == ["./grafana/deepfake-monitor.json"]

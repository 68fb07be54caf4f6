"""Shipped operations files are valid: Prometheus alert rules pass promtool."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_prometheus_rules_are_valid() -> None:
    r = subprocess.run(["promtool", "check", "rules", str(ROOT / "deploy/prometheus/rules.yml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 rules found" in r.stdout

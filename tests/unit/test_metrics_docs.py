"""The metric names the README and docs/ tell operators to chart and alert on are the ones the
service exports, and every exported family is documented (dashboards are built from the docs)."""

from __future__ import annotations

import re
from pathlib import Path

from monitor.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
NAME = re.compile(r"\b(?:deepfake_monitor|process)_[a-z0-9_]*[a-z0-9]\b")


def documented() -> set[str]:
    texts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return {name for path in texts for name in NAME.findall(path.read_text())}


def exported() -> tuple[set[str], set[str]]:
    """Family names, and every sample name a scrape can show (with _total, _bucket ...)."""
    families = {metric.name for metric in Metrics().registry.collect()}
    suffixes = ("", "_total", "_bucket", "_count", "_sum", "_created", "_info")
    return families, {family + suffix for family in families for suffix in suffixes}


def test_every_documented_metric_is_exported() -> None:
    _, samples = exported()
    assert len(documented()) >= 20  # the docs' tables were read
    missing = sorted(documented() - samples)
    assert not missing, f"documented but not exported: {missing}"


def test_every_exported_metric_is_documented() -> None:
    families, _ = exported()
    names = documented()
    undocumented = sorted(f for f in families if not any(n == f or n.startswith(f + "_") for n in names))
    assert not undocumented, f"exported but not in README.md or docs/: {undocumented}"

"""The shipped Grafana dashboard's PromQL, as Grafana would send it to Prometheus."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy/grafana/deepfake-monitor.json"


def load() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expr) for every panel target, annotation and template variable query."""
    found = [(f"panel {p['title']!r} target {t['refId']}", t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]
    found += [(f"annotation {a['name']!r}", a["expr"]) for a in dashboard["annotations"]["list"] if "expr" in a]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            found.append((f"variable {var['name']!r}", var["definition"]))
    return found


def substitute(expr: str, instance: str = ".*", stream: str = ".*", rate_interval: str = "1m", range_: str = "1m") -> str:
    """``expr`` with Grafana's variables filled in as a query for the given selection would have them."""
    return (
        expr.replace("$__rate_interval", rate_interval).replace("$__range", range_)
        .replace("$instance", instance).replace("$stream", stream)
    )


def label_values_to_promql(expr: str) -> str:
    """``label_values(selector, label)`` (Grafana's variable query) as the selector Prometheus runs."""
    inner = expr.removeprefix("label_values(").removesuffix(")")
    selector, _, _label = inner.rpartition(",")
    return selector.strip()

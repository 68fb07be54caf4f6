"""The benchmarks still run: a short run of each fast one, results to a temporary folder.

Their numbers are not checked here (speed lives in benchmarks, not timed tests); this only
keeps `make bench` from breaking silently when the code it measures changes, as it did once
(a latency record became a tuple)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(script: str, *args: str) -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]


def test_pipeline_latency_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "pipeline_latency.json"
    run("pipeline_latency.py", "--seconds", "2", "--clip-seconds", "3", "--out", str(out))
    result = json.loads(out.read_text())
    assert "n" in result["live_720p30"]["frame_to_verdict_ms"] and result["offline"]["scan_speed_x_realtime"] > 0


def test_detector_latency_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "detector_latency"
    run("detector_latency.py", "--seconds", "1", "--repeats", "1", "--out", str(out))
    assert any(out.parent.glob(out.name + "*")), list(tmp_path.iterdir())

"""Detector cost beyond MediaPipe: ms per analysed frame (features + score) on one core, ONNX vs torch.

Run: OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/detector_latency.py [--model-dir DIR]
Faces come from the synthetic demo clip through the service's FaceTracker, so crops and
landmarks are real observations; MediaPipe itself is run before timing and not counted.
Writes benchmarks/results/detector_latency.json and .md. Both backends are timed in the same
run, interleaved, because these machines are shared and noisy: compare the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("GLOG_minloglevel", "2")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import run_info  # noqa: E402

from monitor.config import AnalysisConfig  # noqa: E402
from monitor.detect.temporal import TemporalDetector  # noqa: E402
from monitor.plugins import TrackWindow  # noqa: E402


def observations(seconds: float) -> list:  # type: ignore[type-arg]
    from monitor.faces import FaceTracker
    from monitor.sources.av_source import sample_video
    from monitor.sources.demo_media import write_clip

    with tempfile.TemporaryDirectory() as tmp:
        clip = write_clip(Path(tmp) / "bench.mp4", seconds, fps=10, width=640, height=480)
        tracker = FaceTracker("bench", AnalysisConfig())
        obs = []
        for frame in sample_video(str(clip), 10.0):
            obs.extend(tracker.process(frame, np.ascontiguousarray(frame.rgb())).faces)
        tracker.close()
    return obs


def time_backend(det: TemporalDetector, obs: list, repeats: int) -> dict[str, float]:  # type: ignore[type-arg]
    feat_ms, score_ms = [], []
    for _ in range(repeats):
        window = TrackWindow("bench", 1, det.window_s)
        for o in obs:
            t0 = time.perf_counter()
            f = det.features(o)
            t1 = time.perf_counter()
            window.push(o, f)
            det.score(window)
            t2 = time.perf_counter()
            feat_ms.append((t1 - t0) * 1000)
            score_ms.append((t2 - t1) * 1000)
    f, s = np.array(feat_ms), np.array(score_ms)
    tot = f + s
    return {
        "features_ms_mean": float(f.mean()),
        "score_ms_mean": float(s.mean()),
        "total_ms_mean": float(tot.mean()),
        "total_ms_p50": float(np.percentile(tot, 50)),
        "total_ms_p99": float(np.percentile(tot, 99)),
        "frames": len(tot),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, default=None)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "detector_latency")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    obs = observations(args.seconds)
    dets = {
        b: TemporalDetector(TemporalDetector.Config(model_dir=args.model_dir, backend=b))  # type: ignore[arg-type]
        for b in ("onnx", "torch")
    }
    for det in dets.values():  # warm-up
        time_backend(det, obs[:20], 1)
    results: dict[str, dict[str, float]] = {b: {} for b in dets}
    runs: dict[str, list[dict[str, float]]] = {b: [] for b in dets}
    for _ in range(args.repeats):  # interleaved so both see the same machine load
        for b, det in dets.items():
            runs[b].append(time_backend(det, obs, 1))
    for b in dets:
        results[b] = {k: float(np.median([r[k] for r in runs[b]])) for k in runs[b][0]}
    # The speed-up is a ratio within each run (both backends saw the same load), of medians.
    ratios = [t["total_ms_p50"] / o["total_ms_p50"] for t, o in zip(runs["torch"], runs["onnx"])]
    report = {
        "what": "detector features()+score() per analysed frame, one thread, faces already tracked (MediaPipe not counted)",
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
        **run_info.commit(),
        **run_info.detector("temporal-v1", args.model_dir),
        "observations": len(obs),
        "results": results,
        "onnx_speedup_vs_torch": float(np.median(ratios)),
        "onnx_speedup_per_run": ratios,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Detector latency (temporal-v1)",
        "",
        report["what"] + f"; {len(obs)} observations x {args.repeats} runs, load avg {report['load_avg_1m']:.1f} on {os.cpu_count()} cores.",
        "",
        f"Weights: manifest `{str(report['manifest_sha256'])[:8]}...`, commit `{str(report['commit'])[:8]}`" + (" with uncommitted changes." if report["dirty"] else "."),
        "",
        "| backend | total ms p50 | p99 | mean | features ms (mean) | score ms (mean) |",
        "|---|---|---|---|---|---|",
    ]
    for b, r in results.items():
        lines.append(
            f"| {b} | {r['total_ms_p50']:.3f} | {r['total_ms_p99']:.3f} | {r['total_ms_mean']:.3f} | {r['features_ms_mean']:.3f} | {r['score_ms_mean']:.3f} |"
        )
    lines += [
        "",
        f"ONNX Runtime is {report['onnx_speedup_vs_torch']:.2f}x faster than torch per frame (median over runs of the"
        f" ratio of per-frame medians; runs: {', '.join(f'{r:.2f}' for r in ratios)}).",
        "Each figure is the median over runs of that run's statistic; the features and score split is a mean (cost accounting).",
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

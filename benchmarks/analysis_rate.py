"""How temporal-v1's video scores depend on the analysis rate, with and without window thinning.

Run (about 40 min on this 2-core machine; the 24 clips are short):
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/analysis_rate.py \
        ../shared/data/dev/MANIFEST.tsv --root ../shared/data/dev

The fusion was calibrated on windows analysed at 10 fps: frame-to-frame change and colour
flicker are per analysed frame, and the geometry GRU reads at most 32 frames. The detector thins
a faster window to the rate it was calibrated at (``window_fps``, see
``monitor.detect.temporal.thin_rows``). This scans a fixed, seeded sample of clips with
the service's offline pipeline at 10 fps (the reference), and at 15 and 30 fps with thinning
(the default) and without it (``window_fps`` 60, which never thins at these rates), and
reports the per-clip ratio of each video score to its score at 10 fps: the median and the
10th and 90th percentiles, and the AUC of each run. The ratios compare runs of one
invocation on the same clips. Writes benchmarks/results/analysis_rate.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("GLOG_minloglevel", "2")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monitor.config import load_settings  # noqa: E402
from monitor.training.evaluate import default_workers, evaluate, read_manifest  # noqa: E402

# (name, analysis fps, detector options)
RUNS = [
    ("10 fps (reference)", 10.0, {}),
    ("15 fps, thinned", 15.0, {}),
    ("15 fps, not thinned", 15.0, {"window_fps": 60.0}),
    ("30 fps, thinned", 30.0, {}),
    ("30 fps, not thinned", 30.0, {"window_fps": 60.0}),
]


def sample(rows: list[dict[str, str]], n_genuine: int, n_fake: int, max_s: float, seed: int) -> list[dict[str, str]]:
    """A seeded sample of short clips, genuine and not, in manifest order."""
    short = [r for r in rows if float(r.get("duration_s") or 0) <= max_s or not r.get("duration_s")]
    genuine = [r for r in short if r["label"].strip().lower() == "real"]
    fake = [r for r in short if r["label"].strip().lower() != "real"]
    rng = random.Random(seed)
    chosen = {r["path"] for r in rng.sample(genuine, min(n_genuine, len(genuine))) + rng.sample(fake, min(n_fake, len(fake)))}
    return [r for r in rows if r["path"] in chosen]


def ratios(ref: dict[str, float | None], run: dict[str, float | None]) -> list[float]:
    return [run[p] / ref[p] for p in ref if ref[p] and run.get(p)]  # type: ignore[operator]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest", type=Path)
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--genuine", type=int, default=14)
    ap.add_argument("--fake", type=int, default=10)
    ap.add_argument("--max-seconds", type=float, default=12.0, help="only clips at most this long (the manifest's duration_s)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", type=int, default=default_workers())
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "analysis_rate")
    args = ap.parse_args()

    clips = sample(read_manifest(args.manifest), args.genuine, args.fake, args.max_seconds, args.seed)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="analysis-rate-") as tmp:
        sub = Path(tmp) / "clips.tsv"
        sub.write_text("path\tlabel\tmethod\n" + "".join(f"{r['path']}\t{r['label']}\t{r.get('method', '')}\n" for r in clips))
        for name, fps, options in RUNS:
            settings = load_settings(None, demo=False, analysis={"fps": fps}, detector={"options": options})
            report = evaluate(sub, args.root, settings, workers=args.workers)
            overall = report.overall
            results[name] = {
                "fps": fps,
                "options": options,
                "auc": overall.auc,
                "scores": {c.path: c.score for c in report.clips},
            }
            print(f"{name}: AUC {overall.auc}", flush=True)

    ref = results[RUNS[0][0]]["scores"]
    lines = [
        "# temporal-v1 video scores by analysis rate",
        "",
        f"{len(clips)} data/dev clips ({sum(r['label'].strip().lower() == 'real' for r in clips)} genuine), "
        f"seed {args.seed}, at most {args.max_seconds:g} s each; `benchmarks/analysis_rate.py`.",
        "Ratio: each clip's video score over its score at 10 fps (clips with a score in both runs).",
        "",
        "| run | clips | median ratio | p10 | p90 | AUC |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        rs = ratios(ref, r["scores"])
        r["ratio_median"] = float(np.median(rs)) if rs else None
        r["ratio_p10"], r["ratio_p90"] = (float(v) for v in np.percentile(rs, [10, 90])) if rs else (None, None)
        r["identical_to_reference"] = r["scores"] == ref
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        lines.append(f"| {name} | {len(rs)} | {fmt(r['ratio_median'])} | {fmt(r['ratio_p10'])} | {fmt(r['ratio_p90'])} | {fmt(r['auc'])} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"clips": [r["path"] for r in clips], "runs": results}, indent=2) + "\n")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

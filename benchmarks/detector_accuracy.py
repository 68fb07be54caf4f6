"""Detector accuracy on a labelled manifest, split into the bundle's held-out and training groups.

Run: OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/detector_accuracy.py \
        ../shared/data/dev/MANIFEST.tsv --root ../shared/data/dev [--degrade all] [--model-dir DIR]
``--workers N`` scans N clips at once (default: the CPUs available, at most 8); the results do not
depend on it.
``--from-json benchmarks/results/detector_accuracy.json`` (no manifest needed) rebuilds the
tables from a saved evaluation instead of scanning every clip again.
Evaluates with the service's offline scan (monitor.training.evaluate), then reports the clips of
groups the bundle never saw in training (``holdout_groups`` in its manifest) separately from the
rest: only the held-out rows say anything about generalisation. Writes
benchmarks/results/detector_accuracy[_<degrade>].{json,md}.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("GLOG_minloglevel", "2")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monitor.config import load_settings  # noqa: E402
from monitor.detect.bundle import MODELS_DIR  # noqa: E402
from monitor.detect.temporal import TemporalDetector  # noqa: E402
from monitor.training.datasets import identity_group, read_tsv  # noqa: E402
from monitor.training.evaluate import (  # noqa: E402
    ClipResult,
    default_workers,
    evaluate,
    format_ci,
    format_report,
    metrics,
    summarise,
)


def training_groups(manifest: str, root: Path | None) -> dict[str, str]:
    """Each clip's split group as `monitor train` assigns it: the manifest's `group` column
    where it has one, else ``identity_group`` of the path (empty if the manifest is gone)."""
    path = Path(manifest)
    if not path.is_file():
        return {}
    return {c.rel: c.group for c in read_tsv(path, root)}


def clip_group(c: ClipResult, groups: dict[str, str]) -> str:
    return groups.get(c.path) or identity_group(c.path)


def split_report(clips: list[ClipResult], held: set[str], threshold: float, groups: dict[str, str]) -> list[str]:
    parts = {
        "held-out (never trained on)": [c for c in clips if clip_group(c, groups) in held],
        "training groups (in-sample)": [c for c in clips if clip_group(c, groups) not in held],
    }
    lines = ["| split / set | genuine | fake | AUC | 95% CI | EER | acc@thr | alerts on genuine |", "|---|---|---|---|---|---|---|---|"]
    for name, members in parts.items():
        sets = [("all", members)]
        # The paired folders only: DeepFaceLive's own sample clips are genuine footage, not the
        # originals of these swaps (they made the held-out row 7 swaps against 12 clips).
        live = [c for c in members if c.path.split("/")[0].endswith(("_swap_cropped", "_orig_cropped"))]
        if live:
            sets.append(("live swaps (DeepFaceLive swaps + their own originals)", live))
        by_group: dict[str, list[ClipResult]] = {}
        for c in members:
            by_group.setdefault(c.group, []).append(c)
        genuine_all = [c for c in members if not c.is_fake]
        for g, cs in sorted(by_group.items()):
            if all(c.is_fake for c in cs):
                sets.append((f"{g} (vs all genuine of this split)", cs + genuine_all))
            elif any(c.is_fake for c in cs):
                sets.append((g, cs))
        for label, cs in sets:
            m = metrics(label, cs, threshold)
            alarms = sum(c.alerts_opened for c in cs if not c.is_fake)
            f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
            lines.append(f"| {name}: {label} | {m.n_genuine} | {m.n_fake} | {f(m.auc)} | {format_ci(m.auc_ci95)} | {f(m.eer)} | {f(m.accuracy)} | {alarms} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest", type=Path, nargs="?", help="the manifest to scan (not with --from-json)")
    ap.add_argument("--root", type=Path, default=None)
    ap.add_argument("--degrade", default=None)
    ap.add_argument("--model-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--from-json", type=Path, default=None, help="A saved evaluation (this script's or `monitor evaluate --json`): tables only, no scan; its degradation names the output.")
    ap.add_argument("--workers", type=int, default=default_workers(), help="clips scanned at once, one process each (default: the CPUs available, at most 8)")
    args = ap.parse_args()
    model_dir = args.model_dir or MODELS_DIR / "temporal-v1"
    meta = json.loads((model_dir / "manifest.json").read_text())
    held = set(meta["train_config"]["holdout_groups"])
    saved = json.loads(args.from_json.read_text()) if args.from_json is not None else None
    if saved is None and (args.manifest is None or args.root is None):
        ap.error("give MANIFEST and --root to scan, or --from-json to rebuild the tables")
    degrade = saved["degrade"] if saved is not None else args.degrade
    suffix = f"_{degrade.replace('+', '_')}" if degrade else ""
    out = args.out or ROOT / "benchmarks" / "results" / f"detector_accuracy{suffix}"
    out.parent.mkdir(parents=True, exist_ok=True)
    if saved is not None:
        clips = [ClipResult(**{**c, "reasons": tuple(c["reasons"])}) for c in saved["clips"]]
        report = summarise(saved["manifest"], saved["degrade"], saved["threshold"], clips)
        out.with_suffix(".json").write_text(json.dumps(report.to_json(), indent=2) + "\n")  # the same clips, metrics recomputed
    else:
        settings = load_settings(None, demo=False)
        factory = functools.partial(TemporalDetector, TemporalDetector.Config(model_dir=args.model_dir))  # picklable, for the workers
        report = evaluate(args.manifest, args.root, settings, out.with_suffix(".json"), degrade, detector_factory=factory, workers=args.workers)
    groups = training_groups(report.manifest, args.root)
    held_report = summarise(
        report.manifest, report.degrade, report.threshold, [c for c in report.clips if clip_group(c, groups) in held]
    )
    text = [
        f"# Detector accuracy: {model_dir.name}" + (f", degraded {degrade}" if degrade else ""),
        "",
        f"Held-out groups: {', '.join(sorted(held))}",
        "",
        *split_report(list(report.clips), held, report.threshold, groups),
        "",
        "## Held-out clips only",
        "```",
        format_report(held_report),
        "```",
        "",
        "## Every clip (in-sample rows included: not a measure of generalisation)",
        "```",
        format_report(report),
        "```",
    ]
    out.with_suffix(".md").write_text("\n".join(text) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    main()

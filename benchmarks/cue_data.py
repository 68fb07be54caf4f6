"""Shared by the cue benchmarks (`within_clip_cues.py`, `window_cues.py`, `reblend_reference.py`):
their options, data/dev's faces (from the face cache, extracted first if missing) with a bundle's
manifest, out-of-fold appearance scores, and the clip-level AUC table."""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from monitor.config import AnalysisConfig
from monitor.detect.nets import AppearanceEnsemble
from monitor.training.datasets import read_source
from monitor.training.evaluate import roc_auc
from monitor.training.train import Clip, TrainConfig, load_clips, split_folds

ROOT = Path(__file__).resolve().parents[1]


def cue_args(description: str, result: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "dev")
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp/deepfake-monitor-cache"))
    ap.add_argument("--bundle", type=Path, default=ROOT / "models" / "temporal-v1")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / result)
    return ap.parse_args()


def clips_and_manifest(args: argparse.Namespace) -> tuple[list[Clip], dict]:
    """Every clip of ``args.data`` with its main face track, and the bundle's manifest (its
    hold-out, folds, seed and widths)."""
    torch.set_num_threads(1)
    source = f"tsv:{args.data / 'MANIFEST.tsv'}:{args.data}"
    clips = load_clips(read_source(source), TrainConfig(sources=(source,), cache_dir=args.cache_dir), AnalysisConfig(), progress=False)
    return clips, json.loads((args.bundle / "manifest.json").read_text())


def out_of_fold_scorer(clips: list[Clip], manifest: dict, bundle: Path) -> Callable[[Clip], Callable[[torch.Tensor], np.ndarray]]:
    """For each clip, the bundle's appearance CNN that did not train on it: the bundle's members
    are its cross-fitting fold models, and its own split (groups, folds, seed) says which one
    that is; a held-out clip gets both members' mean, as the service scores it. The returned
    callable maps a batch (N, 3, 112, 112) to logits (N, 1)."""
    train_config = manifest["train_config"]
    held = set(train_config["holdout_groups"])
    folds = split_folds([c for c in clips if c.record.group not in held], manifest["members"], train_config["seed"])
    fold_of = {id(c): k for k, fold in enumerate(folds) for c in fold}
    ens = AppearanceEnsemble(manifest["appearance_width"], manifest["members"])
    ens.load_state_dict(torch.load(bundle / "appearance.pt", weights_only=True))
    ens.eval()

    def scorer(clip: Clip) -> Callable[[torch.Tensor], np.ndarray]:
        k = fold_of.get(id(clip))
        if k is None:
            return lambda x: np.mean([m(x)[0].numpy() for m in ens.members], axis=0)
        return lambda x: ens.members[k](x)[0].numpy()

    return scorer


def cue_row(clip: Clip, data: Path, held: set[str], cues: dict[str, float], **extra: object) -> dict:
    """One clip's result row: where it comes from, its label and pair, and its cues."""
    pair = os.path.relpath(clip.record.pair, data) if clip.record.pair else None
    return {"path": clip.record.rel, "group": clip.record.group, "label": clip.record.label, "held_out": clip.record.group in held, "pair": pair, "cues": cues, **extra}


def _live(r: dict) -> bool:
    return bool(r["group"].startswith("deepfacelive:"))


# The evaluation sets of the cue benchmarks: (is a fake of the set, is a genuine clip of the set).
CUE_SETS: dict[str, tuple[Callable[[dict], bool], Callable[[dict], bool]]] = {
    "live swaps vs originals, all 15 pairs": (lambda r: _live(r) and r["label"] != "real", lambda r: _live(r) and r["label"] == "real"),
    "held-out live swaps vs their originals": (lambda r: _live(r) and r["held_out"] and r["label"] != "real", lambda r: _live(r) and r["held_out"] and r["label"] == "real"),
    "held-out, all": (lambda r: r["held_out"] and r["label"] != "real", lambda r: r["held_out"] and r["label"] == "real"),
    "SadTalker vs held-out genuine": (lambda r: r["group"] == "sadtalker_fake", lambda r: r["held_out"] and r["label"] == "real"),
}


def cue_table(rows: list[dict]) -> dict[str, dict[str, object]]:
    """Per cue (higher = more likely fake): clip-level AUC on each of CUE_SETS, and how many
    live swaps score above their own original (two-sided sign test)."""
    by_path = {r["path"]: r for r in rows}
    table: dict[str, dict[str, object]] = {}
    for name in rows[0]["cues"]:
        entry: dict[str, object] = {}
        for label, (pos, neg) in CUE_SETS.items():
            p = [r["cues"][name] for r in rows if pos(r)]
            n = [r["cues"][name] for r in rows if neg(r)]
            entry[label] = {"auc": roc_auc([True] * len(p) + [False] * len(n), p + n), "fakes": len(p), "genuine": len(n)}
        wins = [r["cues"][name] > by_path[r["pair"]]["cues"][name] for r in rows if _live(r) and r["label"] != "real" and r["pair"] in by_path]
        k, m = sum(wins), len(wins)
        p_two = min(1.0, 2 * sum(math.comb(m, j) for j in range(max(k, m - k), m + 1)) / 2**m) if m else float("nan")
        entry["swap above its own original"] = {"wins": k, "pairs": m, "sign_test_p": p_two}
        table[name] = entry
    return table


def cue_table_lines(table: dict[str, dict[str, object]]) -> list[str]:
    """``cue_table`` as a markdown table, then the clip counts of each set."""
    lines = ["| cue | " + " | ".join(CUE_SETS) + " | swap > own original (sign test p) |", "|---|" + "---|" * (len(CUE_SETS) + 1)]
    for name, entry in table.items():
        cells = [f"{entry[s]['auc']:.3f}" for s in CUE_SETS]  # type: ignore[index]
        w = entry["swap above its own original"]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {w['wins']}/{w['pairs']} ({w['sign_test_p']:.2f}) |")  # type: ignore[index]
    return lines


def cue_counts_line(table: dict[str, dict[str, object]]) -> str:
    counts = {s: table[next(iter(table))][s] for s in CUE_SETS}
    return "Clips: " + "; ".join(f"{s}: {c['fakes']} fake, {c['genuine']} genuine" for s, c in counts.items())  # type: ignore[index]


def write_cue_report(args: argparse.Namespace, manifest: dict, rows: list[dict], title: str, method: list[str], notes: list[str], **extra: object) -> None:
    """Write ``args.out`` .json (``extra`` between the clip count and the table) and .md (title,
    ``method`` lines, the AUC table, ``notes`` lines, clip counts), and print the .md."""
    table = cue_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"bundle_manifest": manifest["name"], "clips": len(rows), **extra, "cues": table, "per_clip": rows}, indent=1))
    lines = [
        f"# {title}",
        "",
        f"Clip-level AUC of each cue (higher = more likely fake) on data/dev, bundle `{manifest['name']}`;",
        *method,
        "",
        *cue_table_lines(table),
        "",
        *notes,
        "",
        cue_counts_line(table),
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

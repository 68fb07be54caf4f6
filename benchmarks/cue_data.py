"""Shared by the cue benchmarks (`within_clip_cues.py`, `window_cues.py`): their options, and
data/dev's faces (from the face cache, extracted first if missing) with a bundle's manifest."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from monitor.config import AnalysisConfig
from monitor.training.datasets import read_source
from monitor.training.train import Clip, TrainConfig, load_clips

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

"""Within-clip cues: does a live swap give itself away when the head turns or moves fast?

Run (faces cached by `monitor train`, otherwise extracted first, ~13 min):
    .venv/bin/python benchmarks/within_clip_cues.py --data ../shared/data/dev --cache-dir /tmp/cache/train

Between-clip differences (scene, camera, identity) swamp every per-clip level this project has
measured. These cues compare a clip with itself, so a scene offset cancels:
- how the shipped appearance CNN's per-frame logit moves with head yaw, pitch and speed
  (a swap model renders turned or fast-moving faces worse than frontal, still ones);
- motion-blur consistency: a real face blurs when the head moves fast, a rendered face may
  stay sharp (slope of inner-face sharpness, alone and relative to a ring around the face,
  against log speed).
Per-frame logits are out of fold: a training clip is scored by the ensemble member that did
not train on it, a dev-v1 held-out clip by both members' mean, as the service does.
Writes benchmarks/results/within_clip_cues.{json,md}.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2
import numpy as np
import torch
from sklearn.linear_model import LinearRegression

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.cue_data import (
    clips_and_manifest,
    cue_args,
    cue_row,
    out_of_fold_scorer,
    write_cue_report,
)
from monitor.faces.quality import head_angles_deg
from monitor.training.synthesis import to_input
from monitor.training.train import Clip

# MediaPipe face-oval landmarks: the hull of the face below the hairline.
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
             152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)


def frame_series(clip: Clip, member: Callable[[torch.Tensor], np.ndarray]) -> dict[str, np.ndarray]:
    f, i = clip.faces, clip.idx
    rng = np.random.default_rng(0)
    x = np.stack([to_input(c, rng, False) for c in f.crops[i]])
    with torch.inference_mode():
        logit = member(torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float())
    lm, t = f.landmarks[i], f.t[i]
    angles = np.array([head_angles_deg(p) for p in lm])
    iod = np.linalg.norm(lm[:, 33, :2] - lm[:, 263, :2], axis=1)
    dt = np.diff(t, prepend=t[0] - 0.1).clip(1e-3)
    speed = np.r_[0.0, np.linalg.norm(np.diff(lm[:, :, :2], axis=0), axis=2).mean(1)] / iod / dt  # inter-ocular distances per second
    inner, ring = [], []
    for crop, cl in zip(f.crops[i], f.crop_landmarks[i]):
        lap = np.abs(cv2.Laplacian(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY).astype(np.float32), cv2.CV_32F))
        hull = np.zeros(lap.shape, np.uint8)
        cv2.fillConvexPoly(hull, cv2.convexHull(cl[list(FACE_OVAL), :2].astype(np.int32)), 1)
        core = cv2.erode(hull, np.ones((9, 9), np.uint8)).astype(bool)
        band = (cv2.dilate(hull, np.ones((21, 21), np.uint8)) - cv2.dilate(hull, np.ones((7, 7), np.uint8))).astype(bool)
        inner.append(lap[core].mean() if core.any() else np.nan)
        ring.append(lap[band].mean() if band.any() else np.nan)
    return {"logit": logit, "yaw": np.abs(angles[:, 0]), "pitch": np.abs(angles[:, 1]), "speed": speed,
            "sharp_in": np.log(np.array(inner) + 1e-3), "sharp_ring": np.log(np.array(ring) + 1e-3)}


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 5 or a[ok].std() < 1e-9 or b[ok].std() < 1e-9:
        return 0.0
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def _slope(y: np.ndarray, x: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 5 or x[ok].std() < 1e-6:
        return 0.0
    return float(np.polyfit(x[ok], y[ok], 1)[0])


def _top_minus_bottom(y: np.ndarray, key: np.ndarray) -> float:
    k = max(1, len(y) // 4)
    order = np.argsort(key)
    return float(y[order[-k:]].mean() - y[order[:k]].mean())


REFERENCE = "logit_mean (reference: the shipped per-frame score)"
RESIDUAL = "logit_mean minus its sharpness fit (fit on training genuine clips)"


def clip_cues(s: dict[str, np.ndarray]) -> dict[str, float]:
    lo, log_speed = s["logit"], np.log(s["speed"] + 0.05)
    rel = s["sharp_in"] - s["sharp_ring"]
    return {
        REFERENCE: float(lo.mean()),
        "corr(logit, abs yaw)": _corr(lo, s["yaw"]),
        "corr(logit, abs pitch)": _corr(lo, s["pitch"]),
        "corr(logit, speed)": _corr(lo, s["speed"]),
        "logit: most turned quarter - most frontal quarter": _top_minus_bottom(lo, s["yaw"]),
        "logit: fastest quarter - stillest quarter": _top_minus_bottom(lo, s["speed"]),
        "slope(face sharpness, log speed)": _slope(s["sharp_in"], log_speed),
        "corr(face sharpness, log speed)": _corr(s["sharp_in"], log_speed),
        "slope(face/ring sharpness, log speed)": _slope(rel, log_speed),
        "corr(face/ring sharpness, log speed)": _corr(rel, log_speed),
    }


def main() -> None:
    args = cue_args(__doc__.splitlines()[0], "within_clip_cues")
    clips, manifest = clips_and_manifest(args)
    held = set(manifest["train_config"]["holdout_groups"])
    scorer = out_of_fold_scorer(clips, manifest, args.bundle)
    rows = []
    for c in clips:
        series = frame_series(c, scorer(c))
        quality = [float(np.nanmedian(series["sharp_in"])), float(np.nanmedian(series["sharp_ring"]))]
        rows.append(cue_row(c, args.data, held, clip_cues(series), quality=quality))
    # Not within-clip, but the same question: how much of the between-clip spread is image
    # quality? Regress the clip's mean logit on its median face and ring sharpness over the
    # training split's genuine clips only, and score clips by what is left.
    fit_rows = [r for r in rows if not r["held_out"] and r["label"] == "real"]
    reg = LinearRegression().fit([r["quality"] for r in fit_rows], [r["cues"][REFERENCE] for r in fit_rows])
    quality_r2 = float(reg.score([r["quality"] for r in fit_rows], [r["cues"][REFERENCE] for r in fit_rows]))
    for r in rows:
        r["cues"][RESIDUAL] = float(r["cues"][REFERENCE] - reg.predict([r["quality"]])[0])
    write_cue_report(
        args, manifest, rows, "Within-clip cues (`benchmarks/within_clip_cues.py`)",
        ["per-frame logits out of fold. Generated by the script; interpretation in models/temporal-v1.md."],
        [f"Sharpness fit: R² {quality_r2:.3f} over {len(fit_rows)} training genuine clips (median log Laplacian of the face and of a ring around it)."],
        sharpness_fit_r2=quality_r2,
    )


if __name__ == "__main__":
    main()

"""What each fusion cue sees on the held-out split: genuine clips, SadTalker, live swaps, and
animated stills made from the held-out genuine clips (the talking-head proxy of
`monitor train --animated-stills`).

Run (faces cached by `monitor train`, otherwise extracted first, ~13 min):
    .venv/bin/python benchmarks/window_cues.py --data ../shared/data/dev --cache-dir /tmp/cache/train

For every clip the bundle held out (dev-v1 for temporal-v1), the service's 8 s windows (one every 0.5 s) are computed with a
bundle's nets, exactly as training computes the fusion's inputs, and averaged per clip. The
table gives each set's mean and standard deviation per cue, and the clip AUC of SadTalker and
of the stills against the held-out genuine clips (above 0.5: the cue is higher on them).
Writes benchmarks/results/window_cues.{json,md}.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.cue_data import clips_and_manifest, cue_args
from monitor.detect.features import GEOMETRY_DIM
from monitor.detect.nets import AppearanceEnsemble, GeometryEnsemble
from monitor.detect.temporal import FEATURE_NAMES
from monitor.training import synthesis as syn
from monitor.training.evaluate import roc_auc
from monitor.training.train import clip_cues, clip_windows, torch_app, torch_geo

WINDOW_S = 8.0  # as monitor train's fusion windows


def main() -> None:
    args = cue_args(__doc__.splitlines()[0], "window_cues")
    clips, manifest = clips_and_manifest(args)
    app = AppearanceEnsemble(manifest["appearance_width"], manifest["members"])
    app.load_state_dict(torch.load(args.bundle / "appearance.pt", weights_only=True))
    geo = GeometryEnsemble(GEOMETRY_DIM, manifest["members"])
    geo.load_state_dict(torch.load(args.bundle / "geometry.pt", weights_only=True))
    app.eval()
    geo.eval()
    run_app, run_geo = torch_app(app), torch_geo(geo)
    held = set(manifest["train_config"]["holdout_groups"])  # the bundle's own hold-out
    sets: dict[str, list[list[float]]] = {"held-out genuine": [], "SadTalker": [], "held-out live swaps": [], "animated stills of held-out genuine": []}
    rng = np.random.default_rng(0)
    for c in clips:
        if c.record.group not in held:
            continue
        f, i = c.faces, c.idx
        w = clip_windows(clip_cues(f.crops[i], f.landmarks[i], f.t[i], run_app), run_geo, WINDOW_S)
        if len(w) == 0:
            continue
        if c.record.group == "sadtalker_fake":
            sets["SadTalker"].append(w.mean(0).tolist())
        elif c.record.group.startswith("deepfacelive:") and c.record.is_fake:
            sets["held-out live swaps"].append(w.mean(0).tolist())
        elif not c.record.is_fake:
            sets["held-out genuine"].append(w.mean(0).tolist())
            frames = syn.animate_still(list(f.crops[i]), list(f.crop_landmarks[i]), rng)
            ws = clip_windows(clip_cues(np.stack(frames), f.landmarks[i], f.t[i], run_app), run_geo, WINDOW_S)
            if len(ws):
                sets["animated stills of held-out genuine"].append(ws.mean(0).tolist())
    genuine = np.array(sets["held-out genuine"])
    table = {}
    for j, name in enumerate(FEATURE_NAMES):
        entry: dict[str, object] = {}
        for label, rows in sets.items():
            v = np.array(rows)[:, j]
            entry[label] = {"mean": float(v.mean()), "std": float(v.std())}
        for label in ("SadTalker", "animated stills of held-out genuine"):
            v = list(np.array(sets[label])[:, j])
            entry[f"AUC {label} vs held-out genuine"] = roc_auc([True] * len(v) + [False] * len(genuine), v + list(genuine[:, j]))
        table[name] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"bundle": manifest["name"], "clips": {k: len(v) for k, v in sets.items()}, "cues": table}, indent=1))
    head = [*sets, "AUC SadTalker vs genuine", "AUC stills vs genuine"]
    lines = [
        "# Fusion cues on the held-out split (`benchmarks/window_cues.py`)",
        "",
        f"Per-clip mean of the 8 s windows, bundle `{manifest['name']}`; mean ± std over clips per set "
        + ", ".join(f"{k}: {len(v)} clips" for k, v in sets.items()) + ".",
        "",
        "| cue | " + " | ".join(head) + " |",
        "|---|" + "---|" * len(head),
    ]
    for name, entry in table.items():
        cells = [f"{entry[s]['mean']:.3f} ± {entry[s]['std']:.2f}" for s in sets]  # type: ignore[index]
        cells += [f"{entry['AUC SadTalker vs held-out genuine']:.3f}", f"{entry['AUC animated stills of held-out genuine vs held-out genuine']:.3f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

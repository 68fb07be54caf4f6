"""Calibrate the training channel's video codecs against real call-quality re-encodes.

Run (about 5 min on this 2-core machine):
    .venv/bin/python benchmarks/channel_calibration.py --data ../shared/data/dev

Training degrades a 112 px face crop directly (`synthesis.apply_channel`), while a call codes the
whole frame. This measures what a call does to the crop the detector reads, and which fixed
quantisers give the crop the same loss (luma PSNR). Clips: the genuine data/dev clips of training groups
(dev-v1) that are at least 640x360. Each is scaled to 360p and written three times with H.264:
near-lossless (20 Mbit/s, the reference), 1.5 Mbit/s and 300 kbit/s (`monitor.training.degrade`).
Faces are found in the reference (10 fps, the service's quality gate) and cut from all three
copies with the same alignment, so only the codec differs. PSNR of the 112 px net input is
compared with every third of the same reference crops coded by `synthesis.codec_roundtrip` at
each quantiser (as an inter frame predicted from a copy moved by (2, 1) px; motion compensation
carries most of the key frame's loss into it, and x264 codes that key frame about 3 QP finer
than the quantiser named). Writes benchmarks/results/channel_calibration.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monitor.config import AnalysisConfig
from monitor.faces.align import alignment_matrix, warp_face
from monitor.sources.av_source import sample_video
from monitor.training.degrade import Degradation, degrade_clip
from monitor.training.extract import STORE_SIZE, extract_clip
from monitor.training.synthesis import codec_roundtrip, to_input

# Training groups of dev-v1 with clips of at least 640x360 (the held-out groups are not used).
CLIPS = [
    "liveportrait_real/s32.mp4", "liveportrait_real/s18.mp4", "liveportrait_real/d13.mp4", "liveportrait_real/s29.mp4",
    "ghost_inputs_real/nggyup.mp4", "ghost_inputs_real/dirtydancing.mp4", "ghost_inputs_real/obama_short.mp4",
    "ayhm23_pair/real.mp4", "liveness_ashish/real3.mp4", "liveness_ashish/real4.mp4", "rope_target_real/rope_target-1080p.mp4",
]
BITRATES = {"1.5 Mbit/s": 1_500_000, "300 kbit/s": 300_000}
QUANTISERS = {"h264": list(range(0, 43, 2)), "vp8": list(range(0, 64, 4))}
SECONDS = 6.0
MOTION = (2, 1)


def frames_by_time(path: Path, fps: float) -> dict[float, np.ndarray]:
    return {round(f.pts_s, 3): np.ascontiguousarray(f.rgb()) for f in sample_video(str(path), fps, max_duration_s=SECONDS)}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Luma PSNR. The real copies share the reference's 4:2:0 colour, while the simulation
    subsamples colour again on the crop; luma compares the codecs' losses alike."""
    return float(cv2.PSNR(cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), cv2.cvtColor(b, cv2.COLOR_RGB2GRAY)))


def stats(v: list[float]) -> dict[str, float]:
    a = np.array(v)
    return {"n": len(a), "p10": float(np.percentile(a, 10)), "p25": float(np.percentile(a, 25)), "median": float(np.median(a)), "p75": float(np.percentile(a, 75)), "p90": float(np.percentile(a, 90))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "dev")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "channel_calibration")
    args = ap.parse_args()
    analysis = AnalysisConfig()
    rng = np.random.default_rng(0)  # to_input without jitter draws nothing
    call: dict[str, list[float]] = {k: [] for k in BITRATES}
    refs: list[np.ndarray] = []
    per_clip = []
    with tempfile.TemporaryDirectory() as tmp:
        for rel in CLIPS:
            src = args.data / rel
            ref = degrade_clip(src, Path(tmp) / "ref.mp4", Degradation(20_000_000, 360))
            faces = extract_clip(ref, analysis, max_duration_s=SECONDS)
            ref_frames = frames_by_time(ref, analysis.fps)
            crops = {}
            for label, bitrate in BITRATES.items():
                copy = frames_by_time(degrade_clip(src, Path(tmp) / "copy.mp4", Degradation(bitrate, 360)), analysis.fps)
                values = []
                for t, lm in zip(faces.t, faces.landmarks):
                    key = round(float(t), 3)
                    if key not in copy or key not in ref_frames:
                        continue
                    m = alignment_matrix(lm, STORE_SIZE)
                    a = to_input(np.asarray(warp_face(ref_frames[key], m, STORE_SIZE)), rng, False)
                    b = to_input(np.asarray(warp_face(copy[key], m, STORE_SIZE)), rng, False)
                    crops[key] = a
                    values.append(psnr(a, b))
                call[label] += values
                per_clip.append({"clip": rel, "copy": label, "faces": len(values), "median_psnr": float(np.median(values)) if values else None})
            refs += list(crops.values())
    sim = {codec: {q: stats([psnr(r, codec_roundtrip(r, codec, q, MOTION)) for r in refs[::3]]) for q in qs} for codec, qs in QUANTISERS.items()}
    target = {k: stats(v) for k, v in call.items()}
    # The training range: from the worst tenth of faces at 300 kbit/s to a typical face at 1.5 Mbit/s.
    worst, best = target["300 kbit/s"]["p10"], target["1.5 Mbit/s"]["median"]
    chosen = {codec: [q for q, s in table.items() if worst <= s["median"] <= best] for codec, table in sim.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"clips": CLIPS, "seconds": SECONDS, "call": target, "simulated": sim, "range_db": [worst, best], "quantisers_in_range": chosen, "per_clip": per_clip}, indent=1))
    lines = [
        "# Channel calibration (`benchmarks/channel_calibration.py`)",
        "",
        f"Luma PSNR (dB) of the 112 px net input against a near-lossless 360p reference; {len(CLIPS)} genuine clips of",
        f"dev-v1 training groups, first {SECONDS:g} s, faces at 10 fps. Generated by the script.",
        "",
        "| real call, 360p H.264 | faces | p10 | p25 | median | p75 | p90 |",
        "|---|---|---|---|---|---|---|",
        *[f"| {k} | {s['n']} | {s['p10']:.1f} | {s['p25']:.1f} | {s['median']:.1f} | {s['p75']:.1f} | {s['p90']:.1f} |" for k, s in target.items()],
        "",
        f"| simulated on the crop (inter frame after a {MOTION} px move) | faces | p10 | p25 | median | p75 | p90 |",
        "|---|---|---|---|---|---|---|",
        *[f"| {codec} quantiser {q} | {s['n']} | {s['p10']:.1f} | {s['p25']:.1f} | {s['median']:.1f} | {s['p75']:.1f} | {s['p90']:.1f} |" for codec, table in sim.items() for q, s in table.items()],
        "",
        "Quantisers whose median lies between the 300 kbit/s p10 and the 1.5 Mbit/s median: "
        + "; ".join(f"{codec} {qs[0]}-{qs[-1]}" if qs else f"{codec} none" for codec, qs in chosen.items()) + ".",
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

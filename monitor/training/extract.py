"""Per-clip face extraction for training: the service's own sampler and FaceTracker, cached as .npz."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monitor.config import AnalysisConfig
from monitor.faces.align import alignment_matrix, warp_face
from monitor.pipeline.analyzer import quality_reasons

logger = logging.getLogger(__name__)

# Faces are stored at this side with the service's crop framing; self-blending happens here,
# above the 112 px the net reads, and the result is downscaled like the run-time crop.
STORE_SIZE = 160
# 2: frames are shown as their display matrix says (portrait phone video was read lying down).
CACHE_VERSION = "2"


@dataclass(frozen=True, eq=False)
class FaceClip:
    """Every usable face observation of one clip, in stream order (all tracks)."""

    t: np.ndarray  # (N,) stream time
    track: np.ndarray  # (N,) track id
    landmarks: np.ndarray  # (N, 478, 3) image pixels
    crops: np.ndarray  # (N, STORE_SIZE, STORE_SIZE, 3) uint8, aligned like monitor.faces
    crop_landmarks: np.ndarray  # (N, 478, 3) in crop pixels
    duration_s: float

    def __len__(self) -> int:
        return len(self.t)

    def main_track(self) -> np.ndarray:
        """Indices of the longest track (the face a training sample is taken from)."""
        if len(self.t) == 0:
            return np.zeros(0, np.int64)
        ids, counts = np.unique(self.track, return_counts=True)
        return np.flatnonzero(self.track == ids[counts.argmax()])


def cache_key(path: Path, analysis: AnalysisConfig) -> str:
    st = path.stat()
    raw = f"{CACHE_VERSION}|{path.resolve()}|{st.st_size}|{int(st.st_mtime)}|{analysis.model_dump_json()}"
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def extract_clip(path: Path, analysis: AnalysisConfig, max_duration_s: float | None = None) -> FaceClip:
    """Decode ``path`` at ``analysis.fps`` and keep each face that passes the service's quality gate."""
    from monitor.faces import FaceTracker
    from monitor.sources.av_source import sample_video

    tracker = FaceTracker("train", analysis)
    ts: list[float] = []
    tracks: list[int] = []
    lms: list[np.ndarray] = []
    crops: list[np.ndarray] = []
    clms: list[np.ndarray] = []
    last_t = 0.0
    try:
        for frame in sample_video(str(path), analysis.fps, max_duration_s=max_duration_s):
            rgb = np.ascontiguousarray(frame.rgb())
            last_t = frame.pts_s
            for obs in tracker.process(frame, rgb).faces:
                if quality_reasons(obs.quality, analysis):
                    continue
                m = alignment_matrix(obs.landmarks, STORE_SIZE)
                lm = obs.landmarks.astype(np.float64)
                clm = np.concatenate([lm[:, :2] @ m[:, :2].T + m[:, 2], lm[:, 2:] * np.hypot(m[0, 0], m[1, 0])], axis=1)
                ts.append(obs.t)
                tracks.append(obs.track_id)
                lms.append(obs.landmarks)
                crops.append(np.array(warp_face(rgb, m, STORE_SIZE)))
                clms.append(clm.astype(np.float32))
    finally:
        tracker.close()
    n = len(ts)
    return FaceClip(
        t=np.array(ts, np.float32),
        track=np.array(tracks, np.int32),
        landmarks=np.array(lms, np.float32).reshape(n, 478, 3),
        crops=np.array(crops, np.uint8).reshape(n, STORE_SIZE, STORE_SIZE, 3),
        crop_landmarks=np.array(clms, np.float32).reshape(n, 478, 3),
        duration_s=float(last_t),
    )


def cache_file(path: Path, analysis: AnalysisConfig, cache_dir: Path, max_duration_s: float | None = None) -> Path:
    return cache_dir / f"{cache_key(path, analysis)}-{max_duration_s}.npz"


def load_or_extract(path: Path, analysis: AnalysisConfig, cache_dir: Path, max_duration_s: float | None = None) -> FaceClip:
    """The clip's faces from ``cache_dir`` (never inside the repository), extracting once."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    file = cache_file(path, analysis, cache_dir, max_duration_s)
    if file.is_file():
        d = np.load(file)
        return FaceClip(d["t"], d["track"], d["landmarks"], d["crops"], d["crop_landmarks"], float(d["duration_s"]))
    clip = extract_clip(path, analysis, max_duration_s)
    tmp = file.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(
        tmp, t=clip.t, track=clip.track, landmarks=clip.landmarks, crops=clip.crops,
        crop_landmarks=clip.crop_landmarks, duration_s=np.float32(clip.duration_s),
    )
    tmp.replace(file)  # atomic: a killed run never leaves a truncated cache entry
    return clip


def _extract_into_cache(path: Path, analysis: AnalysisConfig, cache_dir: Path, max_duration_s: float | None) -> int:
    os.environ.setdefault("GLOG_minloglevel", "2")
    return len(load_or_extract(path, analysis, cache_dir, max_duration_s))


def prefetch(
    paths: Sequence[Path],
    analysis: AnalysisConfig,
    cache_dir: Path,
    max_duration_s: float | None = None,
    workers: int = 1,
    progress: bool = True,
) -> dict[Path, str]:
    """Extract every clip of ``paths`` not yet in ``cache_dir``, in ``workers`` processes.

    Extraction is per clip and the cache is keyed by clip, so the faces (and the weights trained
    on them) are the same as extracting one clip after another. Returns the clips that failed,
    with the reason; callers then meet them again when they load the cache and skip them as they
    always did. If a worker dies (a native crash in a decoder or in MediaPipe), the remaining
    clips are left to the caller's in-process extraction."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    from tqdm import tqdm

    missing = [p for p in dict.fromkeys(paths) if p.is_file() and not cache_file(p, analysis, cache_dir, max_duration_s).is_file()]
    if workers < 2 or len(missing) < 2:
        return {}
    cache_dir.mkdir(parents=True, exist_ok=True)
    failed: dict[Path, str] = {}
    ctx = multiprocessing.get_context("spawn")  # MediaPipe's threads do not survive fork
    try:
        pool = ProcessPoolExecutor(min(workers, len(missing)), mp_context=ctx)
        futures = {pool.submit(_extract_into_cache, p, analysis, cache_dir, max_duration_s): p for p in missing}
    except (OSError, NotImplementedError) as exc:  # no processes here (a sandbox, no /dev/shm)
        logger.warning("cannot start face extraction workers (%s): extracting in this process", exc)
        return {}
    with pool, tqdm(total=len(missing), desc=f"faces ({workers} workers)", unit="clip", disable=not progress) as bar:
        try:
            for fut in as_completed(futures):
                try:
                    fut.result()
                except BrokenProcessPool:
                    logger.warning("a face extraction worker died; the remaining clips are extracted in this process")
                    break
                except Exception as exc:  # one unreadable clip must not end the others
                    failed[futures[fut]] = f"{type(exc).__name__}: {exc}"
                bar.update()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return failed

"""The default detector ``temporal-v1``: appearance CNN per frame, geometry GRU and physiology per window, logistic fusion."""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from monitor.detect.bundle import APPEARANCE_INPUT, MODELS_DIR, Bundle, Fusion, load_bundle
from monitor.detect.features import colour_vector, geometry_vector, physio_stats
from monitor.errors import ConfigError
from monitor.plugins import TrackWindow
from monitor.types import FaceObservation, Score, Signal

logger = logging.getLogger(__name__)

# sha256 of models/<name>/manifest.json for the bundles shipped in this repository; a bundle
# that is not listed here is verified against its own manifest only.
SHIPPED_MANIFESTS: dict[str, str] = {
    "temporal-v1": "3a9bab8929433c728176c0307030ac54d2c3c70d4dd76416da851a136daaaffc",
}


def shipped_pin(directory: Path) -> str | None:
    """The pinned manifest of the shipped bundle whose folder ``directory`` is, however it is
    reached: models/<name>, a model_dir path to it, a link, or another case of the name on a
    case-insensitive filesystem (macOS, Windows). None for any other folder."""
    for name, sha in SHIPPED_MANIFESTS.items():
        try:
            if os.path.samefile(directory, MODELS_DIR / name):
                return sha
        except OSError:  # either folder missing: load_bundle says which
            continue
    return None


# Windows whose slow cues one detector keeps between refreshes. Above the live tracks it scores,
# every score recomputed them all (the service builds a detector per stream, at most 16 faces
# each; 64 streams x 16 is 1,024 should one detector ever serve them all).
CACHE_WINDOWS = 1024

FEATURE_NAMES: tuple[str, ...] = (
    "app_mean", "app_std", "app_flicker", "geo_logit",
    "pulse_coherence", "pulse_snr", "blink_rate", "ear_cv", "colour_flicker",
)
FEATURE_BRANCH: tuple[str, ...] = (
    "appearance", "appearance", "appearance", "geometry",
    "physiology", "physiology", "physiology", "physiology", "physiology",
)


@dataclass(frozen=True, eq=False)
class FrameCues:
    """What ``features`` keeps of one observation: everything ``score`` needs, nothing more."""

    t: float
    app_logit: float
    geometry: np.ndarray  # (GEOMETRY_DIM,)
    colour: np.ndarray  # (15,)


@dataclass(frozen=True)
class WindowSpec:
    """How much history each branch reads, in seconds of stream time."""

    appearance_s: float = 3.0
    geometry_s: float = 3.0
    geometry_max_frames: int = 32


def window_features(
    rows: Sequence[FrameCues], geometry: Callable[[np.ndarray], float], spec: WindowSpec
) -> np.ndarray:
    """The fusion input (``FEATURE_NAMES`` order) for a window of at least two rows.

    Shared by the detector and by training, so the fusion is fitted on exactly what it scores.
    """
    t = np.array([r.t for r in rows])
    end = t[-1]
    geo_rows = [r for r, ti in zip(rows, t) if end - ti <= spec.geometry_s][-spec.geometry_max_frames :]
    geo_logit = geometry(np.stack([r.geometry for r in geo_rows])) if len(geo_rows) >= 4 else 0.0
    phys = physio_stats(t, np.stack([r.colour for r in rows]), np.stack([r.geometry for r in rows]))
    return np.array(
        [
            *appearance_features(rows, spec), geo_logit,
            phys.pulse_coherence, phys.pulse_snr, phys.blink_rate, phys.ear_cv, phys.colour_flicker,
        ]
    )


def appearance_features(rows: Sequence[FrameCues], spec: WindowSpec) -> tuple[float, float, float]:
    """Mean, spread and mean frame-to-frame change of the appearance logits of the last
    ``spec.appearance_s`` seconds: the cheap part of the window, updated on every frame."""
    end = rows[-1].t
    logits = np.array([r.app_logit for r in rows if end - r.t <= spec.appearance_s], np.float64)
    flicker = float(np.abs(np.diff(logits)).mean()) if len(logits) > 1 else 0.0
    return float(logits.mean()), float(logits.std()), flicker


MAX_STEP_S = 0.5  # a longer step between usable rows is a gap (face unreadable), not a rate
# A face unreadable this long (or for appearance_s, if longer) warms up again when it is back.
# Above the step of any rate the service supports (it warns below 2 fps; 0.5 fps is 2 s).
MIN_GAP_S = 2.0


def since_gap(rows: Sequence[FrameCues], gap_s: float) -> Sequence[FrameCues]:
    """The rows after the last gap longer than ``gap_s`` (all of them when there is none): a
    face back after a gap is judged on what came since, not on a pulse or a landmark motion
    interpolated across seconds it was not seen."""
    for i in range(len(rows) - 1, 0, -1):
        if rows[i].t - rows[i - 1].t > gap_s:
            return rows[i:]
    return rows


def window_gap_s(appearance_s: float) -> float:
    """The gap after which a face warms up again: never the normal step of a slow rate."""
    return max(appearance_s, MIN_GAP_S)


def thin_rows(rows: Sequence[FrameCues], fps: float) -> Sequence[FrameCues]:
    """``rows`` at about ``fps`` when they come markedly faster, else as they are.

    The fusion's inputs depend on the rate: frame-to-frame change and colour flicker are per
    analysed frame, and the geometry GRU reads a fixed number of frames. At 30 fps the scores
    of the 10 fps calibration came out about a quarter lower. Thinning keeps the newest row of
    each 1/``fps`` slot of stream time (slots fixed in stream time, so the rows kept do not
    shift as the window slides, and the newest row is always kept). Rows at about ``fps`` or
    slower on average are left untouched, however unevenly spaced (10 fps taken from a 15 fps
    source alternates 67 and 133 ms: training saw exactly that).
    """
    if len(rows) < 3:
        return rows
    t = np.fromiter((r.t for r in rows), np.float64, len(rows))
    # The mean spacing (it alternates when rates do not divide), over the steps between
    # consecutive usable rows only: a face unreadable for seconds must not pass for a slow rate.
    steps = np.diff(t)
    steps = steps[steps <= MAX_STEP_S]
    if not len(steps) or float(steps.mean()) >= 0.75 / fps:
        return rows
    slot = np.floor(t * fps)
    keep = np.append(slot[1:] != slot[:-1], True)
    return [r for r, k in zip(rows, keep) if k]


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, x))))


def prepare_crop(crop: np.ndarray) -> np.ndarray:
    """The CNN's input from an aligned crop of any side (the service's default is already 112)."""
    if crop.shape[0] != APPEARANCE_INPUT:
        crop = cv2.resize(crop, (APPEARANCE_INPUT, APPEARANCE_INPUT), interpolation=cv2.INTER_AREA)
    return crop


class TemporalDetector:
    """Scores a face track from its last seconds: see docs/detector.md and models/temporal-v1.md."""

    name: ClassVar[str] = "temporal-v1"

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

        model: str = Field("temporal-v1", description="Weight bundle under models/: the name of a folder with manifest.json (for a path, use model_dir).")
        model_dir: Path | None = Field(None, description="Load the bundle from this folder instead of models/<model>. Not pinned unless manifest_sha256 is set, except a shipped bundle's own folder, which keeps its pin however it is reached.")
        manifest_sha256: str | None = Field(None, description="Pin the bundle's manifest.json to this sha256 (shipped bundles are pinned already).")
        backend: Literal["onnx", "torch"] = Field("onnx", description="Inference engine: ONNX Runtime (faster) or the torch reference path (needs the `train` extra).")
        window_s: float = Field(8.0, gt=1, le=30, description="Seconds of track history kept; pulse and blink statistics read all of it.")
        appearance_s: float = Field(3.0, gt=0, le=30, description="Seconds of appearance logits pooled (mean, spread, flicker).")
        geometry_s: float = Field(3.0, gt=0, le=30, description="Seconds of landmark sequence read by the geometry GRU.")
        min_observations: int = Field(5, ge=2, description="Below this many usable observations the window is `window_too_short`.")
        min_span_s: float = Field(0.4, ge=0, description="Below this span of usable observations the window is `window_too_short`.")
        refresh_s: float = Field(0.45, ge=0, description="The window-level branches (geometry, physiology) are recomputed at most this often per track; appearance pooling is updated on every frame.")
        window_fps: float = Field(10.0, gt=0, le=60, description="The frame rate the bundle's window features were calibrated at (training samples at analysis.fps 10). A window analysed markedly faster (about 4/3 of it and up) is thinned to it before scoring, so a higher analysis.fps shifts the scores little (median over 23 data/dev clips: 3% lower at 30 fps, unchanged at 15; 8 clips in 10 within 16% either way, the farthest 32% lower; benchmarks/results/analysis_rate.md); a slower one cannot be corrected.")

        @field_validator("model")
        @classmethod
        def _a_folder_name(cls, model: str) -> str:
            # A name, not a path ("../elsewhere"); a path goes in model_dir.
            if model in ("", ".", "..") or "/" in model or "\\" in model or model != model.strip():
                raise ValueError(f"{model!r} is not a folder name under models/ (a path goes in model_dir)")
            return model

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or self.Config()
        self.window_s = self.config.window_s
        directory = self.config.model_dir or (MODELS_DIR / self.config.model)
        pin = self.config.manifest_sha256 or shipped_pin(Path(directory))
        self.bundle: Bundle = load_bundle(Path(directory), self.config.backend, pin)
        self.fusion: Fusion = self.bundle.fusion
        if self.fusion.names != FEATURE_NAMES:
            raise ConfigError(f"detector weights in {directory} fuse {self.fusion.names}; this detector computes {FEATURE_NAMES}")
        self.spec = WindowSpec(self.config.appearance_s, self.config.geometry_s)
        self._cache: dict[tuple[int, str, int, float], tuple[float, np.ndarray]] = {}
        self._lock = threading.Lock()

    def features(self, obs: FaceObservation) -> FrameCues | None:
        if obs.crop is None:
            return None
        geometry = geometry_vector(obs.landmarks)
        if not np.isfinite(geometry).all():
            # A NaN landmark or a degenerate mesh would poison 3 s of the geometry GRU's input
            # (torch and ONNX even disagree on NaN): the frame adds nothing to the window.
            return None
        crop = prepare_crop(obs.crop)
        logit = float(self.bundle.appearance(crop[None])[0])
        return FrameCues(obs.t, logit, geometry, colour_vector(crop))

    def score(self, window: TrackWindow) -> Score:
        # Only the rows since the face was last unreadable for longer than the appearance pool
        # count, for the warm-up and for every feature: a face back after 3.5 s was otherwise
        # judged on its first frame (a pool of one row, weighing about 6 times as much), and its
        # pulse, blinks and landmark motion on signal interpolated across the gap.
        rows = since_gap(thin_rows([f for f in window.features if f is not None], self.config.window_fps), window_gap_s(self.config.appearance_s))
        if len(rows) < self.config.min_observations or rows[-1].t - rows[0].t < self.config.min_span_s:
            return Score(None, reasons=("window_too_short",))
        # Keyed by the window object and its first time: track ids restart with every stream.
        key = (id(window), window.stream_id, window.track_id, window.first_t or 0.0)
        with self._lock:
            cached = self._cache.get(key)
        # Not across a gap: a window that starts after the cached one ended is a face warming
        # up again, and the cached cues are from before the gap (refresh_s may exceed it).
        if cached is not None and 0 <= rows[-1].t - cached[0] < self.config.refresh_s and rows[0].t <= cached[0]:
            # Geometry and physiology move slowly: reuse them, refresh the appearance pooling.
            x = cached[1].copy()
            x[:3] = appearance_features(rows, self.spec)
        else:
            x = window_features(rows, self.bundle.geometry, self.spec)
            with self._lock:
                self._cache.pop(key, None)  # re-inserted last: evicted by its last refresh, not its first
                self._cache[key] = (rows[-1].t, x)
                if len(self._cache) > CACHE_WINDOWS:
                    self._cache.pop(next(iter(self._cache)))
        return self.fuse(x)

    def fuse(self, x: np.ndarray) -> Score:
        if not np.isfinite(x).all():
            # Never a probability: sigmoid's clamp would turn NaN into 1.0, an alert from nothing.
            return Score(None, reasons=("invalid_features",))
        terms = self.fusion.terms(x)
        logit = self.fusion.intercept + float(terms.sum())
        if not math.isfinite(logit):  # min(60, nan) is 60: a NaN logit read as probability 1.0
            return Score(None, reasons=("invalid_features",))
        probability = sigmoid(logit)
        total = float(np.abs(terms).sum()) or 1.0
        signals = []
        for branch in ("appearance", "geometry", "physiology"):
            idx = [i for i, b in enumerate(self.fusion.branch) if b == branch]
            own = {"appearance": x[0], "geometry": x[3]}.get(branch, float(terms[idx].sum()))
            signals.append(Signal(branch, round(sigmoid(float(own)), 4), round(float(np.abs(terms[idx]).sum()) / total, 4)))
        return Score(round(probability, 5), tuple(signals))

"""The landmark baseline detector: temporal landmark statistics and a fitted logistic, no learned net.

It is a baseline, kept honest: DETECTOR.md measured such statistics at about chance on live face
swaps, and models/baseline-landmarks.md gives its numbers on data/dev. What it computes over a
track's window (stream-time order, one row per usable observation):

- ``inner_jitter``: inner-face landmarks (eyes, brows, nose, lips) expressed in a frame fixed by
  the upper face contour, then the RMS of each point's deviation from the midpoint of its
  neighbours in time (second difference / 2), median over points, log10. A pasted inner face that
  wobbles against the head raises it.
- ``inner_hf_ratio``: energy of the second difference over energy of the first difference of the
  same inner points: ~3 for white-noise jitter, near 0 for smooth motion.
- ``inner_vs_contour``: log10 of inner over contour jitter, both in image coordinates scaled by
  face size: real inner faces move with the head.
- ``mouth_jaw_corr``: Pearson correlation of mouth opening and nose-to-chin distance; a real jaw
  drops when the mouth opens.
- ``eye_cv``: coefficient of variation of the eye aspect ratio (blinks and eye motion).
- ``head_speed``: log10 of the median per-step motion of the contour centre in face sizes; context
  for the others, since landmark noise grows with motion.

The six values are standardised and combined by a logistic whose constants were fitted on the
TRAIN split of data/dev by ``benchmarks/baseline_accuracy.py fit`` (see the constants below).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from monitor.plugins import TrackWindow
from monitor.types import FaceObservation, Score, Signal

logger = logging.getLogger(__name__)

# Upper face contour (forehead, temples, cheeks): moves with the skull, not with the jaw.
CONTOUR = np.array([10, 338, 297, 332, 284, 251, 389, 356, 454, 234, 127, 162, 21, 54, 103, 67, 109])
# Inner face: eye corners and lids, brows, nose, lips, irises.
INNER = np.array(
    [33, 133, 159, 145, 362, 263, 386, 374, 70, 105, 107, 336, 334, 300, 1, 4, 5, 195,
     61, 291, 0, 17, 13, 14, 78, 308, 468, 473]
)
# Eye aspect ratio points: corner, two upper lid, corner, two lower lid (per eye).
EYE_R = (33, 160, 158, 133, 153, 144)
EYE_L = (362, 385, 387, 263, 373, 380)
FOREHEAD, CHIN, NOSE_TIP, LIP_UP, LIP_LOW, CHEEK_L, CHEEK_R = 10, 152, 1, 13, 14, 234, 454

FEATURE_NAMES: tuple[str, ...] = (
    "inner_jitter",
    "inner_hf_ratio",
    "inner_vs_contour",
    "mouth_jaw_corr",
    "eye_cv",
    "head_speed",
)
_EPS = 1e-4

# Fitted by:
#   OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/baseline_accuracy.py fit
# (logistic regression, C=0.1, clip- and class-balanced weights, windows every 0.5 s of the
# TRAIN split of data/dev sampled at 10 fps; see models/baseline-landmarks.md).
# Output of that command (1287 windows from 79 real + 14 fake TRAIN clips), pasted unchanged:
FEATURE_MEAN = (-2.045459, 1.869717, 0.036027, 0.394673, 0.198251, -1.902338)
FEATURE_STD = (0.271369, 0.477801, 0.091274, 0.365203, 0.138556, 0.4385)
COEF = (-0.4208, -0.1348, -0.6769, -0.0402, -0.0994, 0.2949)
INTERCEPT = -0.2694


@dataclass(frozen=True, eq=False)
class LandmarkFeatures:
    """Per-observation geometry, computed once in ``features`` and reused by every window."""

    t: float
    inner: np.ndarray  # (len(INNER), 2) inner points in the contour frame (face-width units)
    inner_img: np.ndarray  # (len(INNER), 2) inner points in image pixels / scale
    contour_img: np.ndarray  # (len(CONTOUR), 2) contour points in image pixels / scale
    scale: float  # face width (cheek to cheek) in pixels
    centre: np.ndarray  # (2,) contour centre in pixels
    ear: float  # mean eye aspect ratio of both eyes
    mouth_open: float  # lip gap / face width
    jaw: float  # nose tip to chin / face width


def _ear(lm: np.ndarray, eye: tuple[int, ...]) -> float:
    p = lm[list(eye), :2]
    width = float(np.linalg.norm(p[0] - p[3]))
    if width <= 0:
        return 0.0
    return float((np.linalg.norm(p[1] - p[5]) + np.linalg.norm(p[2] - p[4])) / (2 * width))


def landmark_features(obs: FaceObservation) -> LandmarkFeatures | None:
    """Normalised geometry of one observation, or None when the face is too degenerate."""
    lm = obs.landmarks.astype(np.float64)
    if not np.isfinite(lm).all():
        return None  # one NaN landmark made the logit NaN, which the clamp turned into p = 1.0
    xy = lm[:, :2]
    contour = xy[CONTOUR]
    centre = contour.mean(axis=0)
    across = xy[CHEEK_R] - xy[CHEEK_L]
    scale = float(np.hypot(*across))
    if not math.isfinite(scale) or scale < 1.0:
        return None
    # The contour frame: origin at the contour centre, x along the cheek-to-cheek line, unit =
    # face width. A similarity transform, so head translation, roll and zoom drop out.
    cos, sin = across / scale
    rot = np.array([[cos, sin], [-sin, cos]])
    inner = ((xy[INNER] - centre) @ rot.T) / scale
    return LandmarkFeatures(
        t=obs.t,
        inner=inner,
        inner_img=xy[INNER] / scale,
        contour_img=contour / scale,
        scale=scale,
        centre=centre,
        ear=(_ear(lm, EYE_R) + _ear(lm, EYE_L)) / 2,
        mouth_open=float(np.linalg.norm(xy[LIP_UP] - xy[LIP_LOW])) / scale,
        jaw=float(np.linalg.norm(xy[NOSE_TIP] - xy[CHIN])) / scale,
    )


def _jitter(points: np.ndarray) -> float:
    """Median over points of the RMS deviation from the temporal neighbours' midpoint; (T, K, 2)."""
    resid = points[1:-1] - (points[:-2] + points[2:]) / 2
    return float(np.median(np.sqrt((resid**2).sum(axis=2).mean(axis=0))))


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = float(a.std()), float(b.std())
    if sa < 1e-6 or sb < 1e-6:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def feature_vector(rows: list[LandmarkFeatures]) -> np.ndarray:
    """The six window statistics (``FEATURE_NAMES`` order) of at least three observations."""
    inner = np.stack([r.inner for r in rows])
    d1 = np.diff(inner, axis=0)
    d2 = np.diff(inner, n=2, axis=0)
    hf_ratio = float((d2**2).sum() / max((d1**2).sum(), 1e-12))
    inner_img = np.stack([r.inner_img for r in rows])
    contour_img = np.stack([r.contour_img for r in rows])
    # Scale-normalised image coordinates jump when the face width estimate jumps; use the
    # window's median width for both so that their ratio compares motion, not scale noise.
    scales = np.array([r.scale for r in rows])
    rescale = (scales / np.median(scales))[:, None, None]
    centres = np.stack([r.centre for r in rows])
    step = np.linalg.norm(np.diff(centres, axis=0), axis=1) / np.median(scales)
    ear = np.array([r.ear for r in rows])
    return np.array(
        [
            math.log10(_jitter(inner) + _EPS),
            hf_ratio,
            math.log10((_jitter(inner_img * rescale) + _EPS) / (_jitter(contour_img * rescale) + _EPS)),
            _corr(np.array([r.mouth_open for r in rows]), np.array([r.jaw for r in rows])),
            float(ear.std() / max(float(ear.mean()), 1e-6)),
            math.log10(float(np.median(step)) + _EPS),
        ]
    )


class LandmarkBaselineDetector:
    """Baseline detector: temporal landmark statistics combined by a fitted logistic."""

    name: ClassVar[str] = "baseline-landmarks"

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

        window_s: float = Field(3.0, gt=0, le=30, description="Seconds of track history scored at once.")
        min_span_s: float = Field(1.0, gt=0, description="Below this much usable history the window is `window_too_short`.")
        min_observations: int = Field(8, ge=3, description="Below this many usable observations the window is `window_too_short`.")
        max_occlusion: float = Field(0.7, ge=0, le=1, description="Observations more turned away than this are not used.")
        max_out_of_frame: float = Field(0.1, ge=0, le=1, description="Observations with more landmarks outside the image are not used.")

        @model_validator(mode="after")
        def _reachable(self) -> LandmarkBaselineDetector.Config:
            # A window that can never hold enough history would leave every face unjudged.
            if self.min_span_s > self.window_s:
                raise ValueError(f"min_span_s ({self.min_span_s}) must not exceed window_s ({self.window_s})")
            return self

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or self.Config()
        self.window_s = self.config.window_s

    def features(self, obs: FaceObservation) -> LandmarkFeatures | None:
        if obs.quality.occlusion > self.config.max_occlusion:
            return None
        if obs.quality.out_of_frame > self.config.max_out_of_frame:
            return None
        return landmark_features(obs)

    def score(self, window: TrackWindow) -> Score:
        vec = window_feature_vector(window, self.config)
        if vec is None:
            long_enough = len(window) >= self.config.min_observations and window.span_s >= self.config.min_span_s
            # The window itself is long enough but turned-away or cut-off faces left too little.
            reason = "too_few_usable_frames" if long_enough else "window_too_short"
            return Score(probability=None, reasons=(reason,))
        if not np.isfinite(vec).all():
            return Score(probability=None, reasons=("invalid_features",))
        z = (vec - np.array(FEATURE_MEAN)) / np.array(FEATURE_STD)
        terms = np.array(COEF) * z
        logit = INTERCEPT + float(terms.sum())
        probability = 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, logit))))
        total = float(np.abs(terms).sum()) or 1.0
        signals = tuple(
            Signal(name=name, value=1.0 / (1.0 + math.exp(-float(term))), weight=abs(float(term)) / total)
            for name, term, coef in zip(FEATURE_NAMES, terms, COEF)
            if coef != 0.0
        )
        return Score(probability=probability, signals=signals)


def window_feature_vector(
    window: TrackWindow, config: LandmarkBaselineDetector.Config
) -> np.ndarray | None:
    """The window's feature vector, or None while it is too short to judge."""
    rows = [f for f in window.features if isinstance(f, LandmarkFeatures)]
    if len(rows) < max(3, config.min_observations):
        return None
    if rows[-1].t - rows[0].t < config.min_span_s:
        return None
    return feature_vector(rows)

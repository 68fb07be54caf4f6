"""Unit tests of the landmark baseline detector on generated landmark sequences."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from monitor.config import AnalysisConfig
from monitor.detect.baseline import (
    COEF,
    FEATURE_NAMES,
    INNER,
    LandmarkBaselineDetector,
    feature_vector,
    landmark_features,
)
from monitor.errors import ConfigError
from monitor.plugins import TrackWindow, plugin_config
from monitor.types import FaceObservation, FaceQuality, Frame, readonly

ASSET = Path(__file__).resolve().parents[2] / "monitor" / "assets" / "astronaut.png"
DT = 0.1


@pytest.fixture(scope="module")
def base_landmarks() -> np.ndarray:
    """Real face-mesh landmarks of the astronaut portrait, found once for the module."""
    from monitor.faces import FaceTracker

    if ASSET.exists():
        rgb = np.ascontiguousarray(cv2.imread(str(ASSET), cv2.IMREAD_COLOR)[:, :, ::-1])
    else:
        rgb = np.ascontiguousarray(pytest.importorskip("skimage.data").astronaut()[:, :, :3])
    tracker = FaceTracker("t", AnalysisConfig())
    try:
        result = tracker.process(Frame("t", 0, 0.0, 0.0, rgb.shape[1], rgb.shape[0], rgb), rgb)
    finally:
        tracker.close()
    return np.array(result.faces[0].landmarks)


def observation(landmarks: np.ndarray, t: float, occlusion: float = 0.0) -> FaceObservation:
    lm = readonly(landmarks.astype(np.float32))
    x0, y0 = lm[:, :2].min(axis=0)
    x1, y1 = lm[:, :2].max(axis=0)
    return FaceObservation(
        stream_id="t",
        track_id=1,
        frame_seq=int(round(t / DT)),
        t=t,
        received_at=0.0,
        landmarks=lm,
        bbox=(float(x0), float(y0), float(x1), float(y1)),
        crop=None,
        quality=FaceQuality(face_px=90.0, blur=500.0, out_of_frame=0.0, occlusion=occlusion, confidence=1.0),
        frame_size=(512, 512),
    )


def sequence(base: np.ndarray, n: int, jitter: float = 0.0, seed: int = 0) -> list[np.ndarray]:
    """A head drifting smoothly; ``jitter`` adds noise (in face widths) to the inner face only."""
    rng = np.random.default_rng(seed)
    width = float(np.linalg.norm(base[454] - base[234]))
    centre = base.mean(axis=0)
    out = []
    for k in range(n):
        t = k * DT
        zoom = 1.0 + 0.03 * math.sin(2 * math.pi * 0.2 * t)
        shift = np.array([15 * math.sin(2 * math.pi * 0.3 * t), 6 * math.cos(2 * math.pi * 0.25 * t), 0.0])
        lm = (base - centre) * zoom + centre + shift
        if jitter:
            lm[INNER, :2] += rng.normal(0.0, jitter * width, size=(len(INNER), 2))
        out.append(lm)
    return out


def scored(detector: LandmarkBaselineDetector, frames: list[np.ndarray], occlusion: float = 0.0) -> TrackWindow:
    window = TrackWindow("t", 1, detector.window_s)
    for k, lm in enumerate(frames):
        obs = observation(lm, k * DT, occlusion)
        window.push(obs, detector.features(obs))
    return window


@pytest.mark.parametrize("n", [1, 5, 9])  # 9 observations span only 0.8 s
def test_short_window_cannot_be_judged(base_landmarks: np.ndarray, n: int) -> None:
    detector = LandmarkBaselineDetector()
    score = detector.score(scored(detector, sequence(base_landmarks, n)))
    assert score.probability is None
    assert score.reasons == ("window_too_short",)
    assert score.signals == ()


def test_turned_away_faces_leave_too_few_usable_frames(base_landmarks: np.ndarray) -> None:
    detector = LandmarkBaselineDetector()
    score = detector.score(scored(detector, sequence(base_landmarks, 20), occlusion=0.9))
    assert score.probability is None
    assert score.reasons == ("too_few_usable_frames",)


def test_full_window_gives_a_probability_with_named_signals(base_landmarks: np.ndarray) -> None:
    detector = LandmarkBaselineDetector()
    score = detector.score(scored(detector, sequence(base_landmarks, 30, jitter=0.005)))
    assert score.probability is not None and 0.0 <= score.probability <= 1.0
    assert score.reasons == ()
    assert {s.name for s in score.signals} <= set(FEATURE_NAMES)
    assert len(score.signals) == sum(c != 0 for c in COEF) > 0
    assert sum(s.weight for s in score.signals) == pytest.approx(1.0)
    assert all(0.0 <= s.value <= 1.0 for s in score.signals)


def test_a_non_finite_landmark_is_no_evidence(base_landmarks: np.ndarray) -> None:
    # One NaN point made the logit NaN, which the clamp turned into p = 1.0: an alert from nothing.
    detector = LandmarkBaselineDetector()
    frames = sequence(base_landmarks, 30, jitter=0.005)
    assert detector.score(scored(detector, frames)).probability < 0.5
    frames[20] = frames[20].copy()
    frames[20][13, 1] = np.nan
    score = detector.score(scored(detector, frames))  # that frame is left out, as a turned-away one
    assert score.probability is not None and score.probability < 0.5


def test_non_finite_face_quality_is_not_usable() -> None:
    from monitor.pipeline.analyzer import quality_reasons

    config = AnalysisConfig()
    good = FaceQuality(face_px=90.0, blur=500.0, out_of_frame=0.0, occlusion=0.0, confidence=1.0)
    assert quality_reasons(good, config) == ()
    for field in ("face_px", "blur", "out_of_frame", "occlusion"):
        bad = FaceQuality(**{**good.__dict__, field: float("nan")})
        assert quality_reasons(bad, config)[0] == "low_quality", field


def test_scores_are_deterministic_and_depend_on_the_input(base_landmarks: np.ndarray) -> None:
    detector = LandmarkBaselineDetector()
    probs = [
        detector.score(scored(detector, sequence(base_landmarks, 30, jitter=j, seed=s))).probability
        for j, s in ((0.01, 1), (0.01, 1), (0.01, 2), (0.0, 0))
    ]
    assert probs[0] == probs[1]
    assert len({probs[0], probs[2], probs[3]}) == 3


def test_inner_face_jitter_is_measured_relative_to_the_contour(base_landmarks: np.ndarray) -> None:
    detector = LandmarkBaselineDetector()

    def vector(frames: list[np.ndarray]) -> dict[str, float]:
        rows = [detector.features(observation(lm, k * DT)) for k, lm in enumerate(frames)]
        return dict(zip(FEATURE_NAMES, feature_vector([r for r in rows if r is not None])))

    smooth = vector(sequence(base_landmarks, 30))
    shaky = vector(sequence(base_landmarks, 30, jitter=0.01))
    # Rigid motion of the whole head leaves (almost) no inner-face jitter in the contour frame.
    assert smooth["inner_jitter"] < -3.0
    assert shaky["inner_jitter"] > smooth["inner_jitter"] + 1.0
    assert shaky["inner_vs_contour"] > smooth["inner_vs_contour"] + 0.5
    assert 2.0 < shaky["inner_hf_ratio"] < 4.0  # white noise: ~3
    assert smooth["head_speed"] == pytest.approx(shaky["head_speed"], abs=0.05)


def test_jittered_inner_face_moves_the_score_the_way_the_fit_says(base_landmarks: np.ndarray) -> None:
    detector = LandmarkBaselineDetector()
    smooth = detector.score(scored(detector, sequence(base_landmarks, 30, jitter=0.0005))).probability
    shaky = detector.score(scored(detector, sequence(base_landmarks, 30, jitter=0.01))).probability
    assert smooth is not None and shaky is not None
    # The fitted coefficients decide the direction: jitter features with a positive total
    # weight make a shaky inner face look more manipulated, a negative one less.
    jitter_weight = COEF[FEATURE_NAMES.index("inner_jitter")] + COEF[FEATURE_NAMES.index("inner_vs_contour")]
    assert (shaky > smooth) == (jitter_weight > 0)
    assert shaky != smooth


def test_landmark_features_reject_a_degenerate_face(base_landmarks: np.ndarray) -> None:
    flat = np.repeat(base_landmarks[:1], len(base_landmarks), axis=0)
    assert landmark_features(observation(flat, 0.0)) is None


def test_config_is_strict_and_sets_the_window() -> None:
    with pytest.raises(ValidationError):
        LandmarkBaselineDetector.Config(windw_s=2.0)  # type: ignore[call-arg]
    config = plugin_config(LandmarkBaselineDetector, {"window_s": 2.0})
    assert isinstance(config, LandmarkBaselineDetector.Config)
    assert LandmarkBaselineDetector(config).window_s == 2.0
    with pytest.raises(ConfigError):
        plugin_config(LandmarkBaselineDetector, {"bogus": 1})
    assert LandmarkBaselineDetector.name == "baseline-landmarks"


def test_a_window_that_can_never_be_long_enough_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match="min_span_s .* must not exceed window_s"):
        LandmarkBaselineDetector.Config(window_s=3.0, min_span_s=5.0)

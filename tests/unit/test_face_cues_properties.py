"""What the face stage and the detector's hand-made cues compute (monitor/faces/align.py,
quality.py, tracker.py; monitor/detect/features.py): alignment, quality gates, track ids, the
geometry and colour vectors, pulse, blinks and flicker. Each test checks a property that README
"Faces", docs/detector.md or a docstring promises, and was written against a one-line change of
the code that the rest of the suite let through. Synthetic landmarks, images and colour traces
only: no MediaPipe run, no shared data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from monitor.detect.features import (
    EYE_L,
    EYE_R,
    GEOMETRY_DIM,
    NEUTRAL_PHYSIO,
    colour_vector,
    geometry_vector,
    physio_stats,
)
from monitor.detect.temporal import FrameCues, thin_rows
from monitor.faces.align import CANONICAL_TEMPLATE, align_face, alignment_matrix, template_points
from monitor.faces.quality import (
    face_width_px,
    laplacian_variance,
    out_of_frame_fraction,
    turn_occlusion,
)
from monitor.faces.tracker import TrackAssigner, iou, landmarks_to_array

# ----------------------------------------------------------------------------------------------
# Synthetic faces: a 478-point landmark array with the points the code reads placed where a
# frontal face has them, built in aligned-crop fractions and mapped into an image.


def _canonical_face(right_open: float = 1.0, left_open: float = 1.0, mouth: float = 0.02) -> np.ndarray:
    """(478, 3) in crop fractions; eyes at the template, lids opened by the given fraction."""
    pts = np.zeros((478, 3))
    pts[:, :2] = (0.5, 0.55)
    (lx, ly), (rx, ry), nose, ml, mr = CANONICAL_TEMPLATE
    half, lid = 0.06, 0.02
    # Image-left eye (subject's right): 33 outer, 133 inner; 160/158 upper, 144/153 lower.
    for (cx, cy), opening, (outer, upper1, upper2, inner, lower2, lower1) in (
        ((lx, ly), right_open, EYE_R),
        ((rx, ry), left_open, EYE_L),
    ):
        x0, x1 = cx - half, cx + half
        pts[outer, :2] = (x0, cy)
        pts[inner, :2] = (x1, cy)
        pts[upper1, :2] = (x0 + 2 * half / 3, cy - lid * opening)
        pts[lower1, :2] = (x0 + 2 * half / 3, cy + lid * opening)
        pts[upper2, :2] = (x0 + 4 * half / 3, cy - lid * opening)
        pts[lower2, :2] = (x0 + 4 * half / 3, cy + lid * opening)
    pts[1, :2] = nose
    pts[61, :2] = ml
    pts[291, :2] = mr
    mouth_c = (ml + mr) / 2
    pts[13, :2] = mouth_c + (0, -mouth / 2)
    pts[14, :2] = mouth_c + (0, mouth / 2)
    pts[234, :2] = (0.21, 0.5)  # cheeks, forehead, chin
    pts[454, :2] = (0.79, 0.5)
    pts[10, :2] = (0.5, 0.16)
    pts[152, :2] = (0.5, 0.84)
    return pts


def _to_image(pts: np.ndarray, scale: float = 200.0, angle_deg: float = 0.0, shift=(150.0, 80.0)) -> np.ndarray:
    """Map crop fractions into image pixels by a similarity (rotation about the crop centre)."""
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    out = pts.copy()
    out[:, :2] = ((pts[:, :2] - 0.5) @ rot.T) * scale + 0.5 * scale + np.asarray(shift)
    out[:, 2] = pts[:, 2] * scale
    return out.astype(np.float32)


def _rotate(landmarks: np.ndarray, axis: str, degrees: float) -> np.ndarray:
    c = landmarks.mean(axis=0)
    a = math.radians(degrees)
    cs, sn = math.cos(a), math.sin(a)
    if axis == "y":  # yaw
        rot = np.array([[cs, 0, sn], [0, 1, 0], [-sn, 0, cs]])
    else:  # pitch
        rot = np.array([[1, 0, 0], [0, cs, -sn], [0, sn, cs]])
    return ((landmarks - c) @ rot.T + c).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Alignment


@pytest.mark.parametrize("angle", [0.0, 30.0, -25.0])
def test_a_rolled_face_is_aligned_upright_onto_the_template(angle: float) -> None:
    landmarks = _to_image(_canonical_face(), scale=230.0, angle_deg=angle, shift=(70.0, 40.0))
    size = 160
    m = alignment_matrix(landmarks, size)
    mapped = template_points(landmarks) @ m[:, :2].T + m[:, 2]
    # The five points are an exact similarity of the template: least squares maps them onto it.
    np.testing.assert_allclose(mapped, CANONICAL_TEMPLATE * size, atol=1e-6 * size)


def test_the_crop_puts_the_image_left_eye_on_the_left() -> None:
    # Pixels: a red dot at the image-left eye centre, a blue one at the image-right eye, a
    # face rolled by 20 degrees. The crop shows them at their template places (not mirrored).
    landmarks = _to_image(_canonical_face(), scale=200.0, angle_deg=20.0, shift=(100.0, 60.0))
    rgb = np.full((400, 400, 3), 90, np.uint8)
    eyes = template_points(landmarks)[:2]
    yy, xx = np.mgrid[:400, :400]
    for (x, y), colour in zip(eyes, ((255, 0, 0), (0, 0, 255))):
        rgb[(xx - x) ** 2 + (yy - y) ** 2 <= 16] = colour
    size = 112
    crop = align_face(rgb, landmarks, size)
    for channel, (tx, ty) in zip((0, 2), CANONICAL_TEMPLATE[:2] * size):
        mask = (crop[:, :, channel] > 200) & (crop[:, :, 1] < 60)
        assert mask.any()
        ys, xs = np.nonzero(mask)
        assert abs(xs.mean() - tx) < 2.0 and abs(ys.mean() - ty) < 2.0


def test_template_matches_the_documented_framing() -> None:
    # monitor/faces/align.py's table: eyes at y ~0.37, mouth corners ~0.66, face mesh 0.21..0.79.
    documented = np.array(
        [[0.3735, 0.3693], [0.6252, 0.3678], [0.5002, 0.5124], [0.3968, 0.6598], [0.6052, 0.6586]]
    )
    np.testing.assert_allclose(CANONICAL_TEMPLATE, documented, atol=1e-4)


# ----------------------------------------------------------------------------------------------
# Quality


def test_face_width_does_not_shrink_when_the_head_turns() -> None:
    landmarks = _to_image(_canonical_face())
    frontal = face_width_px(landmarks)
    for yaw in (30.0, -50.0):
        assert face_width_px(_rotate(landmarks, "y", yaw)) == pytest.approx(frontal, rel=1e-3)


def test_turning_either_way_is_equally_occluded() -> None:
    landmarks = _to_image(_canonical_face())
    left = turn_occlusion(_rotate(landmarks, "y", 45.0))
    right = turn_occlusion(_rotate(landmarks, "y", -45.0))
    assert left > 0.5 and right == pytest.approx(left, abs=1e-3)


def test_occlusion_ramps_from_20_to_60_deg_yaw_and_20_to_50_pitch() -> None:
    landmarks = _to_image(_canonical_face())
    occ = lambda axis, d: turn_occlusion(_rotate(landmarks, axis, d))  # noqa: E731
    assert occ("y", 15.0) == 0.0
    assert occ("y", 40.0) == pytest.approx(0.5, abs=0.02)
    assert occ("y", 60.5) == 1.0
    assert occ("x", 15.0) == 0.0
    assert occ("x", 35.0) == pytest.approx(0.5, abs=0.02)  # pitch alone is enough
    assert occ("x", 50.5) == 1.0


def test_out_of_frame_counts_every_edge() -> None:
    inside = [[5.0, 5.0, 0.0]] * 3
    for point in ([-1.0, 5.0], [10.0, 5.0], [5.0, -1.0], [5.0, 10.0]):
        pts = np.array(inside + [point + [0.0]], dtype=np.float32)
        assert out_of_frame_fraction(pts, 10, 10) == 0.25, point


def test_blur_value_is_a_variance() -> None:
    # Doubling the contrast of the same pattern doubles the Laplacian: its variance quadruples.
    yy, xx = np.mgrid[:112, :112]
    pattern = np.where((xx // 4 + yy // 4) % 2 == 0, 1, -1)
    low = np.repeat((100 + 20 * pattern)[:, :, None], 3, axis=2).astype(np.uint8)
    high = np.repeat((100 + 40 * pattern)[:, :, None], 3, axis=2).astype(np.uint8)
    assert laplacian_variance(high) == pytest.approx(4 * laplacian_variance(low), rel=0.02)


# ----------------------------------------------------------------------------------------------
# Tracking


def test_landmark_depth_is_scaled_by_the_frame_width() -> None:
    from mediapipe.framework.formats import landmark_pb2

    msg = landmark_pb2.NormalizedLandmarkList()
    for k in range(4):
        p = msg.landmark.add()
        p.x, p.y, p.z = 0.25 * k, 0.5, 0.1 * (k + 1)
    out = landmarks_to_array(msg, 640, 360)
    np.testing.assert_allclose(out[:, 2], [64.0, 128.0, 192.0, 256.0], rtol=1e-5)
    np.testing.assert_allclose(out[:, 1], 180.0, rtol=1e-6)


def test_a_resolution_change_of_height_alone_keeps_the_id() -> None:
    assigner = TrackAssigner(lost_s=1.0)
    face = (300.0, 380.0, 360.0, 440.0)  # near the bottom of 640 x 480
    first, _ = assigner.update(0.0, [face], (640, 480))
    squashed = (300.0, 190.0, 360.0, 220.0)  # the same face in 640 x 240: y halves
    again, ended = assigner.update(0.1, [squashed], (640, 240))
    assert ended == () and again[0] is not None and first[0] is not None
    assert again[0][0] == first[0][0]


def test_an_overlapping_detection_continues_the_track_whatever_its_size() -> None:
    # Boxes that overlap by MIN_IOU continue the track; the size gate is for the centre fallback.
    assigner = TrackAssigner(lost_s=1.0)
    assigner.update(0.0, [(100.0, 100.0, 200.0, 200.0)])
    nearer, _ = assigner.update(0.1, [(60.0, 60.0, 310.0, 310.0)])  # 2.5x wider, IoU 0.16
    assert nearer[0] is not None and nearer[0][0] == 1
    # Overlap costs 1 - IoU, below any centre-distance fallback (1 + distance).
    from monitor.faces.tracker import association_cost

    assert association_cost((130.0, 100.0, 230.0, 200.0), (100.0, 100.0, 200.0, 200.0)) == pytest.approx(1 - 7000 / 13000)


def test_iou_of_boxes_apart_on_one_axis_is_zero() -> None:
    assert iou((0.0, 0.0, 100.0, 100.0), (50.0, 200.0, 150.0, 300.0)) == 0.0
    assert iou((0.0, 0.0, 100.0, 100.0), (200.0, 50.0, 300.0, 150.0)) == 0.0


def test_a_face_gone_for_less_than_track_lost_s_keeps_its_id_and_a_later_one_does_not() -> None:
    assigner = TrackAssigner(lost_s=1.0)
    box = (100.0, 100.0, 200.0, 200.0)
    assigner.update(0.0, [box])
    for t in (0.1, 0.3, 0.6, 0.9):
        _, ended = assigner.update(t, [])
        assert ended == ()
    back, _ = assigner.update(0.95, [box])
    assert back[0] is not None and back[0][0] == 1
    for t in (1.5, 1.9):
        _, ended = assigner.update(t, [])
        assert ended == ()
    _, ended = assigner.update(2.0, [])
    assert ended == (1,)


# ----------------------------------------------------------------------------------------------
# Per-frame cues


def test_geometry_is_invariant_to_face_position_size_and_roll() -> None:
    canon = _canonical_face(mouth=0.05)
    a = geometry_vector(_to_image(canon, scale=120.0, angle_deg=0.0, shift=(10.0, 20.0)))
    b = geometry_vector(_to_image(canon, scale=300.0, angle_deg=15.0, shift=(200.0, 50.0)))
    assert a.shape == (GEOMETRY_DIM,)
    np.testing.assert_allclose(a, b, atol=1e-4)
    # Points are in aligned-crop units: fractions of the crop side.
    assert 0.0 <= a[:-3].min() and a[:-3].max() <= 1.0
    assert a[-1] == pytest.approx(0.05, abs=1e-4)  # mouth opening, crop fraction


def test_each_eye_aspect_ratio_follows_its_own_eye() -> None:
    both = geometry_vector(_to_image(_canonical_face()))
    left_shut = geometry_vector(_to_image(_canonical_face(left_open=0.0)))
    right_shut = geometry_vector(_to_image(_canonical_face(right_open=0.0)))
    ear_r, ear_l = both[-3], both[-2]
    assert ear_r == pytest.approx(ear_l, rel=1e-3) and ear_r > 0.2
    assert left_shut[-2] < 0.02 and left_shut[-3] == pytest.approx(ear_r, rel=1e-3)
    assert right_shut[-3] < 0.02 and right_shut[-2] == pytest.approx(ear_l, rel=1e-3)


def test_skin_patches_read_their_own_region() -> None:
    crop = np.full((112, 112, 3), 100, np.uint8)
    crop[int(0.20 * 112) : int(0.27 * 112) + 1, int(0.42 * 112) : int(0.58 * 112) + 1] = (200, 50, 50)  # forehead
    v = colour_vector(crop)
    np.testing.assert_allclose(v[0:3], (200, 50, 50))
    np.testing.assert_allclose(v[3:9], 100.0)  # cheeks untouched


# ----------------------------------------------------------------------------------------------
# Window cues


FPS = 10.0
N = 80  # 8 s: the detector's physiology window


def _times(n: int = N) -> np.ndarray:
    return np.arange(n) / FPS


def _geometry(ear: np.ndarray, mouth: np.ndarray | None = None) -> np.ndarray:
    g = np.full((len(ear), GEOMETRY_DIM), 0.5, np.float32)
    g[:, -3] = ear
    g[:, -2] = ear
    g[:, -1] = 0.03 if mouth is None else mouth
    return g


SKIN = np.array([170.0, 120.0, 100.0])
PULSE_DIR = np.array([0.33, 0.77, 0.53])  # blood volume pulse signature in normalised RGB


def _colours(per_patch: list[np.ndarray], inner: np.ndarray | None = None, outer: np.ndarray | None = None) -> np.ndarray:
    """(T, 15): three skin patches given as (T, 3) relative changes, inner and outer boxes."""
    t = len(per_patch[0])
    out = np.zeros((t, 15))
    for i, rel in enumerate(per_patch):
        out[:, 3 * i : 3 * i + 3] = SKIN * (1 + rel)
    out[:, 9:12] = SKIN if inner is None else inner
    out[:, 12:15] = SKIN if outer is None else outer
    return out


def _noise(rng: np.random.Generator, n: int = N, sd: float = 0.002) -> np.ndarray:
    return rng.normal(0, sd, (n, 3))


def _pulse(t: np.ndarray, hz: float = 1.2, amp: float = 0.02, phase: float = 0.0) -> np.ndarray:
    return amp * np.sin(2 * np.pi * hz * t + phase)[:, None] * PULSE_DIR


def test_a_pulse_gives_coherent_patches_and_a_higher_snr_than_noise() -> None:
    rng = np.random.default_rng(3)
    t = _times()
    geo = _geometry(np.full(N, 0.3))
    pulse = physio_stats(t, _colours([_pulse(t) + _noise(rng) for _ in range(3)]), geo)
    noise = physio_stats(t, _colours([_noise(rng) for _ in range(3)]), geo)
    assert pulse.pulse_coherence > 0.8
    assert abs(noise.pulse_coherence) < 0.4
    assert pulse.pulse_snr > noise.pulse_snr + 0.5


def test_a_pulse_between_dropped_frames_reads_like_the_regular_one() -> None:
    # Analysed frames are dropped under load (here every other one for the second half of the
    # window): the window is resampled onto a uniform grid, so the pulse stays one frequency.
    rng = np.random.default_rng(4)
    t = _times(120)
    keep = np.concatenate([np.arange(0, 60), np.arange(60, 120, 2), [119]])
    geo = _geometry(np.full(120, 0.3))
    colours = _colours([_pulse(t, hz=1.25) + _noise(rng, 120) for _ in range(3)])
    regular = physio_stats(t, colours, geo)
    dropped = physio_stats(t[keep], colours[keep], geo[keep])
    assert regular.pulse_snr > 1.0
    assert dropped.pulse_snr == pytest.approx(regular.pulse_snr, abs=0.5)


def test_a_slow_colour_drift_is_not_a_pulse() -> None:
    # The light on the face turning greener and back at 0.25 Hz (a screen's glow) moves every
    # patch alike; the pulse band (0.7-3 Hz) leaves it out, so the patches' pulses are their
    # own noise.
    rng = np.random.default_rng(5)
    t = _times()
    drift = 0.03 * np.sin(2 * np.pi * 0.25 * t)[:, None] * np.array([0.0, 1.0, 0.0])
    stats = physio_stats(t, _colours([drift + _noise(rng) for _ in range(3)]), _geometry(np.full(N, 0.3)))
    assert abs(stats.pulse_coherence) < 0.4


def test_a_brightness_flicker_common_to_all_channels_is_not_a_pulse() -> None:
    # POS projects out changes along the skin tone (intensity): a lamp's 1.2 Hz flicker is no pulse.
    rng = np.random.default_rng(6)
    t = _times()
    flicker = 0.02 * np.sin(2 * np.pi * 1.2 * t)[:, None] * np.ones(3)
    stats = physio_stats(t, _colours([flicker + _noise(rng, sd=0.0005) for _ in range(3)]), _geometry(np.full(N, 0.3)))
    assert abs(stats.pulse_coherence) < 0.4


def test_pulse_coherence_is_a_signed_correlation() -> None:
    # The forehead in anti-phase with both cheeks: two of three pairs correlate at -1.
    rng = np.random.default_rng(7)
    t = _times()
    patches = [_pulse(t, phase=np.pi) + _noise(rng, sd=0.0002), _pulse(t) + _noise(rng, sd=0.0002), _pulse(t) + _noise(rng, sd=0.0002)]
    stats = physio_stats(t, _colours(patches), _geometry(np.full(N, 0.3)))
    assert stats.pulse_coherence < -0.2


def test_blinks_are_counted_once_each_per_second_of_window() -> None:
    rng = np.random.default_rng(8)
    ear = 0.3 * (1 + rng.normal(0, 0.02, N))
    ear[20:23] = 0.05  # a 0.3 s blink
    ear[50:52] = 0.06
    ear[78:80] = 0.05  # the lids close on the window's last frames
    stats = physio_stats(_times(), _colours([_noise(rng) for _ in range(3)]), _geometry(ear))
    assert stats.blink_rate == pytest.approx(3 / 7.9, rel=1e-6)


def test_a_talking_mouth_with_still_eyes_is_no_blink_and_no_eye_variation() -> None:
    rng = np.random.default_rng(9)
    t = _times()
    ear = 0.3 * (1 + rng.normal(0, 0.005, N))
    mouth = 0.12 + 0.12 * np.sin(2 * np.pi * 1.7 * t)
    stats = physio_stats(t, _colours([_noise(rng) for _ in range(3)]), _geometry(ear, mouth))
    assert stats.blink_rate == 0.0
    assert stats.ear_cv < 0.02


def test_eye_variation_is_relative_to_the_eye_opening() -> None:
    rng = np.random.default_rng(10)
    ear = 0.2 * (1 + rng.normal(0, 0.05, N))
    cols = _colours([_noise(rng) for _ in range(3)])
    narrow = physio_stats(_times(), cols, _geometry(ear))
    wide = physio_stats(_times(), cols, _geometry(2 * ear))
    assert wide.ear_cv == pytest.approx(narrow.ear_cv, rel=1e-5)


def test_colour_flicker_is_inner_against_outer_and_frame_to_frame() -> None:
    rng = np.random.default_rng(11)
    t = _times()
    skins = [_noise(rng) for _ in range(3)]
    # The whole face brightening and darkening frame to frame (auto exposure): not flicker.
    common = SKIN * (1 + 0.05 * rng.normal(0, 1, (N, 1)))
    global_ = physio_stats(t, _colours(skins, common, common), _geometry(np.full(N, 0.3)))
    # The inner face drifting slowly against its surroundings (10 grey levels at 0.25 Hz) ...
    drift = SKIN + 10 * np.sin(2 * np.pi * 0.25 * t)[:, None]
    slow = physio_stats(t, _colours(skins, drift, SKIN), _geometry(np.full(N, 0.3)))
    # ... flickers less than one grey level of frame-to-frame jitter.
    jitter = SKIN + rng.normal(0, 1.0, (N, 3))
    fast = physio_stats(t, _colours(skins, jitter, SKIN), _geometry(np.full(N, 0.3)))
    assert global_.colour_flicker == pytest.approx(-1.0, abs=0.05)
    assert slow.colour_flicker < fast.colour_flicker


def test_a_window_under_16_frames_is_neutral() -> None:
    rng = np.random.default_rng(12)
    t = np.arange(15) * 0.2  # 2.8 s, 15 frames
    stats = physio_stats(t, _colours([_pulse(t) + _noise(rng, 15) for _ in range(3)]), _geometry(np.full(15, 0.3)))
    assert stats == NEUTRAL_PHYSIO


def test_a_15_fps_window_is_thinned_to_about_10_fps() -> None:
    geo = np.zeros(GEOMETRY_DIM, np.float32)
    col = np.zeros(15, np.float32)
    rows = [FrameCues(i / 15, 0.0, geo, col) for i in range(45)]  # 3 s at 15 fps
    thinned = thin_rows(rows, 10.0)
    assert 28 <= len(thinned) <= 31
    assert thinned[-1] is rows[-1]


# --- Promises a mutation audit found unheld (quality.py) ---


@pytest.mark.parametrize("pitch", [35.0, 45.0])
def test_looking_up_or_down_is_equally_occluded(pitch: float) -> None:
    # "turned more than about ... 38 deg up or down" (models/temporal-v1.md Limits):
    # the pitch gate is symmetric, like the yaw one.
    landmarks = _to_image(_canonical_face())
    up = turn_occlusion(_rotate(landmarks, "x", pitch))
    down = turn_occlusion(_rotate(landmarks, "x", -pitch))
    assert up > 0.3 and down == pytest.approx(up, abs=1e-3)


def _roll(landmarks: np.ndarray, degrees: float) -> np.ndarray:
    """In-plane rotation (head tilt) about the landmarks' centre: x, y rotate, z unchanged."""
    c = landmarks.mean(axis=0)
    a = math.radians(degrees)
    rot = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    return ((landmarks - c) @ rot.T + c).astype(np.float32)


@pytest.mark.parametrize("axis, angle", [("y", 40.0), ("x", 35.0)])
def test_a_tilted_head_is_as_occluded_as_an_upright_one(axis: str, angle: float) -> None:
    # yaw and pitch are "the angle of the cheek-to-cheek [forehead-to-chin]
    # vector out of the image plane": tilting the head in the image plane changes neither.
    landmarks = _to_image(_canonical_face())
    turned = _rotate(landmarks, axis, angle)
    upright = turn_occlusion(turned)
    assert 0.3 < upright < 1.0
    for roll in (-30.0, 25.0):
        assert turn_occlusion(_roll(turned, roll)) == pytest.approx(upright, abs=1e-3)


def test_blur_at_112_px_is_the_plain_laplacian_variance() -> None:
    # min_blur is "Laplacian variance (measured at 112 px whatever crop_size is)":
    # a 112 px crop is measured as it is.
    import cv2

    rng = np.random.default_rng(0)
    crop = cv2.GaussianBlur(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8), (3, 3), 0)
    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    expected = float(cv2.Laplacian(grey, cv2.CV_64F).var())
    assert laplacian_variance(crop) == pytest.approx(expected, rel=1e-3)

"""Properties of the self-blends, call channel and landmark fakes (monitor.training.synthesis)
that the code's docstrings and docs/detector.md promise, one per step of the recipe: each of
these tests was written against a one-line change of the code that the rest of the suite let
through. Generated fixtures only."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from monitor.training import synthesis as syn
from tests.unit.test_training_synthesis import _neutral, _talking_sequence, synthetic_face

# --- blend mask and blend ----------------------------------------------------------------------


@pytest.mark.parametrize("morph", [0, -6])
def test_mask_peaks_at_the_ratio_on_a_narrow_face_too(morph: int) -> None:
    # "Re-normalise so the blur does not push the centre below the ratio": on a face seen
    # nearly in profile (its oval 0.15 times as wide as tall) the blurs alone would.
    _, lm = synthetic_face()
    lm[:, 0] = 80 + (lm[:, 0] - 80) * 0.15
    p = _neutral(morph=morph, blur1=0.06, blur2=0.04, ratio=0.75)
    mask = syn.blend_mask((160, 160), lm, p)
    assert mask.min() >= 0.0
    assert mask.max() == pytest.approx(0.75, rel=1e-5)


def test_blend_is_the_masked_mix_rounded_to_the_nearest_level() -> None:
    # self_blend returns m*source + (1-m)*img as uint8: rounded to the nearest level, not
    # truncated (truncation darkens blended pixels by up to one grey level).
    img, lm = synthetic_face()
    p = _neutral(ratio=0.5, rgb_shift=(7.0, -5.0, 3.0), contrast=1.1)
    fake, mask = syn.self_blend(img, lm, p)
    m = mask[..., None]
    exact = m * syn.source_copy(img, lm, p).astype(np.float32) + (1 - m) * img.astype(np.float32)
    err = fake.astype(np.float32) - exact
    assert np.abs(err).max() <= 0.5 + 1e-3


# --- recolour: each of the documented colour changes --------------------------------------------


def _smooth(size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(60, 180, (size, size, 3)).astype(np.uint8)


def test_recolour_contrast_scales_and_brightness_is_a_fraction_of_255() -> None:
    img = _smooth()
    zero = (0.0, 0.0, 0.0)
    neutral = syn.recolour(img, 1.0, 0.0, zero, zero).astype(float)
    high = syn.recolour(img, 1.25, 0.0, zero, zero).astype(float)
    assert high.std() / neutral.std() == pytest.approx(1.25, abs=0.05)
    grey = np.full((16, 16, 3), 100, np.uint8)
    assert syn.recolour(grey, 1.0, 0.1, zero, zero).astype(float).mean() == pytest.approx(125.5, abs=1.5)
    assert syn.recolour(grey, 1.0, -0.1, zero, zero).astype(float).mean() == pytest.approx(74.5, abs=1.5)


def _hsv(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(float)


def test_recolour_hue_saturation_and_value_shifts_are_as_documented() -> None:
    # "hue, saturation and value shifts (fractions of 10 hue steps, 50% and 30%)".
    colour = np.zeros((16, 16, 3), np.uint8)
    colour[:] = (200, 120, 80)  # a saturated skin-like orange
    h0, s0, v0 = _hsv(colour)[0, 0]
    hue = _hsv(syn.recolour(colour, 1.0, 0.0, (0.0, 0.0, 0.0), (0.3, 0.0, 0.0)))[0, 0]
    assert (hue[0] - h0) % 180 == pytest.approx(3, abs=1)  # 0.3 of 10 hue steps
    sat = _hsv(syn.recolour(colour, 1.0, 0.0, (0.0, 0.0, 0.0), (0.0, -0.3, 0.0)))[0, 0]
    assert sat[1] == pytest.approx(s0 * 0.85, abs=3) and sat[2] == pytest.approx(v0, abs=2)
    val = _hsv(syn.recolour(colour, 1.0, 0.0, (0.0, 0.0, 0.0), (0.0, 0.0, -0.3)))[0, 0]
    assert val[2] == pytest.approx(v0 * 0.91, abs=3) and val[1] == pytest.approx(s0, abs=4)


# --- clip-level self-blends -------------------------------------------------------------------


def _moving_clip(n: int = 12) -> tuple[list[np.ndarray], list[np.ndarray]]:
    img, lm = synthetic_face()
    # Each frame also brighter overall, so a frame's background tells which frame it is.
    frames = [np.clip(np.roll(img, k, axis=1).astype(int) + 4 * k, 0, 255).astype(np.uint8) for k in range(n)]
    return frames, [lm + np.float32([k, 0, 0]) for k in range(n)]


def test_clip_blend_jitters_the_offset_on_every_clip(monkeypatch: pytest.MonkeyPatch) -> None:
    # "per-frame jitter": the source offset wobbles from frame to frame in every clip.
    frames, lms = _moving_clip(6)
    real = syn.self_blend
    for seed in range(10):
        shifts: list[tuple[float, float]] = []

        def spy(img: np.ndarray, lm: np.ndarray, p: syn.BlendParams, mask_landmarks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
            shifts.append(p.shift)
            return real(img, lm, p, mask_landmarks)

        monkeypatch.setattr(syn, "self_blend", spy)
        syn.self_blend_clip(frames, lms, np.random.default_rng(seed))
        assert len(set(shifts)) > 1, seed


def test_jittered_blend_ratio_stays_between_0_2_and_1() -> None:
    # The mask is promised in [0, 1]: a jittered ratio above 1 would extrapolate the blend.
    rng = np.random.default_rng(0)
    for base in (1.0, 0.25):
        p = _neutral(ratio=base)
        ratios = np.array([syn.jitter_blend(p, rng, 1.5).ratio for _ in range(2000)])
        assert ratios.min() >= 0.2 and ratios.max() <= 1.0


def test_a_frozen_clip_frame_keeps_the_current_background(monkeypatch: pytest.MonkeyPatch) -> None:
    # "Frozen swap: the previous pasted face stays while the head moves on underneath": outside
    # the mask every output frame is its own frame, frozen or not.
    frames, lms = _moving_clip()
    frozen = 0
    real = syn.self_blend
    for seed in range(30):
        pasted: list[bool] = []

        def spy(img: np.ndarray, lm: np.ndarray, p: syn.BlendParams, mask_landmarks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
            pasted.append(not any(img is f for f in frames[len(pasted):len(pasted) + 1]))
            return real(img, lm, p, mask_landmarks)

        monkeypatch.setattr(syn, "self_blend", spy)
        out = syn.self_blend_clip(frames, lms, np.random.default_rng(seed))
        frozen += sum(pasted)
        for i, (o, f) in enumerate(zip(out, frames)):
            assert np.array_equal(o[:6, :6], f[:6, :6]) and np.array_equal(o[-6:, -6:], f[-6:, -6:]), (seed, i)
    assert frozen > 0  # some frames were frozen ones


# --- animated stills ---------------------------------------------------------------------------


def test_animated_still_puts_the_face_where_each_frames_landmarks_are() -> None:
    # The source frame is warped from its own landmarks to each frame's: frame i shows the face
    # where frame i's landmarks put it (here: i px right), whichever frame was the source.
    img, lm = synthetic_face()
    img = cv2.GaussianBlur(img, (0, 0), 3.0)  # smooth, so the generator look barely changes it
    frames = [np.roll(img, k, axis=1) for k in range(0, 10, 3)]
    lms = [lm + np.float32([k, 0, 0]) for k in range(0, 10, 3)]
    refs = set()
    for seed in range(3):
        refs.add(int(np.random.default_rng(seed).integers(len(frames))))  # animate_still's first draw
        out = syn.animate_still(frames, lms, np.random.default_rng(seed))
        for i in range(len(frames)):
            err = [np.abs(out[i][50:110, 60:100].astype(int) - np.roll(img, d, axis=1)[50:110, 60:100].astype(int)).mean() for d in range(-8, 16)]
            assert int(np.argmin(err)) - 8 == 3 * i, (seed, i)
    assert len(refs - {0}) > 0  # some clips' source frame is not the first


def test_animated_still_gives_each_clip_a_generator_look() -> None:
    # "One generator look per clip: down-then-up-scaling or sharpening": with no motion at all the
    # warp is the identity, so what is left is the look, softer on some clips, crisper on others.
    img, lm = synthetic_face()
    detail = lambda a: float(cv2.Laplacian(np.float32(a.mean(axis=2)), cv2.CV_32F).var())  # noqa: E731
    ratios = []
    for seed in range(16):
        out = syn.animate_still([img], [lm], np.random.default_rng(seed))
        ratios.append(detail(out[0]) / detail(img))
    assert min(ratios) < 0.7 and max(ratios) > 1.2


# --- call channel --------------------------------------------------------------------------------


def _photo() -> np.ndarray:
    img, _ = synthetic_face(112)
    return cv2.GaussianBlur(img, (0, 0), 1.0)


@pytest.mark.parametrize(
    "params",
    [
        syn.ChannelParams(1.0, 50, 0.0, 0.0),  # JPEG at quality 50 only
        syn.ChannelParams(1.0, 100, 0.0, 1.0),  # blur only
        syn.ChannelParams(0.5, 100, 0.0, 0.0),  # downscale only
        syn.ChannelParams(1.0, 100, 4.0, 0.0),  # noise only
    ],
    ids=["jpeg50", "blur", "downscale", "noise"],
)
def test_each_channel_step_alone_changes_the_image(params: syn.ChannelParams) -> None:
    img = _photo()
    out = syn.apply_channel(img, params, np.random.default_rng(0))
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - img.astype(int)).mean() > 1.0


def test_blur_and_downscale_soften_and_noise_is_about_its_sigma() -> None:
    img = _photo()
    detail = lambda a: float(cv2.Laplacian(np.float32(a.mean(axis=2)), cv2.CV_32F).var())  # noqa: E731
    assert detail(syn.apply_channel(img, syn.ChannelParams(1.0, 100, 0.0, 1.0), np.random.default_rng(0))) < 0.6 * detail(img)
    assert detail(syn.apply_channel(img, syn.ChannelParams(0.4, 100, 0.0, 0.0), np.random.default_rng(0))) < 0.6 * detail(img)
    grey = np.full((64, 64, 3), 128, np.uint8)
    noisy = syn.apply_channel(grey, syn.ChannelParams(1.0, 100, 5.0, 0.0), np.random.default_rng(0))
    assert float(noisy.astype(float).std()) == pytest.approx(5.0, rel=0.1)


# --- landmark fakes (recipe 2) -------------------------------------------------------------------


def _kind(seed: int) -> str:
    return syn.LANDMARK_FAKES[int(np.random.default_rng(seed).integers(0, len(syn.LANDMARK_FAKES)))]


def test_low_pass_adds_nothing_to_a_face_whose_inner_motion_is_steady(monkeypatch: pytest.MonkeyPatch) -> None:
    # "Start from rest at the first frame, so the filter adds no transient of its own": a window
    # whose inner face does not move against the contour comes out as it went in.
    monkeypatch.setattr(syn, "HARD_SHARE", 0.0)
    seq = _talking_sequence(40, blink_at=())
    seq[:, syn.MOUTH, :2] = seq[:1, syn.MOUTH, :2] + (seq[:, syn.FACE_OVAL, :2].mean(axis=1, keepdims=True) - seq[:1, syn.FACE_OVAL, :2].mean(axis=1, keepdims=True))
    seen = 0
    for seed in range(80):
        if _kind(seed) != "low_pass":
            continue
        out, name = syn.perturb_landmarks(seq, np.random.default_rng(seed), fps=30.0, recipe=2)
        assert name == "low_pass"
        assert np.abs(out - seq).max() < 1e-3, seed
        seen += 1
    assert seen > 3


def test_low_pass_and_other_fakes_survive_an_unknown_frame_rate() -> None:
    # An unknown rate (nan, 0, inf) is "the service's default" 10 fps: the same fake as at 10 fps.
    seq = _talking_sequence()
    for seed in range(40):
        if _kind(seed) != "low_pass":
            continue
        ref, _ = syn.perturb_landmarks(seq, np.random.default_rng(seed), fps=10.0, recipe=2)
        for fps in (float("nan"), 0.0, float("inf")):
            out, _ = syn.perturb_landmarks(seq, np.random.default_rng(seed), fps=fps, recipe=2)
            assert np.isfinite(out).all() and np.allclose(out, ref, atol=1e-5), (seed, fps)


def test_a_drifting_misalignment_grows_its_shift_over_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    # "misaligned ... (constant or drifting)": a drifting fake's inner face is moved less at the
    # start of the window than at its end, a constant one alike throughout.
    monkeypatch.setattr(syn, "HARD_SHARE", 0.0)
    seq = _talking_sequence()
    grows = constant = 0
    for seed in range(200):
        if _kind(seed) != "misalign":
            continue
        out, _ = syn.perturb_landmarks(seq, np.random.default_rng(seed), recipe=2)
        moved = np.linalg.norm(out[:, syn.INNER, :2].mean(axis=1) - seq[:, syn.INNER, :2].mean(axis=1), axis=1)
        if moved[0] < 0.7 * moved[-1]:
            grows += 1
        elif np.allclose(moved, moved[-1], rtol=1e-3, atol=1e-3):
            constant += 1
    assert grows > 3 and constant > 3


def test_misalignment_turns_both_ways() -> None:
    seq = _talking_sequence()
    turns = set()
    before = seq[-1, syn.INNER, :2]
    for seed in range(200):
        if _kind(seed) != "misalign":
            continue
        out, _ = syn.perturb_landmarks(seq, np.random.default_rng(seed), recipe=2)
        a, b = before - before.mean(axis=0), out[-1, syn.INNER, :2] - out[-1, syn.INNER, :2].mean(axis=0)
        turns.add(np.sign((a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]).sum()))
    assert turns == {-1.0, 1.0}


def test_eye_aspect_is_the_mean_of_both_eyes() -> None:
    # "(T,) mean eye aspect ratio of both eyes": one eye closing halves it, either eye.
    seq = _talking_sequence(3, blink_at=())
    open_ = syn.eye_aspect(seq)
    assert np.all(open_ > 0)
    for lids in ((159, 145, 158, 153), (386, 374, 385, 380)):
        one = seq.copy()
        one[:, list(lids), 1] = 65.0  # this eye's lids meet
        assert syn.eye_aspect(one) == pytest.approx(open_ / 2, rel=1e-5)


# --- landmark fakes (recipe 1, the shipped weights') ----------------------------------------------


def _v1_kind(seed: int) -> str:
    return syn.LANDMARK_FAKES_V1[int(np.random.default_rng(seed).integers(0, 6))]


def test_recipe_1_fakes_never_move_the_contour() -> None:
    seq = _talking_sequence()
    kinds = set()
    for seed in range(40):
        out, name = syn.perturb_landmarks(seq, np.random.default_rng(seed), seq[::-1].copy(), recipe=1)
        assert np.array_equal(out[:, syn.FACE_OVAL], seq[:, syn.FACE_OVAL]), name
        kinds.add(name)
    assert kinds == set(syn.LANDMARK_FAKES_V1)


def test_recipe_1_transplanted_mouth_motion_is_rescaled_to_this_face() -> None:
    # "Magnitudes are relative to face size": a donor face twice as large moves its mouth half as
    # much on this face.
    seq = _talking_sequence()
    donor = seq.copy()
    donor[:, syn.MOUTH, 1] += 3 * np.cos(np.arange(len(seq)) * 1.3)[:, None] * (np.arange(len(syn.MOUTH)) % 2)[None, :]
    donor[:, :, :2] = (donor[:, :, :2] - 80.0) * 2.0 + 80.0
    rel = lambda s: s[:, syn.MOUTH, :2] - s[:, syn.MOUTH, :2].mean(axis=1, keepdims=True)  # noqa: E731
    spread = lambda s: float(np.ptp(rel(s)[:, :, 1], axis=0).max())  # noqa: E731
    seen = 0
    for seed in range(40):
        if _v1_kind(seed) != "transplant":
            continue
        out, name = syn.perturb_landmarks(seq, np.random.default_rng(seed), donor, recipe=1)
        assert name == "transplant"
        assert spread(out) == pytest.approx(spread(donor) / 2, rel=0.02)
        seen += 1
    assert seen > 2

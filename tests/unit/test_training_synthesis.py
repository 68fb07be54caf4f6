"""Unit tests for self-blending, call-channel simulation and landmark perturbations (monitor.training.synthesis)."""

from __future__ import annotations

import dataclasses
import unittest.mock as mock

import cv2
import numpy as np
import pytest

from monitor.training import synthesis as syn


def synthetic_face(size: int = 160, radius: float = 45.0) -> tuple[np.ndarray, np.ndarray]:
    """A textured image and 478 landmarks: the oval on a circle, every other point inside it."""
    rng = np.random.default_rng(0)
    img = rng.integers(40, 200, (size, size, 3)).astype(np.uint8)
    c = size / 2
    lm = np.zeros((478, 3), np.float32)
    inner_r = rng.uniform(0, radius * 0.6, 478)
    ang = rng.uniform(0, 2 * np.pi, 478)
    lm[:, 0] = c + inner_r * np.cos(ang)
    lm[:, 1] = c + inner_r * np.sin(ang)
    oval_ang = np.linspace(-np.pi / 2, 1.5 * np.pi, len(syn.FACE_OVAL), endpoint=False)
    lm[syn.FACE_OVAL, 0] = c + radius * np.cos(oval_ang)
    lm[syn.FACE_OVAL, 1] = c + radius * np.sin(oval_ang)
    return img, lm


def recipe(**overrides: object) -> syn.BlendParams:
    base = syn.draw_blend(np.random.default_rng(1))
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(6))
def test_mask_is_soft_bounded_and_zero_far_from_the_face(seed: int) -> None:
    img, lm = synthetic_face()
    p = syn.draw_blend(np.random.default_rng(seed))
    mask = syn.blend_mask(img.shape[:2], lm, p)
    assert mask.dtype == np.float32
    assert mask.min() >= 0.0
    assert mask.max() == pytest.approx(p.ratio, rel=1e-5)
    assert mask[:4, :4].max() < 1e-3 and mask[-4:, -4:].max() < 1e-3  # corners are background
    assert mask[80, 80] > 0.5 * p.ratio  # the face centre is blended


def test_blend_changes_only_the_masked_region() -> None:
    img, lm = synthetic_face()
    fake, mask = syn.self_blend(img, lm, recipe(ratio=1.0, rgb_shift=(20.0, -20.0, 20.0)))
    assert fake.shape == img.shape and fake.dtype == np.uint8
    outside = mask < 1e-4
    assert np.abs(fake[outside].astype(int) - img[outside].astype(int)).max() <= 1
    inside = mask > 0.9
    assert np.abs(fake[inside].astype(int) - img[inside].astype(int)).mean() > 5


def test_lower_face_mask_spares_the_forehead() -> None:
    img, lm = synthetic_face()
    lm[syn.BROWS, 1] = 80 - 10  # brows just above the centre, forehead points at the top
    kwargs = dict(hull_scale=(1.0, 1.0), warp_amp=0.0, morph=0, blur1=0.01, blur2=0.0, ratio=1.0)
    full = syn.blend_mask(img.shape[:2], lm, recipe(lower_face=False, **kwargs))
    lower = syn.blend_mask(img.shape[:2], lm, recipe(lower_face=True, **kwargs))
    forehead = (int(80 - 38), 80)  # y, x just inside the top of the oval
    assert full[forehead] > 0.9
    assert lower[forehead] < 0.1


def test_lagging_mask_follows_the_given_landmarks() -> None:
    img, lm = synthetic_face()
    moved = lm.copy()
    moved[:, 0] += 20
    p = recipe(warp_amp=0.0, hull_scale=(1.0, 1.0), morph=0)
    _, m_now = syn.self_blend(img, lm, p)
    _, m_lag = syn.self_blend(img, lm, p, mask_landmarks=moved)
    cx_now = (m_now.sum(axis=0) * np.arange(160)).sum() / m_now.sum()
    cx_lag = (m_lag.sum(axis=0) * np.arange(160)).sum() / m_lag.sum()
    assert cx_lag - cx_now == pytest.approx(20, abs=1.5)


def test_clip_blend_keeps_length_and_is_seeded() -> None:
    img, lm = synthetic_face()
    frames = [np.roll(img, i, axis=1) for i in range(8)]
    lms = [lm + np.array([i, 0, 0], np.float32) for i in range(8)]
    a = syn.self_blend_clip(frames, lms, np.random.default_rng(3))
    b = syn.self_blend_clip(frames, lms, np.random.default_rng(3))
    assert len(a) == 8
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert any(np.abs(x.astype(int) - f.astype(int)).mean() > 0.5 for x, f in zip(a, frames))


def test_channel_keeps_shape_and_identity_is_a_no_op() -> None:
    img, _ = synthetic_face()
    rng = np.random.default_rng(0)
    same = syn.apply_channel(img, syn.ChannelParams(1.0, 100, 0.0, 0.0), rng)
    assert np.array_equal(same, img)
    for seed in range(5):
        out = syn.apply_channel(img, syn.draw_channel(np.random.default_rng(seed)), rng)
        assert out.shape == img.shape and out.dtype == np.uint8


def test_heavy_channel_degrades() -> None:
    img, _ = synthetic_face()
    out = syn.apply_channel(img, syn.ChannelParams(0.4, 30, 5.0, 1.0), np.random.default_rng(0))
    assert np.abs(out.astype(int) - img.astype(int)).mean() > 5


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(cv2.PSNR(a, b))


@pytest.mark.parametrize("codec", sorted(syn.CALL_CODECS))
def test_codec_roundtrip_costs_more_at_coarser_quantisers(codec: str) -> None:
    img, _ = synthetic_face()
    img = cv2.resize(img, (112, 112), interpolation=cv2.INTER_AREA)
    lo, hi = syn.CALL_CODECS[codec][2]
    fine = syn.codec_roundtrip(img, codec, lo, (2, 1))
    coarse = syn.codec_roundtrip(img, codec, hi + 16, (2, 1))
    assert fine.shape == img.shape and fine.dtype == np.uint8
    assert not np.array_equal(fine, img)  # 4:2:0 and the quantiser always lose something
    assert _psnr(img, fine) > _psnr(img, coarse) + 2
    # Fine quantisers keep the luma close; the synthetic face's saturated edges lose more
    # colour to 4:2:0 than skin does, so colour PSNR is low even here.
    grey = cv2.COLOR_RGB2GRAY
    assert _psnr(cv2.cvtColor(img, grey), cv2.cvtColor(fine, grey)) > 35
    # One thread and a fixed quantiser: the same input gives the same bytes back.
    assert np.array_equal(fine, syn.codec_roundtrip(img, codec, lo, (2, 1)))


def test_codec_roundtrip_codes_an_inter_frame_after_motion() -> None:
    img, _ = synthetic_face()
    img = cv2.resize(img, (112, 112), interpolation=cv2.INTER_AREA)
    key = syn.codec_roundtrip(img, "h264", 28)
    inter = syn.codec_roundtrip(img, "h264", 28, (3, -2))
    # The second frame is predicted from a moved copy, so it decodes differently from a key
    # frame of the same image, and still shows the same image (not the moved reference).
    assert not np.array_equal(key, inter)
    moved = cv2.warpAffine(img, np.array([[1, 0, 3], [0, 1, -2]], np.float32), (112, 112), borderMode=cv2.BORDER_REPLICATE)
    assert _psnr(img, inter) > _psnr(moved, inter) + 3


def test_draw_channel_mixes_codecs_within_their_calibrated_ranges() -> None:
    draws = [syn.draw_channel(np.random.default_rng(seed), call_codecs=True) for seed in range(600)]
    kinds = {k: sum(d.codec == k for d in draws) for k in ("none", "h264", "vp8")}
    assert 0.18 < kinds["h264"] / len(draws) < 0.32 and 0.04 < kinds["vp8"] / len(draws) < 0.13
    assert 0.08 < sum(d.jpeg_quality < 100 for d in draws) / len(draws) < 0.25
    for d in draws:
        if d.codec != "none":
            lo, hi = syn.CALL_CODECS[d.codec][2]
            assert lo <= d.quantiser <= hi and d.jpeg_quality == 100  # a codec replaces JPEG
            assert max(abs(d.motion[0]), abs(d.motion[1])) <= 3


def test_default_channel_draws_are_unchanged() -> None:
    """The default draw consumes the generator as before the codec option existed, so the
    shipped bundle still reproduces bit for bit; these values are from that version."""
    expected = {
        0: ((0.764025, 100, 0.0, 0.0), 980063838),
        1: ((0.682684, 100, 0.0, 0.580648), 454543313),
        2: ((1.0, 100, 0.551496, 0.84009), 782285908),
        3: ((1.0, 100, 3.492972, 0.0), 465066510),
        4: ((0.962986, 65, 0.485016, 0.0), 404249391),
    }
    for seed, (values, next_draw) in expected.items():
        rng = np.random.default_rng(seed)
        p = syn.draw_channel(rng)
        assert (round(p.scale, 6), p.jpeg_quality, round(p.noise_sigma, 6), round(p.blur_sigma, 6)) == values
        assert p.codec == "none" and int(rng.integers(1 << 30)) == next_draw


def test_channel_with_a_codec_uses_it() -> None:
    img, _ = synthetic_face()
    img = cv2.resize(img, (112, 112), interpolation=cv2.INTER_AREA)
    p = syn.ChannelParams(1.0, 100, 0.0, 0.0, "vp8", 20, (1, 1))
    assert np.array_equal(syn.apply_channel(img, p, np.random.default_rng(0)), syn.codec_roundtrip(img, "vp8", 20, (1, 1)))


@pytest.mark.parametrize("seed", range(12))
def test_landmark_perturbation_moves_the_inner_face_not_the_contour(seed: int) -> None:
    rng = np.random.default_rng(seed)
    _, lm = synthetic_face()
    seq = np.stack([lm + rng.normal(0, 0.5, lm.shape).astype(np.float32) for _ in range(20)])
    donor = np.stack([lm + rng.normal(0, 2.0, lm.shape).astype(np.float32) for _ in range(20)])
    out, name = syn.perturb_landmarks(seq, rng, donor, recipe=2)
    assert name in syn.LANDMARK_FAKES
    assert out.shape == seq.shape and out.dtype == np.float32
    assert np.array_equal(out[:, syn.FACE_OVAL], seq[:, syn.FACE_OVAL])
    assert np.abs(out - seq).max() > 0


def test_piecewise_affine_is_identity_on_equal_points_and_carries_the_face_along() -> None:
    img, lm = synthetic_face()
    img = img.copy()
    img[73:78, 78:83] = 255  # a white dot in the middle of the face
    img[img < 255] //= 2
    src = lm[syn.WARP_POINTS, :2]
    assert np.array_equal(syn.piecewise_affine(img, src, src), img)
    moved = syn.piecewise_affine(img, src, src + np.array([6.0, 4.0], np.float32))
    ys, xs = np.nonzero(moved[..., 0] > 200)
    assert abs(xs.mean() - 86) < 0.6 and abs(ys.mean() - 79) < 0.6
    # The image border stays where it was.
    assert np.array_equal(moved[0], img[0]) and np.array_equal(moved[:, -1], img[:, -1])


def test_animated_still_follows_the_landmarks_but_keeps_one_frames_colour() -> None:
    img, lm = synthetic_face()
    # Lighting (or a pulse) changes over the clip; the head moves right.
    frames = [np.clip(img.astype(int) + 8 * i - 30, 0, 255).astype(np.uint8) for i in range(8)]
    lms = [lm + np.array([i, 0, 0], np.float32) for i in range(8)]
    a = syn.animate_still(frames, lms, np.random.default_rng(5))
    b = syn.animate_still(frames, lms, np.random.default_rng(5))
    assert len(a) == 8 and all(x.shape == img.shape and x.dtype == np.uint8 for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    centre = (slice(60, 100), slice(60, 100))
    assert np.ptp([f[centre].mean() for f in frames]) > 40
    assert np.ptp([x[centre].mean() for x in a]) < 3  # one source frame's colour throughout
    # The face moves with the landmarks: a later frame is the earlier one shifted right.
    shift = [np.abs(a[7][:, 60:100].astype(int) - a[0][:, 60 - d : 100 - d].astype(int)).mean() for d in range(10)]
    assert int(np.argmin(shift)) == 7


# --- the self-blending recipe's properties (DETECTOR.md), each checked directly ----------------


def test_blend_recipes_span_the_recipe_ranges() -> None:
    # Source shift within +-3% x / +-1.5% y of the face and rescale 0.95-1.05, RGB shifts +-20,
    # blend ratio 0.25-1 (below 1 too), two mask blurs, erode and dilate, with and without the
    # forehead, resample or sharpen: each reaches close to its bounds over many draws.
    rng = np.random.default_rng(0)
    ps = [syn.draw_blend(rng) for _ in range(3000)]
    sx = np.array([p.shift[0] for p in ps])
    sy = np.array([p.shift[1] for p in ps])
    assert np.abs(sx).max() <= 0.03 and np.abs(sx).max() > 0.028 and np.abs(sy).max() <= 0.015 and np.abs(sy).max() > 0.014
    scale = np.array([p.scale for p in ps])
    assert 0.95 <= scale.min() < 0.955 and 1.045 < scale.max() <= 1.05
    rgb = np.array([p.rgb_shift for p in ps])
    assert np.abs(rgb).max() <= 20 and np.abs(rgb).max() > 19
    ratio = np.array([p.ratio for p in ps])
    assert ratio.min() == 0.25 and ratio.max() == 1.0 and 0.2 < (ratio < 1).mean() < 0.8
    assert min(p.blur1 for p in ps) > 0 and np.mean([p.blur2 > 0 for p in ps]) > 0.9
    morph = np.array([p.morph for p in ps])
    assert (morph > 0).any() and (morph < 0).any() and (morph == 0).any()
    assert 0.3 < np.mean([p.lower_face for p in ps]) < 0.7
    resampled = np.mean([p.resample < 1 for p in ps])
    assert 0.3 < resampled < 0.7 and np.mean([p.warp_amp > 0.02 for p in ps]) > 0.3


def _neutral(**overrides: object) -> syn.BlendParams:
    """A recipe that changes nothing but what is overridden."""
    base = dict(lower_face=False, hull_scale=(1.0, 1.0), warp_seed=0, warp_amp=0.0, morph=0, blur1=0.02, blur2=0.02,
                ratio=1.0, shift=(0.0, 0.0), scale=1.0, rgb_shift=(0.0, 0.0, 0.0), hsv_shift=(0.0, 0.0, 0.0),
                contrast=1.0, brightness=0.0, resample=1.0, sharpen=0.0)
    return syn.BlendParams(**{**base, **overrides})  # type: ignore[arg-type]


def test_the_source_copy_moves_by_the_recipes_shift_and_scale() -> None:
    img, lm = synthetic_face()
    img = cv2.GaussianBlur(img, (0, 0), 2.0)  # texture phase correlation can lock onto
    size = syn.face_size(lm)
    moved = syn.source_copy(img, lm, _neutral(shift=(0.03, -0.015)))
    (dx, dy), _ = cv2.phaseCorrelate(np.float32(img.mean(axis=2)), np.float32(moved.mean(axis=2)))
    assert dx == pytest.approx(0.03 * size, abs=0.5) and dy == pytest.approx(-0.015 * size, abs=0.5)
    # A rescale about the face's centre: a dot 30 px right of it lands 1.05 times as far.
    centre = lm[syn.FACE_OVAL, :2].mean(axis=0)
    dot = np.zeros_like(img)
    cv2.circle(dot, (int(round(centre[0] + 30)), int(round(centre[1]))), 2, (255, 255, 255), -1)
    where = lambda a: np.array(np.unravel_index(np.argmax(cv2.GaussianBlur(a[..., 0], (0, 0), 2)), a.shape[:2]))[::-1]  # noqa: E731
    x_before, x_after = where(dot)[0], where(syn.source_copy(dot, lm, _neutral(scale=1.05)))[0]
    assert x_after - centre[0] == pytest.approx(1.05 * (x_before - centre[0]), abs=1.0)
    assert np.abs(syn.source_copy(img, lm, _neutral()).astype(int) - img).max() <= 2  # neutral: HSV rounding only


def test_the_mask_follows_the_recipes_ratio_blurs_morphology_and_deformation() -> None:
    img, lm = synthetic_face()
    shape = img.shape[:2]
    base = syn.blend_mask(shape, lm, _neutral())
    assert base.max() == pytest.approx(1.0)
    assert syn.blend_mask(shape, lm, _neutral(ratio=0.25)).max() == pytest.approx(0.25)
    # The second blur softens the edge further: a wider band of partial values.
    band = lambda m: int(((m > 0.05) & (m < 0.95)).sum())  # noqa: E731
    assert band(syn.blend_mask(shape, lm, _neutral(blur2=0.06))) > band(syn.blend_mask(shape, lm, _neutral(blur2=0.0))) * 1.3
    area = lambda m: float((m > 0.5).sum())  # noqa: E731
    assert area(syn.blend_mask(shape, lm, _neutral(morph=6))) > area(base) * 1.05  # dilated
    assert area(syn.blend_mask(shape, lm, _neutral(morph=-6))) < area(base) * 0.95  # eroded
    warped = syn.blend_mask(shape, lm, _neutral(warp_amp=0.04, warp_seed=3))
    assert np.abs(warped - base).max() > 0.5  # the hull itself moved somewhere
    assert area(syn.blend_mask(shape, lm, _neutral(hull_scale=(1.08, 1.08)))) > area(base) * 1.1


def test_resampling_softens_and_sharpening_crisps_the_pasted_face() -> None:
    img, lm = synthetic_face()
    detail = lambda a: float(cv2.Laplacian(np.float32(a.mean(axis=2)), cv2.CV_32F).var())  # noqa: E731
    assert detail(syn.source_copy(img, lm, _neutral(resample=0.4))) < 0.5 * detail(img)
    assert detail(syn.source_copy(img, lm, _neutral(sharpen=1.0))) > 1.2 * detail(img)


def test_colour_changes_of_the_recipe_reach_the_pasted_face() -> None:
    img, lm = synthetic_face()
    shifted = syn.source_copy(img, lm, _neutral(rgb_shift=(20.0, 0.0, -20.0)))
    delta = (shifted.astype(float) - img).reshape(-1, 3).mean(axis=0)
    assert delta[0] > 15 and abs(delta[1]) < 3 and delta[2] < -15
    fake, mask = syn.self_blend(img, lm, _neutral(rgb_shift=(20.0, 0.0, 0.0)))
    inside, outside = mask > 0.99, mask == 0
    assert (fake[..., 0].astype(float) - img[..., 0])[inside].mean() > 15
    assert np.array_equal(fake[outside], img[outside])


def test_a_clip_blend_replays_one_recipe_with_jitter_a_lagging_mask_and_freezes(monkeypatch: pytest.MonkeyPatch) -> None:
    # Per clip: one mask deformation and colour transform on every frame, per-frame jitter of the
    # blend ratio and offset, a mask 1-3 frames late, and occasional frozen segments.
    img, lm = synthetic_face()
    frames = [np.roll(img, k, axis=1) for k in range(12)]
    landmarks = [lm + np.float32([k, 0, 0]) for k in range(12)]
    lags: set[int] = set()
    froze = False
    for seed in range(40):
        calls: list[tuple[syn.BlendParams, int, int]] = []

        def recording(src: np.ndarray, lmk: np.ndarray, p: syn.BlendParams, mask_landmarks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
            which = next(i for i, f in enumerate(frames) if f is src)
            mask_of = next(i for i, m in enumerate(landmarks) if m is mask_landmarks)
            calls.append((p, which, mask_of))
            return src, np.zeros(src.shape[:2], np.float32)

        monkeypatch.setattr(syn, "self_blend", recording)
        syn.self_blend_clip(frames, landmarks, np.random.default_rng(seed))
        fixed = {dataclasses.replace(p, ratio=0.0, shift=(0.0, 0.0), scale=1.0) for p, _, _ in calls}
        assert len(fixed) == 1  # one recipe for the clip: only ratio, offset and scale move
        if len({round(p.ratio, 6) for p, _, _ in calls}) > 1:
            assert max(abs(p.shift[0] - calls[0][0].shift[0]) for p, _, _ in calls) > 0  # the offset jitters too
        lag = {i - m for i, (_, _, m) in enumerate(calls) if i >= 3}
        assert len(lag) == 1  # the same lag on every frame
        lags |= lag
        froze |= any(which < i for i, (_, which, _) in enumerate(calls))  # an earlier frame's face pasted again
    assert {1, 2, 3} <= lags and froze


LOWER_LIP = np.array([17, 14, 87, 317])


def _talking_sequence(t: int = 30, blink_at: tuple[int, ...] = (12, 13, 14)) -> np.ndarray:
    """A face whose head drifts, whose mouth opens and closes and which blinks at ``blink_at``."""
    _, lm = synthetic_face()
    # Eye corners and lids where perturb_landmarks' eye measures look for them.
    for corner_a, corner_b, lids in ((33, 133, (159, 145, 158, 153)), (362, 263, (386, 374, 385, 380))):
        x0 = 55.0 if corner_a == 33 else 90.0
        lm[corner_a, :2], lm[corner_b, :2] = (x0, 65.0), (x0 + 16, 65.0)
        for k, lid in enumerate(lids):
            lm[lid, :2] = (x0 + 8, 65.0 + (-3.0 if k % 2 == 0 else 3.0))
    seq = np.repeat(lm[None], t, axis=0)
    seq[:, :, 0] += 3 * np.sin(np.arange(t) * 0.3)[:, None]  # the head moves a little
    seq[:, LOWER_LIP, 1] += 4 * np.sin(np.arange(t) * 0.7)[:, None]  # the mouth opens and closes
    for f in blink_at:  # the lids meet
        for lid in (159, 145, 158, 153, 386, 374, 385, 380):
            seq[f, lid, 1] = 65.0
    return seq


def _draws(seq: np.ndarray, n: int = 400, fps: float = 10.0) -> dict[str, list[np.ndarray]]:
    """``n`` fakes of ``seq`` (seeds 0 to n-1), by kind."""
    by_kind: dict[str, list[np.ndarray]] = {k: [] for k in syn.LANDMARK_FAKES}
    donor = seq[::-1].copy()
    donor[:, LOWER_LIP, 1] += 6 * np.cos(np.arange(len(seq)) * 1.3)[:, None]  # the donor speaks otherwise
    donor[:, 468:478, 0] += 1.5 * np.sin(np.arange(len(seq)) * 0.8)[:, None]  # and looks about
    for seed in range(n):
        out, name = syn.perturb_landmarks(seq, np.random.default_rng(seed), donor=donor, fps=fps, recipe=2)
        by_kind[name].append(out)
    return by_kind


def test_landmark_fakes_cover_every_kind_of_the_recipe_in_even_shares() -> None:
    seq = _talking_sequence()
    counts = {k: len(v) for k, v in _draws(seq).items()}
    assert set(counts) == set(syn.LANDMARK_FAKES) and len(syn.LANDMARK_FAKES) == 7
    assert all(30 <= c <= 90 for c in counts.values()), counts  # 400 draws, ~57 each


def test_landmark_fake_magnitudes_are_relative_to_the_inter_ocular_distance() -> None:
    # DETECTOR.md: misalignment 1-5 degrees and 1-3%, jitter sigma 0.3-1.5%, relative to the
    # inter-ocular distance (here 35 px, on a face 90 px wide: face size would allow 2.6x more).
    seq = _talking_sequence()
    iod = syn.inter_ocular(seq)
    assert iod == pytest.approx(35.0, abs=0.5)
    inner = seq[:, syn.INNER, :2]
    radius = float(np.linalg.norm(inner - inner.mean(axis=1, keepdims=True), axis=2).max())
    largest = {"misalign": 0.0, "jitter": 0.0}
    for kind, fakes in _draws(seq).items():
        if kind not in largest:
            continue
        for out in fakes:
            d = float(np.linalg.norm(out[:, syn.INNER, :2] - inner, axis=2).max())
            if kind == "misalign":
                assert d <= 2 * np.sin(np.deg2rad(2.5)) * radius + 0.03 * iod + 1e-3
            else:
                assert d <= 0.015 * iod * 5  # five sigma
            largest[kind] = max(largest[kind], d)
    assert largest["misalign"] > 2 * np.sin(np.deg2rad(2.0)) * radius  # reaches 4 degrees and more
    assert largest["jitter"] > 0.015 * iod * 1.5


def test_misalignment_is_at_least_one_degree_and_one_percent(monkeypatch: pytest.MonkeyPatch) -> None:
    # At the window's end (a drifting one reaches its full size there): the inner face's mean
    # moves by the shift, 1-3% of the inter-ocular distance, and turns by 1-5 degrees.
    _no_hard(monkeypatch)
    seq = _talking_sequence()
    iod = syn.inter_ocular(seq)
    before = seq[-1, syn.INNER, :2]
    fakes = _draws(seq)["misalign"]
    assert len(fakes) > 30
    for out in fakes:
        after = out[-1, syn.INNER, :2]
        shift = float(np.linalg.norm(after.mean(axis=0) - before.mean(axis=0)))
        assert 0.01 * iod - 1e-3 <= shift <= 0.03 * iod + 1e-3
        a, b = before - before.mean(axis=0), after - after.mean(axis=0)
        turn = np.degrees(np.arctan2((a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]).sum(), (a * b).sum()))
        assert 1.0 - 1e-3 <= abs(turn) <= 5.0 + 1e-3


def test_a_quarter_of_landmark_fakes_are_weakened_towards_the_real_sequence() -> None:
    # "Sample magnitudes down to near zero": a hard fake is the full one scaled by 5-30%.
    seq = _talking_sequence()
    donor = seq[::-1].copy()
    ratios = []
    hard_kinds = set()
    for seed in range(400):
        full, name = syn.perturb_landmarks(seq, np.random.default_rng(seed), donor=donor, recipe=2)
        # Same draws up to the hard/not choice: compare with the fake forced to full strength.
        with mock.patch.object(syn, "HARD_SHARE", 0.0):
            strong, _ = syn.perturb_landmarks(seq, np.random.default_rng(seed), donor=donor, recipe=2)
        span = float(np.abs(strong - seq).max())
        assert span > 0, name  # a fake never comes out as the real window
        ratios.append(float(np.abs(full - seq).max()) / span)
        if ratios[-1] < 0.99:
            hard_kinds.add(name)
    ratios_a = np.array(ratios)
    hard = ratios_a < 0.99
    assert 0.18 < hard.mean() < 0.32, hard.mean()
    assert ratios_a[hard].min() >= 0.05 - 1e-3 and ratios_a[hard].max() <= 0.3 + 1e-3 and ratios_a[hard].min() < 0.1
    assert hard_kinds == set(syn.LANDMARK_FAKES)  # every kind has its hard examples


def _no_hard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(syn, "HARD_SHARE", 0.0)


def test_low_pass_removes_fast_inner_motion_at_two_to_four_hertz(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_hard(monkeypatch)
    t, fps = 60, 30.0
    seq = _talking_sequence(t, blink_at=())
    wobble = np.sin(2 * np.pi * 9.0 * np.arange(t) / fps)  # 9 Hz trembling of the inner face
    seq[:, syn.INNER, 1] += 2.0 * wobble[:, None]
    fast = lambda s: float(np.abs(np.diff(s[:, syn.INNER, 1].mean(axis=1) - s[:, syn.FACE_OVAL, 1].mean(axis=1), 2)).mean())  # noqa: E731
    outs = [o for o in _draws(seq, n=200, fps=fps)["low_pass"]]
    assert outs and all(fast(o) < 0.35 * fast(seq) for o in outs)
    # At 10 fps a 2-4 Hz cutoff is still below Nyquist and smooths the inner face too.
    seq10 = _talking_sequence(30, blink_at=())
    seq10[:, syn.INNER, 1] += 2.0 * np.sin(2 * np.pi * 4.5 * np.arange(30) / 10.0)[:, None]
    outs10 = [o for o in _draws(seq10, n=200, fps=10.0)["low_pass"]]
    assert outs10 and all(fast(o) < 0.8 * fast(seq10) for o in outs10)
    # Below 4.4 fps no 2-4 Hz cutoff fits under Nyquist: the inner face holds still against the contour.
    against_contour = lambda s: s[:, syn.INNER, :2] - s[:, syn.FACE_OVAL, :2].mean(axis=1, keepdims=True)  # noqa: E731
    outs4 = [o for o in _draws(seq10, n=200, fps=4.0)["low_pass"]]
    assert outs4 and all(np.ptp(against_contour(o), axis=0).max() < 1e-3 for o in outs4)


def test_mouth_delay_transplant_and_eye_transplant(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_hard(monkeypatch)
    seq = _talking_sequence()
    rel = lambda s, idx: s[:, idx, :2] - s[:, idx, :2].mean(axis=1, keepdims=True)  # noqa: E731
    draws = _draws(seq)
    for out in draws["mouth_delay"]:
        assert not np.allclose(rel(out, syn.MOUTH), rel(seq, syn.MOUTH), atol=1e-3)
        lags = [k for k in range(2, 7) if np.allclose(rel(out, syn.MOUTH)[k:], rel(seq, syn.MOUTH)[:-k], atol=1e-3)]
        assert lags, "the mouth is not delayed by 2-6 frames"
    regions = set()
    irises = np.arange(468, 478)
    for out in draws["transplant"]:
        for name, idx in (("mouth", syn.MOUTH), ("eyes", syn.EYES)):
            if not np.allclose(out[:, idx], seq[:, idx], atol=1e-4):
                regions.add(name)
                other = syn.EYES if name == "mouth" else syn.MOUTH
                assert np.allclose(out[:, other], seq[:, other])  # one region per fake
                if name == "eyes":  # the irises move with the lids
                    assert not np.allclose(out[:, irises], seq[:, irises], atol=1e-4)
    assert regions == {"mouth", "eyes"}


def test_transplanted_motion_is_rescaled_to_this_face(monkeypatch: pytest.MonkeyPatch) -> None:
    # The donor's face is twice as large: its mouth motion arrives at half its size.
    _no_hard(monkeypatch)
    seq = _talking_sequence()
    donor = seq.copy()
    donor[:, LOWER_LIP, 1] += 6 * np.cos(np.arange(len(seq)) * 1.3)[:, None]
    donor[:, :, :2] = (donor[:, :, :2] - 80.0) * 2.0 + 80.0
    rel = lambda s: s[:, syn.MOUTH, :2] - s[:, syn.MOUTH, :2].mean(axis=1, keepdims=True)  # noqa: E731
    spread = lambda s: float(np.ptp(rel(s)[:, :, 1], axis=0).max())  # noqa: E731
    seen = 0
    for seed in range(300):
        out, name = syn.perturb_landmarks(seq, np.random.default_rng(seed), donor=donor, recipe=2)
        if name == "transplant" and not np.allclose(out[:, syn.MOUTH], seq[:, syn.MOUTH], atol=1e-4):
            assert spread(out) == pytest.approx(spread(donor) / 2, rel=0.02)
            seen += 1
    assert seen > 5


def test_blinks_are_removed_or_stretched(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_hard(monkeypatch)
    seq = _talking_sequence()
    closed = lambda s: syn.eye_aspect(s) < 0.6 * np.median(syn.eye_aspect(seq))  # noqa: E731
    assert closed(seq).sum() == 3
    seen = set()
    for out in _draws(seq)["blink"]:
        n = int(closed(out).sum())
        assert n == 0 or n >= 6, n  # removed, or 2-3 times as long
        seen.add("removed" if n == 0 else "stretched")
    assert seen == {"removed", "stretched"}
    # No blink in the window: the eyes' motion about their centre stops.
    still = _talking_sequence(blink_at=())
    still[:, syn.EYES, 1] += 0.8 * np.sin(np.arange(30) * 0.9)[:, None] * (np.arange(len(syn.EYES)) % 2)[None, :]
    for out in _draws(still, n=100)["blink"]:
        eyes = out[:, syn.EYES, :2] - out[:, syn.EYES, :2].mean(axis=1, keepdims=True)
        assert np.ptp(eyes, axis=0).max() < 1e-3


def test_a_frozen_segment_of_the_inner_face(monkeypatch: pytest.MonkeyPatch) -> None:
    # A tool dropping frames shows its last face meanwhile: 3-7 frames of one expression.
    _no_hard(monkeypatch)
    seq = _talking_sequence()
    seq[:, syn.INNER, 1] += np.linspace(0, 6, 30)[:, None] * (np.arange(len(syn.INNER)) % 2)[None, :]  # expression changes
    rel = lambda s: s[:, syn.INNER, :2] - s[:, syn.INNER, :2].mean(axis=1, keepdims=True)  # noqa: E731
    fakes = _draws(seq)["freeze"]
    assert len(fakes) > 30
    lengths = set()
    for out in fakes:
        r = rel(out)
        same = [f for f in range(1, 30) if np.allclose(r[f], r[f - 1], atol=1e-4)]
        assert same and same == list(range(same[0], same[-1] + 1))  # one run of held frames
        lengths.add(len(same) + 1)
        assert np.allclose(out[: same[0] - 1], seq[: same[0] - 1]) and np.allclose(out[same[-1] + 1 :], seq[same[-1] + 1 :])
    assert {3, 7} <= lengths and lengths <= set(range(2, 8))  # 2: a freeze cut short by the window's end


def test_a_blink_on_the_last_frame_is_removed_not_left_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_hard(monkeypatch)
    seq = _talking_sequence(blink_at=(29,))
    for out in _draws(seq, n=200)["blink"]:
        assert not np.allclose(out, seq)


@pytest.mark.parametrize("concave", [True, False])
def test_the_blend_mask_can_be_concave_in_recipe_2(concave: bool) -> None:
    # SBI deforms its mask elastically; recipe 1's deformed convex hull is never concave.
    _, lm = synthetic_face()
    solidity = []
    for seed in range(40):
        m = (syn.blend_mask((160, 160), lm, _neutral(warp_amp=0.04, warp_seed=seed, blur1=0.0, blur2=0.0, concave=concave)) > 0.5).astype(np.uint8)
        contour = max(cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[0], key=cv2.contourArea)
        solidity.append(cv2.contourArea(contour) / cv2.contourArea(cv2.convexHull(contour)))
    if concave:
        assert min(solidity) < 0.96  # an undeformed hull rasterises at about 0.99
    else:
        assert min(solidity) > 0.975


def test_pair_augment_moves_the_mask_with_the_crop_and_spans_its_ranges() -> None:
    crop = np.zeros((160, 160, 3), np.uint8)
    mask = np.zeros((160, 160), np.float32)
    crop[50:90, 60:100] = 255
    mask[50:90, 60:100] = 1.0
    looks = [syn.draw_pair_augment(np.random.default_rng(s)) for s in range(300)]
    scales = np.array([a.crop_scale for a in looks])
    shifts = np.array([a.crop_shift for a in looks])
    assert 0.92 <= scales.min() < 0.93 and 1.07 < scales.max() <= 1.08 and np.abs(shifts).max() == 4
    small = lambda m: cv2.resize(m, (112, 112), interpolation=cv2.INTER_AREA)  # noqa: E731
    for a in looks[:20]:
        a = dataclasses.replace(a, contrast=1.0, brightness=0.0, rgb_shift=(0.0, 0.0, 0.0), hsv_shift=(0.0, 0.0, 0.0))
        face = syn.augment_pair_member(crop, a)[..., 0] / 255.0
        # The mask lands where the face's blended square does, not where it was.
        moved = np.abs(small(syn.augment_mask(mask, a)) - face).mean()
        assert moved < 0.01
        if abs(a.crop_scale - 1) > 0.02 or max(map(abs, a.crop_shift)) >= 2:
            assert moved < 0.25 * np.abs(small(mask) - face).mean()
    # The colour part changes a grey face.
    grey = np.full((160, 160, 3), 128, np.uint8)
    moved = [float(np.abs(syn.augment_pair_member(grey, a).astype(int) - 128).mean()) for a in looks[:50]]
    assert max(moved) > 8


def test_recipe_1_landmark_perturbations_stay_within_their_magnitudes() -> None:
    # Recipe 1 (the shipped weights'; docs/detector.md): relative to face size, inner-face
    # misalignment up to 5 degrees and 3%, jitter sigma up to 1.5%, a mouth 2-6 frames late.
    _, lm = synthetic_face()
    t = 30
    phase = np.sin(np.arange(t) * 0.7)[:, None]
    seq = np.repeat(lm[None], t, axis=0)
    seq[:, :, 0] += 3 * np.sin(np.arange(t) * 0.3)[:, None]  # the head moves a little
    seq[:, syn.MOUTH, 1] += 4 * phase  # the mouth opens and closes
    size = syn.face_size(lm)
    inner = seq[:, syn.INNER, :2]
    radius = float(np.abs(inner - inner.mean(axis=1, keepdims=True)).max())
    seen: set[int] = set()
    for seed in range(200):
        kind = int(np.random.default_rng(seed).integers(0, 6))  # perturb_landmarks' first draw
        out, name = syn.perturb_landmarks(seq, np.random.default_rng(seed), donor=seq[::-1].copy(), recipe=1)
        assert name == syn.LANDMARK_FAKES_V1[kind]
        d = out[:, syn.INNER, :2] - inner
        if kind == 0:
            assert np.abs(d).max() <= np.sin(np.deg2rad(5)) * radius * 1.5 + 0.03 * size + 1e-3
        elif kind == 1:
            assert np.abs(d).max() <= 0.015 * size * 6
        elif kind == 3:
            rel = lambda s: s[:, syn.MOUTH, :2] - s[:, syn.MOUTH, :2].mean(axis=1, keepdims=True)  # noqa: E731
            lags = [k for k in range(2, 7) if np.allclose(rel(out)[k:], rel(seq)[:-k], atol=1e-3)]
            assert lags, "the mouth is not delayed by 2-6 frames"
        seen.add(kind)
    assert seen == set(range(6))

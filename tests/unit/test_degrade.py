"""Degraded copies for `monitor evaluate --degrade` (monitor.training.degrade): what each kind
does to the pixels, checked on small lossless clips generated here."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from monitor.training.degrade import degrade_clip, parse_degradation


def _clip(path: Path, width: int, height: int, frames: int = 5, value: int | None = None, fps: int = 10) -> Path:
    """A lossless (FFV1) clip of textured or flat frames of any size, odd ones included."""
    rng = np.random.default_rng(1)
    with av.open(str(path), "w") as c:
        s = c.add_stream("ffv1", rate=fps)
        s.width, s.height, s.pix_fmt = width, height, "yuv444p"
        for i in range(frames):
            img = np.full((height, width, 3), value, np.uint8) if value is not None else cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3)).astype(np.uint8), (0, 0), 0.7)
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def _decoded(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


@pytest.mark.parametrize(("size", "expected"), [((480, 320), (480, 320)), ((320, 480), (320, 480)), ((640, 360), (640, 360))])
def test_360p_never_upscales_a_clip_whose_shorter_side_is_already_360_or_less(tmp_path: Path, size: tuple[int, int], expected: tuple[int, int]) -> None:
    out = degrade_clip(_clip(tmp_path / "in.mkv", *size, frames=2), tmp_path / "out.mp4", parse_degradation("360p"))
    h, w = _decoded(out)[0].shape[:2]
    assert (w, h) == expected


def test_degraded_noise_is_seeded_by_the_seed_given(tmp_path: Path) -> None:
    src = _clip(tmp_path / "grey.mkv", 64, 48, value=128)
    d = parse_degradation("noise")
    a = _decoded(degrade_clip(src, tmp_path / "a.mp4", d, seed=1))
    b = _decoded(degrade_clip(src, tmp_path / "b.mp4", d, seed=1))
    c = _decoded(degrade_clip(src, tmp_path / "c.mp4", d, seed=2))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_degraded_noise_has_the_sigma_asked_for_and_does_not_wrap(tmp_path: Path) -> None:
    grey = _clip(tmp_path / "grey.mkv", 64, 48, value=128)
    clean = np.array(_decoded(degrade_clip(grey, tmp_path / "clean.mp4", parse_degradation("300k"))), float)
    noisy = np.array(_decoded(degrade_clip(grey, tmp_path / "noisy.mp4", parse_degradation("noise8"))), float)
    # 2 Mbit/s H.264 keeps most of sigma 8 on a 64x48 frame; a flat frame without noise stays flat.
    assert clean.std() < 1.5 and noisy.std() > 4.0
    white = _clip(tmp_path / "white.mkv", 64, 48, value=250)
    bright = np.array(_decoded(degrade_clip(white, tmp_path / "w.mp4", parse_degradation("noise8"))), float)
    assert bright.mean() > 235 and np.percentile(bright, 1) > 200  # clipped at 255, never wrapped to black


def test_a_lower_bitrate_makes_a_smaller_copy(tmp_path: Path) -> None:
    src = _clip(tmp_path / "tex.mkv", 320, 240, frames=20)
    low = degrade_clip(src, tmp_path / "low.mp4", parse_degradation("300k"))
    high = degrade_clip(src, tmp_path / "high.mp4", parse_degradation("3000k"))
    assert low.stat().st_size < 0.5 * high.stat().st_size
    seconds = 20 / 10
    assert low.stat().st_size * 8 / seconds < 2 * 300_000  # about the bitrate asked for


def test_an_odd_sized_clip_is_degraded_to_an_even_size(tmp_path: Path) -> None:
    out = degrade_clip(_clip(tmp_path / "odd.mkv", 161, 121, frames=2), tmp_path / "out.mp4", parse_degradation("300k"))
    h, w = _decoded(out)[0].shape[:2]
    assert (w, h) == (160, 120)

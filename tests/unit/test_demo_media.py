"""Unit tests for the synthetic demo face video (monitor.sources.demo_media)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import av
import numpy as np
import pytest

from monitor.sources.demo_media import load_face_image, render_frame, write_clip

# SHA-256 of the RGB pixels of monitor/assets/astronaut.png (skimage.data.astronaut()'s portrait),
# row-major; PNG is lossless, so every decoder gives these exact bytes.
ASTRONAUT_RGB_SHA256 = "a8c429c18afa7b0fd5673e598d73a21225d94c864a71bbb3885126fdecb41071"


def test_face_image_is_the_astronaut_portrait() -> None:
    image = load_face_image()
    assert image.shape == (512, 512, 3)
    assert image.dtype == np.uint8
    assert not image.flags.writeable  # shared and cached
    # The right way up and in RGB order: the orange suit fills the lower half (red well above
    # blue there), the pale wall behind her the upper half. Upside down or BGR fails these.
    top, bottom = image[:256].reshape(-1, 3).mean(0), image[256:].reshape(-1, 3).mean(0)
    assert bottom[0] > 1.8 * bottom[2], bottom
    assert top.mean() > bottom.mean() + 30, (top, bottom)
    assert image[400, 250].tolist() == [143, 37, 17]  # a pixel of the suit
    assert hashlib.sha256(image.tobytes()).hexdigest() == ASTRONAUT_RGB_SHA256  # and every other pixel


@pytest.mark.parametrize(("width", "height", "faces"), [(640, 480, 1), (1280, 720, 1), (1280, 720, 2), (320, 240, 2)])
def test_render_frame_shape_and_dtype(width: int, height: int, faces: int) -> None:
    frame = render_frame(0.5, width, height, faces=faces)
    assert frame.shape == (height, width, 3)
    assert frame.dtype == np.uint8


def test_render_frame_is_deterministic() -> None:
    a = render_frame(1.234, 640, 480)
    b = render_frame(1.234, 640, 480)
    assert np.array_equal(a, b)


def test_render_frame_moves_smoothly_over_time() -> None:
    frames = [render_frame(i / 30, 640, 480).astype(np.int16) for i in (0, 1, 60)]
    step = np.abs(frames[1] - frames[0]).mean()
    far = np.abs(frames[2] - frames[0]).mean()
    assert step > 0  # it moves from frame to frame...
    assert far > 3 * step  # ...a little at a time


def test_two_faces_fill_both_halves() -> None:
    frame = render_frame(2.0, 640, 480, faces=2)
    background = frame[0, 0]
    for half in (frame[:, :320], frame[:, 320:]):
        assert (half != background).any(axis=2).mean() > 0.05


def test_render_frame_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        render_frame(0.0, 640, 480, faces=3)
    with pytest.raises(ValueError):
        render_frame(0.0, 8, 8)


@pytest.mark.parametrize(
    ("name", "codec", "codec_name"),
    [("clip.mp4", "h264", "h264"), ("clip.mkv", "mpeg4", "mpeg4"), ("clip.webm", "vp8", "vp8")],
)
def test_write_clip_reads_back(tmp_path: Path, name: str, codec: str, codec_name: str) -> None:
    path = write_clip(tmp_path / name, 0.5, fps=20, width=160, height=120, codec=codec, gop=5)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == codec_name
        frames = list(container.decode(stream))
    assert len(frames) == 10
    assert {(f.width, f.height) for f in frames} == {(160, 120)}
    if codec == "h264":
        assert sum(f.key_frame for f in frames) == 2  # gop=5 over 10 frames


def test_write_clip_rejects_unknown_codec(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_clip(tmp_path / "x.mp4", 0.1, codec="prores")

"""Portrait phone video: frames are turned upright from the container's display matrix."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from monitor.config import AnalysisConfig
from monitor.faces import FaceTracker
from monitor.sources.av_source import sample_video
from monitor.training.degrade import Degradation, degrade_clip
from monitor.types import Frame, display_turns
from tests.support.media import phone_clip

ASSET = Path(__file__).resolve().parents[2] / "monitor" / "assets" / "astronaut.png"


def marker_frames(n: int = 6, width: int = 96, height: int = 64) -> list[np.ndarray]:
    """Upright frames, grey with a white block in the top-left corner only."""
    frame = np.full((height, width, 3), 60, np.uint8)
    frame[:16, :24] = 255
    return [frame] * n


def bright_centre(rgb: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(rgb[..., 0] > 160)
    return float(xs.mean()) / rgb.shape[1], float(ys.mean()) / rgb.shape[0]


@pytest.mark.parametrize(("rotation", "turns"), [(0, 0), (-90, 3), (90, 1), (180, 2), (-180, 2), (-89.6, 3), (None, 0)])
def test_display_turns(rotation: float | None, turns: int) -> None:
    assert display_turns(rotation) == turns


@pytest.mark.parametrize("turns", [1, 2, 3])
def test_scanned_frames_are_upright(tmp_path: Path, turns: int) -> None:
    clip = phone_clip(tmp_path / "phone.mp4", marker_frames(), 10, turns)
    with av.open(str(clip)) as c:  # the fixture really is stored turned, with a matrix
        raw = next(c.decode(video=0))
        assert raw.rotation != 0 and (raw.width, raw.height) == ((64, 96) if turns % 2 else (96, 64))
    frames = list(sample_video(str(clip), 10.0))
    assert len(frames) == 6
    for frame in frames:
        rgb = frame.rgb()
        assert (frame.width, frame.height) == (96, 64) and rgb.shape == (64, 96, 3)
        assert not rgb.flags.writeable
        x, y = bright_centre(rgb)
        assert x < 0.25 and y < 0.25, (turns, x, y)


def test_degraded_copy_is_written_upright(tmp_path: Path) -> None:
    clip = phone_clip(tmp_path / "phone.mp4", marker_frames(), 10, 1)
    out = degrade_clip(clip, tmp_path / "degraded.mp4", Degradation(bitrate=300_000))
    with av.open(str(out)) as c:
        frame = next(c.decode(video=0))
        assert frame.rotation == 0
        rgb = frame.to_ndarray(format="rgb24")
    assert rgb.shape == (64, 96, 3)
    x, y = bright_centre(rgb)
    assert x < 0.25 and y < 0.25


def _faces(rgb: np.ndarray) -> list:
    tracker = FaceTracker("test", AnalysisConfig())
    try:
        return list(tracker.process(Frame("test", 0, 0.0, 0.0, rgb.shape[1], rgb.shape[0], rgb), rgb).faces)
    finally:
        tracker.close()


def test_face_in_portrait_phone_video_is_found_where_it_is_upright(tmp_path: Path) -> None:
    """The astronaut filmed 'portrait': stored lying on her side, displayed upright."""
    bgr = cv2.imread(str(ASSET), cv2.IMREAD_COLOR)
    upright = np.ascontiguousarray(cv2.resize(bgr[:, :, ::-1], (256, 256))[:, 16:240])  # 224 wide, 256 high
    clip = phone_clip(tmp_path / "phone.mp4", [upright] * 3, 10, 1)
    expected = _faces(upright)
    assert len(expected) == 1
    frames = list(sample_video(str(clip), 10.0))
    assert len(frames) == 3
    for frame in frames:
        faces = _faces(frame.rgb())
        assert len(faces) == 1
        assert np.allclose(faces[0].bbox, expected[0].bbox, atol=6), (faces[0].bbox, expected[0].bbox)
    # Control: the stored pixels show the face on its side; without the turn it is missed
    # or found only with a strongly rolled, occluded-looking mesh.
    with av.open(str(clip)) as c:
        lying = _faces(next(c.decode(video=0)).to_ndarray(format="rgb24"))
    assert not lying or not np.allclose(lying[0].bbox, expected[0].bbox, atol=6)

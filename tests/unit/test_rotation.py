"""Portrait and mirrored phone video: frames are shown as the container's display matrix says."""

from __future__ import annotations

import os
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from monitor.config import AnalysisConfig
from monitor.faces import FaceTracker
from monitor.sources.av_source import sample_video
from monitor.sources.demo_media import write_clip
from monitor.training.degrade import Degradation, degrade_clip
from monitor.types import Frame, matrix_orientation
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


# Every orientation a display matrix can express: (degrees, hflip, vflip).
ORIENTATIONS = [(d, h, v) for d in (0, 90, 180, -90) for h in (False, True) for v in (False, True) if not (h and v)]


@pytest.mark.parametrize(
    ("matrix", "expected"),
    [
        ((1, 0, 0, 0, 1, 0, 0, 0, 1), None),
        ((0, 1, 0, -1, 0, 0, 0, 0, 1), (True, False, True)),  # phone upright: turn clockwise
        ((-1, 0, 0, 0, 1, 0, 0, 0, 1), (False, False, True)),  # mirror only (FFmpeg reads -180)
        ((1, 0, 0, 0, -1, 0, 0, 0, 1), (False, True, False)),  # upside-down mirror (reads 0)
        ((0.6, 0.8, 0, -0.8, 0.6, 0, 0, 0, 1), (True, False, True)),  # 53 degrees: nearest quarter
    ],
)
def test_matrix_orientation(matrix: tuple[float, ...], expected: tuple[bool, bool, bool] | None) -> None:
    assert matrix_orientation([v * 65536 for v in matrix]) == expected


@pytest.mark.parametrize(("degrees", "hflip", "vflip"), ORIENTATIONS)
def test_scanned_frames_are_shown_as_the_matrix_says(tmp_path: Path, degrees: int, hflip: bool, vflip: bool) -> None:
    clip = phone_clip(tmp_path / "phone.mp4", marker_frames(), 10, degrees, hflip, vflip)
    if degrees % 180:  # the fixture really is stored turned
        with av.open(str(clip)) as c:
            assert next(c.decode(video=0)).width == 64
    frames = list(sample_video(str(clip), 10.0))
    assert len(frames) == 6
    for frame in frames:
        rgb = frame.rgb()
        assert (frame.width, frame.height) == (96, 64) and rgb.shape == (64, 96, 3)
        assert not rgb.flags.writeable
        x, y = bright_centre(rgb)
        assert x < 0.25 and y < 0.25, (degrees, hflip, vflip, x, y)


@pytest.mark.parametrize(("degrees", "hflip", "vflip"), [(-90, False, False), (0, True, False), (90, False, True)])
def test_degraded_copy_is_written_as_displayed(tmp_path: Path, degrees: int, hflip: bool, vflip: bool) -> None:
    clip = phone_clip(tmp_path / "phone.mp4", marker_frames(), 10, degrees, hflip, vflip)
    out = degrade_clip(clip, tmp_path / "degraded.mp4", Degradation(bitrate=300_000))
    with av.open(str(out)) as c:
        frame = next(c.decode(video=0))
        assert frame.side_data.get("DISPLAYMATRIX") is None
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
    clip = phone_clip(tmp_path / "phone.mp4", [upright] * 3, 10, -90)
    expected = _faces(upright)
    assert len(expected) == 1
    frames = list(sample_video(str(clip), 10.0))
    assert len(frames) == 3
    for frame in frames:
        faces = _faces(frame.rgb())
        assert len(faces) == 1
        assert np.allclose(faces[0].bbox, expected[0].bbox, atol=6), (faces[0].bbox, expected[0].bbox)
    # Control: in the stored pixels the face lies on its side. MediaPipe may still find it
    # there, but not where the viewer sees it, so the boxes above come from the turn.
    with av.open(str(clip)) as c:
        lying = _faces(next(c.decode(video=0)).to_ndarray(format="rgb24"))
    assert not lying or not np.allclose(lying[0].bbox, expected[0].bbox, atol=6)


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_converting_decoded_frames_starts_no_threads_and_leaves_none_with_the_frames(tmp_path: Path) -> None:
    # PyAV converts with a thread per CPU by default, kept with each frame: a stream's held
    # frames kept ~25 FFmpeg threads alive each on this 2-CPU machine (benchmarks/soak.py).
    clip = write_clip(tmp_path / "c.mp4", 1.0, fps=30, width=320, height=240)

    def decoded() -> list[av.VideoFrame]:
        with av.open(str(clip)) as container:
            return list(container.decode(video=0))

    held = decoded()
    before = _threads()
    defaults = [vf.to_ndarray(format="rgb24") for vf in held]  # the control: PyAV's default
    if _threads() < before + len(held):
        pytest.skip(f"PyAV's default conversion starts no threads here ({os.cpu_count()} CPU): nothing to tell apart")
    frames = [Frame.from_decoded("s", i, i / 30, 0.0, vf) for i, vf in enumerate(decoded())]
    before = _threads()
    images = [f.rgb() for f in frames]
    assert _threads() <= before, "converted frames hold threads"
    assert all(im.shape == (240, 320, 3) and im.dtype == np.uint8 for im in images)
    assert all(np.array_equal(a, b) for a, b in zip(images, defaults, strict=True))  # the same pixels


def test_a_plugin_frame_is_converted_without_pyav_only_arguments() -> None:
    class PluginFrame:  # what a source plugin may hand over (monitor.types.Decoded)
        width, height = 4, 2

        def to_ndarray(self, format: str) -> np.ndarray:  # noqa: A002  (no **kwargs: threads would break it)
            assert format == "rgb24"
            return np.full((2, 4, 3), 7, np.uint8)

    assert Frame.from_decoded("s", 0, 0.0, 0.0, PluginFrame()).rgb().tolist() == np.full((2, 4, 3), 7).tolist()

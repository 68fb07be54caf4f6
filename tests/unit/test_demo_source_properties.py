"""Tests (from a mutation audit) of the built-in demo stream (monitor.sources.demo, monitor.sources.demo_media).

They read ``DemoSource._read`` directly with a hand-moved clock, so pacing is checked without
any wall-clock timing: the source asks to sleep until each frame's time, and the fake sleep moves
the clock by exactly that much.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from monitor.clock import FakeClock
from monitor.errors import ConfigError
from monitor.metrics import Metrics
from monitor.sources.demo import DemoSource
from monitor.sources.demo_media import load_face_image, render_frame, write_clip


def _demo(clock: FakeClock, **options: object) -> tuple[DemoSource, list[float]]:
    src = DemoSource("demo", "demo://astronaut", metrics=Metrics(), clock=clock, config=DemoSource.Config(**options))  # type: ignore[arg-type]
    sleeps: list[float] = []

    def fake_sleep(seconds: float) -> bool:
        sleeps.append(seconds)
        clock.advance(seconds)
        return True

    src._sleep = fake_sleep  # type: ignore[method-assign]
    src._open()
    return src, sleeps


def test_demo_frames_are_rendered_live_at_fps_from_stream_time_zero() -> None:
    clock = FakeClock(start=100.0)
    src, sleeps = _demo(clock, fps=10.0, width=160, height=120)
    frames = []
    for frame in src._read():
        frames.append(frame)
        if len(frames) == 4:
            break
    # Stream time counts from 0 in steps of 1/fps...
    assert [f.pts_s for f in frames] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert [f.seq for f in frames] == [1, 2, 3, 4]
    # ...and each frame leaves when its time has come, not as fast as it can be rendered.
    assert [f.received_at for f in frames] == pytest.approx([100.0, 100.1, 100.2, 100.3])
    assert sleeps == pytest.approx([0.1, 0.1, 0.1])


def test_demo_frames_match_their_configuration_and_are_read_only() -> None:
    src, _ = _demo(FakeClock(), fps=5.0, width=320, height=200, faces=2)
    frame = next(iter(src._read()))
    assert (frame.width, frame.height) == (320, 200)
    assert isinstance(frame.decoded, np.ndarray)
    assert frame.decoded.shape == (200, 320, 3)
    assert not frame.decoded.flags.writeable  # a stage cannot change what another holds
    # Two faces, as configured, exactly as render_frame draws them.
    assert np.array_equal(frame.decoded, render_frame(0.0, 320, 200, faces=2))


@pytest.mark.parametrize("url", ["demo://", "demo://other", "demo://astronaut/x", "demo://Astronaut"])
def test_only_the_builtin_demo_stream_is_accepted(url: str) -> None:
    with pytest.raises(ConfigError, match="demo://astronaut"):
        DemoSource("demo", url, metrics=Metrics())


# --- demo_media: what render_frame's docstring and comments promise ----------------------


def _face_box(frame: np.ndarray, background: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero((frame != background).any(axis=2))
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


BACKGROUND = render_frame(0.0, 640, 480)[0, 0]  # the plain background, whatever its colour


def test_the_background_is_plain_and_the_turned_patches_paste_seamlessly() -> None:
    """Everything around the face is one colour, the colour the rotated patches are padded with."""
    import monitor.sources.demo_media as dm

    frame = render_frame(1.3, 640, 480)
    x0, y0, x1, y1 = _face_box(frame, frame[0, 0])
    outside = np.ones(frame.shape[:2], dtype=bool)
    outside[y0:y1, x0:x1] = False
    assert (frame[outside] == frame[0, 0]).all()
    rotated = dm._layout(640, 480, 1).rotated
    for patch in (rotated[0], rotated[-1]):  # turned furthest: its corners are all padding
        for corner in (patch[0, 0], patch[0, -1], patch[-1, 0], patch[-1, -1]):
            assert np.abs(corner.astype(int) - frame[0, 0].astype(int)).max() <= 2, corner


def test_render_frame_refuses_a_frame_too_small_in_either_direction() -> None:
    for width, height in ((640, 8), (8, 480)):
        with pytest.raises(ValueError, match="too small"):
            render_frame(0.0, width, height)


def test_the_face_stays_inside_the_frame_and_within_its_promised_motion() -> None:
    """Drift +-10% of the frame, zoom 0.8..1.2, whole face inside the frame (640x480)."""
    width, height = 640, 480
    boxes = [_face_box(render_frame(t / 4, width, height), BACKGROUND) for t in range(0, 4 * 30)]
    centres_x = [(b[0] + b[2]) / 2 for b in boxes]
    centres_y = [(b[1] + b[3]) / 2 for b in boxes]
    # The patch is cut square-ish around the face, so its box centre follows the face centre.
    assert max(abs(x - width / 2) for x in centres_x) <= 0.10 * width + 4
    assert max(abs(y - height / 2) for y in centres_y) <= 0.10 * height + 4
    # The whole patch (face plus hair, ears and chin) stays inside: it never touches an edge.
    for x0, y0, x1, y1 in boxes:
        assert x0 > 0 and y0 > 0 and x1 < width and y1 < height, (x0, y0, x1, y1)
    # Zoom 0.8..1.2 (times the +-12 degree rotation's bounding box growth, under 1.2 more).
    heights = [b[3] - b[1] for b in boxes]
    assert max(heights) / min(heights) < (1.2 / 0.8) * 1.2


def test_the_face_turns_both_ways_by_at_most_12_degrees() -> None:
    """The rotation stays within +-12 degrees, and reaches both extremes symmetrically."""
    import monitor.sources.demo_media as dm

    layout = dm._layout(640, 480, 1)
    steps = len(layout.rotated)
    assert steps == 2 * round(12.0 / 0.5) + 1  # -12..+12 in 0.5 degree steps
    # The middle step is the unrotated patch: its bounding box is the smallest.
    sizes = [r.shape[0] * r.shape[1] for r in layout.rotated]
    assert sizes.index(min(sizes)) == (steps - 1) // 2
    # Over a full period at every step of time, no index falls outside the pre-rendered range
    # (an off-by-one picks a step past +12 degrees or raises IndexError at the peak).
    for i in range(0, 430):
        render_frame(i / 100, 320, 240)


def test_two_faces_move_out_of_phase_and_each_keeps_to_its_half() -> None:
    width, height = 640, 480
    seen_different = False
    for i in range(0, 60):
        frame = render_frame(i / 5, width, height, faces=2)
        left, right = frame[:, : width // 2], frame[:, width // 2 :]
        lx0, _, lx1, _ = _face_box(left, BACKGROUND)
        rx0, _, rx1, _ = _face_box(right, BACKGROUND)
        # Each copy stays in its own half of the frame, drifting +-10% of a half frame...
        assert lx1 < width // 2 and rx0 > 0, (i, lx1, rx0)
        assert abs((lx0 + lx1) / 2 - width / 4) <= 0.10 * width / 2 + 4, (i, lx0, lx1)
        # ...and the two never mirror each other.
        if not np.array_equal(left, right):
            seen_different = True
        lbox, rbox = _face_box(left, BACKGROUND), _face_box(right, BACKGROUND)
        if (lbox[2] - lbox[0], lbox[3] - lbox[1]) != (rbox[2] - rbox[0], rbox[3] - rbox[1]):
            seen_different = True
    assert seen_different


def test_face_image_is_cached_and_read_only() -> None:
    image = load_face_image()
    assert image is load_face_image()
    with pytest.raises(ValueError):
        image[0, 0, 0] = 0


def test_write_clip_frame_count_rounds(tmp_path: Path) -> None:
    """``round(seconds * fps)`` frames: 0.99 s at 10 fps is 10 frames, not 9."""
    path = write_clip(tmp_path / "c.mp4", 0.99, fps=10, width=64, height=48)
    with av.open(str(path)) as container:
        assert sum(1 for _ in container.decode(video=0)) == round(0.99 * 10)


def test_write_clip_refuses_odd_sizes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even"):
        write_clip(tmp_path / "a.mp4", 0.1, width=64, height=49)
    with pytest.raises(ValueError, match="even"):
        write_clip(tmp_path / "b.mp4", 0.1, width=65, height=48)


def test_write_clip_draws_the_requested_faces_at_its_frame_times(tmp_path: Path) -> None:
    path = write_clip(tmp_path / "two.mkv", 0.2, fps=10, width=320, height=240, codec="mpeg4", faces=2, bitrate=8_000_000)
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 2
    for i, got in enumerate(frames):
        want = render_frame(i / 10, 320, 240, faces=2).astype(np.int16)
        one = render_frame(i / 10, 320, 240, faces=1).astype(np.int16)
        err_two = np.abs(got.astype(np.int16) - want).mean()
        err_one = np.abs(got.astype(np.int16) - one).mean()
        assert err_two < err_one / 2, (err_two, err_one)


def test_write_clip_timestamps_step_by_one_frame(tmp_path: Path) -> None:
    path = write_clip(tmp_path / "t.mkv", 0.5, fps=10, width=64, height=48, codec="mpeg4")
    with av.open(str(path)) as container:
        times = [float(f.time) for f in container.decode(video=0)]
    assert times == pytest.approx([i / 10 for i in range(5)], abs=0.002)


def test_write_clip_gop_is_the_keyframe_interval(tmp_path: Path) -> None:
    path = write_clip(tmp_path / "g.mkv", 1.0, fps=10, width=64, height=48, codec="mpeg4", gop=2)
    with av.open(str(path)) as container:
        assert sum(f.key_frame for f in container.decode(video=0)) == 5


def test_write_clip_user_options_override_its_defaults(tmp_path: Path) -> None:
    """``options`` are the caller's: one that names a default (x264 ``bf``, B-frames) wins."""
    path = write_clip(tmp_path / "b.mp4", 1.0, fps=10, width=64, height=48, options={"bf": "2", "tune": "film"})
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 10  # every frame, the encoder's delayed ones too
    b_frame = 3  # AV_PICTURE_TYPE_B
    assert any(int(f.pict_type) == b_frame for f in frames)



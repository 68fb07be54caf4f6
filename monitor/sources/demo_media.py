"""Synthetic demo video: a real, public-domain face moving smoothly, as frames and as clips."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from importlib import resources
from pathlib import Path

import av
import cv2
import numpy as np

__all__ = ["load_face_image", "render_frame", "write_clip"]

# Where the face sits in astronaut.png (512x512): MediaPipe's 478 landmarks span
# x 179..271, y 71..177. The patch keeps hair, ears and chin around it, because the face
# detector that (re)starts face-mesh tracking wants some context, not a tight crop.
_PATCH_X0, _PATCH_Y0, _PATCH_X1, _PATCH_Y1 = 150, 30, 300, 225
_FACE_HEIGHT_SRC = 106.0  # landmark span in source pixels, brow to chin

# Face height at scale 1.0 as a fraction of the frame (of a half frame for two faces):
# large enough for MediaPipe's short-range detector at 480p, small enough that the
# +-20% zoom and +-10% drift keep the whole face inside the frame.
_FACE_FRACTION_ONE = 0.30
_FACE_FRACTION_TWO = 0.24

# Slow sinusoids with incommensurate periods (seconds), so the motion does not visibly
# repeat within a test clip and no two parameters peak together.
_PERIOD_X, _PERIOD_Y, _PERIOD_SCALE, _PERIOD_ROT = 7.3, 5.1, 6.1, 4.3
_SHIFT = 0.10  # of the frame (of a half frame for two faces)
_SCALE_AMPLITUDE = 0.20
_ROTATION_DEG = 12.0
# Rotation is pre-rendered in steps this fine: at most 0.6 degrees per frame at 30 fps.
_ROTATION_STEP_DEG = 0.5
_BACKGROUND = (118, 128, 138)  # plain, so pre-rendered rotated patches paste seamlessly


@lru_cache(maxsize=1)
def load_face_image() -> np.ndarray:
    """The public-domain NASA astronaut portrait (Eileen Collins), RGB uint8, read-only.

    Same image as ``skimage.data.astronaut()``; cached, so callers must copy to modify it.
    """
    data = resources.files("monitor").joinpath("assets/astronaut.png").read_bytes()
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise RuntimeError("monitor/assets/astronaut.png could not be decoded")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    rgb.setflags(write=False)
    return rgb


@dataclass(frozen=True)
class _Layout:
    """Everything about a (width, height, faces) frame that does not depend on time."""

    background: np.ndarray  # one row of the background, broadcast into each frame
    rotated: tuple[np.ndarray, ...]  # the face patch at each rotation step, scale 1.0
    centres: tuple[tuple[float, float], ...]  # resting centre of each face, pixels
    span: tuple[float, float]  # the region each face drifts across (+-_SHIFT of it)


@lru_cache(maxsize=4)  # a 720p layout holds ~25 MB of pre-rendered patches
def _layout(width: int, height: int, faces: int) -> _Layout:
    if width < 16 or height < 16:
        raise ValueError(f"frame too small: {width}x{height}")
    if faces not in (1, 2):
        raise ValueError(f"faces must be 1 or 2, not {faces}")
    src = load_face_image()[_PATCH_Y0:_PATCH_Y1, _PATCH_X0:_PATCH_X1]
    if faces == 1:
        face_px = _FACE_FRACTION_ONE * min(height, width * 0.75)
        centres: tuple[tuple[float, float], ...] = ((width / 2.0, height / 2.0),)
        span = (float(width), float(height))
    else:
        face_px = _FACE_FRACTION_TWO * min(height, width * 0.5)
        centres = ((width * 0.25, height / 2.0), (width * 0.75, height / 2.0))
        span = (width / 2.0, float(height))
    factor = face_px / _FACE_HEIGHT_SRC
    pw, ph = max(1, round(src.shape[1] * factor)), max(1, round(src.shape[0] * factor))
    interp = cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC
    patch = cv2.resize(src, (pw, ph), interpolation=interp)
    # An affine warp costs ~10 ns a pixel on these machines (3 ms for a 720p face), so
    # rotation is rendered once per step here; a frame then needs only a resize and a copy.
    rotated = []
    steps = round(_ROTATION_DEG / _ROTATION_STEP_DEG)
    for k in range(-steps, steps + 1):
        angle = k * _ROTATION_STEP_DEG
        rad = math.radians(angle)
        bw = math.ceil(pw * abs(math.cos(rad)) + ph * abs(math.sin(rad)))
        bh = math.ceil(ph * abs(math.cos(rad)) + pw * abs(math.sin(rad)))
        matrix = cv2.getRotationMatrix2D((pw / 2.0, ph / 2.0), angle, 1.0)
        matrix[0, 2] += (bw - pw) / 2.0
        matrix[1, 2] += (bh - ph) / 2.0
        out = cv2.warpAffine(
            patch,
            matrix,
            (bw, bh),
            flags=cv2.INTER_CUBIC,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=_BACKGROUND,
        )
        out.setflags(write=False)
        rotated.append(out)
    background = np.empty((width, 3), dtype=np.uint8)
    background[:] = _BACKGROUND
    return _Layout(background=background, rotated=tuple(rotated), centres=centres, span=span)


def render_frame(t: float, width: int, height: int, *, faces: int = 1) -> np.ndarray:
    """A deterministic RGB uint8 ``(height, width, 3)`` frame at stream time ``t`` seconds.

    The portrait drifts +-10% of the frame, zooms 0.8..1.2 and rotates +-12 degrees on slow
    sinusoids over a plain background, so a face tracker follows it without losing it.
    ``faces=2`` draws two copies side by side, moving out of phase.
    """
    layout = _layout(width, height, faces)
    frame = np.empty((height, width, 3), dtype=np.uint8)
    # Broadcasting a prepared row is ~50x faster than assigning a colour tuple.
    frame[:] = layout.background
    tau = 2.0 * math.pi * t
    for index, (cx0, cy0) in enumerate(layout.centres):
        phase = 1.7 * index  # out of phase, so two faces never mirror each other
        cx = cx0 + _SHIFT * layout.span[0] * math.sin(tau / _PERIOD_X + phase)
        cy = cy0 + _SHIFT * layout.span[1] * math.sin(tau / _PERIOD_Y + 1.0 + phase)
        scale = 1.0 + _SCALE_AMPLITUDE * math.sin(tau / _PERIOD_SCALE + 0.5 + phase)
        angle = _ROTATION_DEG * math.sin(tau / _PERIOD_ROT + 2.0 + phase)
        step = round(angle / _ROTATION_STEP_DEG) + (len(layout.rotated) - 1) // 2
        src = layout.rotated[step]
        w, h = max(1, round(src.shape[1] * scale)), max(1, round(src.shape[0] * scale))
        x0, y0 = round(cx - w / 2.0), round(cy - h / 2.0)
        # Clip to the frame; the face may leave it on unusual aspect ratios.
        fx0, fy0, fx1, fy1 = max(0, x0), max(0, y0), min(width, x0 + w), min(height, y0 + h)
        if fx1 <= fx0 or fy1 <= fy0:
            continue
        scaled = cv2.resize(src, (w, h), interpolation=cv2.INTER_LINEAR)
        frame[fy0:fy1, fx0:fx1] = scaled[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0]
    return frame


_CODECS: dict[str, tuple[str, dict[str, str]]] = {
    # Low-latency H.264 as a live encoder would send it: no B-frames, no lookahead. One
    # thread: with zerolatency, x264 threads become slices, so the output would depend on the
    # machine's core count (multi-slice frames are a separate, deliberate test fixture).
    "h264": ("libx264", {"tune": "zerolatency", "preset": "ultrafast", "bf": "0", "threads": "1"}),
    "libx264": ("libx264", {"tune": "zerolatency", "preset": "ultrafast", "bf": "0", "threads": "1"}),
    "mpeg4": ("mpeg4", {"bf": "0"}),
    "vp8": ("libvpx", {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}),
    "libvpx": ("libvpx", {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}),
}


def write_clip(
    path: str | Path,
    seconds: float,
    fps: int = 30,
    width: int = 640,
    height: int = 480,
    codec: str = "h264",
    bitrate: int | None = None,
    faces: int = 1,
    gop: int | None = None,
    *,
    options: Mapping[str, str] | None = None,
) -> Path:
    """Encode ``round(seconds * fps)`` frames of :func:`render_frame` into ``path`` with PyAV.

    The container follows the suffix (.mp4, .mkv, .webm, ...). ``codec`` is ``h264``,
    ``mpeg4`` or ``vp8``/``libvpx``; ``gop`` is the keyframe interval in frames; ``options``
    are extra encoder options, e.g. ``{"x264-params": "slices=4"}`` for test fixtures.
    """
    if codec not in _CODECS:
        raise ValueError(f"unknown codec {codec!r}; choose one of {sorted(_CODECS)}")
    if width % 2 or height % 2:
        raise ValueError("width and height must be even for yuv420p")
    encoder, defaults = _CODECS[codec]
    path = Path(path)
    frames = round(seconds * fps)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(encoder, rate=fps, options={**defaults, **(options or {})})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        if bitrate is not None:
            stream.bit_rate = bitrate
        if gop is not None:
            stream.codec_context.gop_size = gop
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(render_frame(i / fps, width, height, faces=faces), format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path

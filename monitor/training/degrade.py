"""Degraded copies of a clip for robustness checks: H.264 at a low bitrate, downscaling, noise."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from monitor.errors import InputError, SourceError
from monitor.sources.av_source import Timeline, decode_frames
from monitor.types import display_orientation, orient

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Degradation:
    bitrate: int | None = None  # bit/s of an H.264 re-encode
    short_side: int | None = None  # downscale until the shorter side is this long (never upscale): 360p is 640x360, or 360x640 portrait
    noise_sigma: float = 0.0  # Gaussian noise, grey levels

    @property
    def label(self) -> str:
        parts = []
        if self.bitrate:
            parts.append(f"{self.bitrate // 1000}k")
        if self.short_side:
            parts.append(f"{self.short_side}p")
        if self.noise_sigma:
            parts.append(f"noise{self.noise_sigma:g}")
        return "+".join(parts) or "none"


def _noise_sigma(text: str) -> float | None:
    try:
        sigma = float(text or 8.0)
    except ValueError:
        return None
    return sigma if 0 < sigma <= 128 else None


def _whole(text: str) -> int:
    """``text`` as a whole number written in ASCII digits, or -1. (``str.isdigit`` also accepts
    digits such as "²", which ``int`` cannot read.)"""
    return int(text) if text.isascii() and text.isdigit() else -1


_USAGE = "use e.g. 300k, 360p, noise (sigma 8) or noise5, joined with +, or all"


def parse_degradation(spec: str) -> Degradation:
    """``300k``, ``360p``, ``noise`` (sigma 8) or ``noise5``, joined with ``+``; ``all`` is all
    three. Case does not matter; each kind may be given once."""
    given = spec
    spec = spec.strip().lower()
    if not spec:
        raise InputError(f"empty degradation: {_USAGE}")
    if spec == "all":
        spec = "300k+360p+noise"
    bitrate: int | None = None
    short_side: int | None = None
    noise = 0.0
    seen: dict[str, str] = {}
    for part in (p.strip() for p in spec.split("+")):
        if part.endswith("k") and _whole(part[:-1]) > 0:
            kind = "bitrate"
            bitrate = int(part[:-1]) * 1000
        elif part.endswith("p") and _whole(part[:-1]) >= 16:
            kind = "size"
            short_side = int(part[:-1])
        elif part.startswith("noise") and _noise_sigma(part[5:]) is not None:
            kind = "noise"
            noise = float(part[5:] or 8.0)
        elif part == "all":
            raise InputError(f"degradation {given!r}: all cannot be combined with others; write them out, e.g. 300k+360p+noise5")
        elif not part:
            raise InputError(f"degradation {given!r} has an empty part: {_USAGE}")
        else:
            raise InputError(f"unknown degradation {part!r}: {_USAGE}")
        if kind in seen:
            raise InputError(f"degradation {given!r} gives the {kind} twice ({seen[kind]} and {part}): give each kind once")
        seen[kind] = part
    if bitrate is None and (short_side or noise):
        bitrate = 2_000_000  # the copy has to be encoded somehow; high enough not to matter
    return Degradation(bitrate, short_side, noise)


def degrade_clip(
    src: Path, dst: Path, d: Degradation, seed: int = 0, on_decode_error: Callable[[BaseException], None] | None = None,
    max_duration_s: float | None = None,
) -> Path:
    """Write ``src`` degraded by ``d`` to ``dst`` (.mp4, H.264, same frame times); with
    ``max_duration_s``, only about that much of it in stream time as the scan counts it (from
    the container's start), and a frame more at most.

    Corrupt packets are skipped as the scan's sampler skips them in a file (``decode_frames``,
    with no limit in a row), each passed to ``on_decode_error``, so that a degraded run judges
    the same clips, and the same video after a corrupt stretch, as a clean one."""
    rng = np.random.default_rng(seed)
    errors: list[BaseException] = []
    corrupt = 0

    def skipped(exc: BaseException) -> None:
        nonlocal corrupt
        corrupt += 1
        (on_decode_error or errors.append)(exc)

    with av.open(os.path.abspath(src)) as inp:  # absolute: never taken for an FFmpeg protocol
        if not inp.streams.video:  # as the clean scan says it (it was an IndexError here)
            raise SourceError(f"{src} has no video stream", retryable=False)
        stream = inp.streams.video[0]
        # Odd container rates (e.g. 519168/19667) are rejected by the encoder; frame times
        # are carried by the pts below, so a nearby simple rate loses nothing.
        rate = Fraction(max(1, round(float(stream.average_rate or 25))))
        timeline = Timeline.of(inp)
        step_ms = max(1, round(timeline.step * 1000))  # one frame interval, as the scan counts it
        with av.open(str(dst), "w") as out:
            enc = None
            last_pts = -1
            for frame in decode_frames(inp, skipped, max_consecutive_errors=None):
                # Stream time as the scan's sampler counts it (from the container's start,
                # through the same jumps and missing timestamps), so the copy holds what a scan
                # capped at max_duration_s reads, and a frame more.
                if max_duration_s is not None and timeline(None if frame.time is None else float(frame.time)) > max_duration_s + timeline.step:
                    break
                img = frame.to_ndarray(format="rgb24")
                o = display_orientation(frame)
                if o:  # the copy carries no display matrix, so it is written as displayed
                    img = orient(img, o)
                h, w = img.shape[:2]
                if d.short_side and min(h, w) > d.short_side:
                    scale = d.short_side / min(h, w)
                    size = (int(round(w * scale / 2)) * 2, int(round(h * scale / 2)) * 2)
                    img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
                if d.noise_sigma:
                    img = np.clip(img + rng.normal(0, d.noise_sigma, img.shape), 0, 255).astype(np.uint8)
                h2, w2 = img.shape[:2]
                img = np.ascontiguousarray(img[: h2 // 2 * 2, : w2 // 2 * 2])
                if enc is None:
                    enc = out.add_stream("libx264", rate=rate)
                    enc.width, enc.height = img.shape[1], img.shape[0]
                    enc.pix_fmt = "yuv420p"
                    enc.bit_rate = d.bitrate or 2_000_000
                    # One thread: x264 slices the frame per thread, so the bytes, and the pixels
                    # decoded from them, depended on the machine's CPU count.
                    enc.options = {"preset": "veryfast", "tune": "zerolatency", "threads": "1"}
                    enc.codec_context.time_base = Fraction(1, 1000)  # frame times in ms, as decoded
                if (img.shape[1], img.shape[0]) != (enc.width, enc.height):
                    # A cut to other footage can change the frame size; the encoder cannot.
                    img = cv2.resize(img, (enc.width, enc.height), interpolation=cv2.INTER_AREA)
                vf = av.VideoFrame.from_ndarray(img, format="rgb24")
                # Variable-rate and GIF sources repeat or omit timestamps, and the muxer needs them
                # strictly increasing: such a frame comes one frame interval after the last, as the
                # scan's Timeline places it. 1 ms after it packed a raw .h264's 6 s into 60 ms,
                # and the degraded clip was too short to judge.
                raw = None if frame.time is None else int(round(float(frame.time) * 1000))
                last_pts = raw if raw is not None and raw > last_pts else (last_pts + step_ms if last_pts >= 0 else 0)
                vf.pts = last_pts
                vf.time_base = Fraction(1, 1000)
                for packet in enc.encode(vf):
                    out.mux(packet)
            if enc is not None:
                for packet in enc.encode():
                    out.mux(packet)
    if enc is None:
        # Said as the clean scan says it: the scan of the empty copy named a temporary file.
        dst.unlink(missing_ok=True)
        detail = f" ({corrupt} corrupt packets)" if corrupt else ""
        raise SourceError(f"no decodable video frame in {src}{detail}", retryable=False)
    if errors:
        logger.warning("%s: skipped %d corrupt packets (%s)", src, len(errors), errors[-1])
    return dst

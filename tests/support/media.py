"""Media fixtures generated at test time: raw frames, corrupt and edge-case files, multi-slice H.264,
offset and discontinuous timestamps, video that starts late or never decodes."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from monitor.sources.demo_media import render_frame, write_clip

BACKGROUND = np.array([118, 128, 138])  # demo_media's plain background


def shows_background(pixels: np.ndarray) -> bool:
    """Whether an RGB region (e.g. a frame's top rows or a corner) is the demo's plain
    background, not grey or garbage from a missing or corrupt slice."""
    return bool(np.abs(pixels.reshape(-1, 3).mean(axis=0) - BACKGROUND).max() < 8)


def write_raw_rgb(path: Path, frames: int, fps: int, width: int, height: int, faces: int = 1) -> Path:
    """``frames`` frames of the demo face as concatenated raw RGB, for gst_rtsp_server.py --raw."""
    with open(path, "wb") as out:
        for i in range(frames):
            out.write(render_frame(i / fps, width, height, faces=faces).tobytes())
    return path


def corrupt_clip(
    path: Path,
    seconds: float = 2.0,
    *,
    width: int = 320,
    height: int = 240,
    fps: int = 30,
    span: tuple[float, float] = (0.4, 0.6),
    seed: int = 0,
) -> Path:
    """A demo clip whose bytes between ``span`` fractions of the file are random.

    PyAV writes the mp4 index (moov) at the end, so the container still opens and only
    the frames in the middle fail to decode.
    """
    write_clip(path, seconds, fps=fps, width=width, height=height)
    size = path.stat().st_size
    start, end = int(size * span[0]), int(size * span[1])
    noise = np.random.default_rng(seed).integers(0, 256, end - start, dtype=np.uint8).tobytes()
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(noise)
    return path


def timestamped_ts(path: Path, seconds: float, start_s: float, *, fps: int = 10, width: int = 320, height: int = 240) -> Path:
    """An MPEG-TS clip of the demo face whose timestamps start at ``start_s`` (recordings start
    at 1.4 s or more, HLS segments anywhere). Concatenating two of them byte by byte gives a
    timestamp discontinuity, as concatenated recordings have."""
    with av.open(str(path), mode="w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "tune": "zerolatency"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        first = round(start_s * fps)
        for i in range(round(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(render_frame(i / fps, width, height), format="rgb24")
            frame.pts = first + i
            frame.time_base = Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def raw_h264(path: Path, seconds: float, fps: int, *, width: int = 160, height: int = 120) -> Path:
    """A raw H.264 elementary stream (``.h264``): its frames carry no timestamps, only the
    stream's frame rate says how fast it plays."""
    with av.open(str(path), mode="w", format="h264") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(round(seconds * fps)):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(render_frame(i / fps, width, height), format="rgb24")))
        container.mux(stream.encode(None))
    return path


def empty_file(path: Path) -> Path:
    """A zero-byte file (e.g. ``empty.mp4``)."""
    path.write_bytes(b"")
    return path


def text_file(path: Path) -> Path:
    """A text file under a media name (e.g. ``notes.mp4``)."""
    path.write_text("this is not a video\n" * 50)
    return path


def multislice_clip(
    path: Path,
    seconds: float = 1.0,
    *,
    slices: int = 4,
    width: int = 640,
    height: int = 480,
    fps: int = 30,
) -> Path:
    """H.264 with ``slices`` slices per frame, as x264 makes with threads > 1 and zerolatency.

    File fixture for slice counting; the RTSP regression fixture for multi-slice keyframes is
    ``RtspServer(x264_threads=4)``.
    """
    options = {"x264-params": f"slices={slices}"}
    return write_clip(path, seconds, fps=fps, width=width, height=height, codec="h264", options=options)


def slices_per_frame(path: Path) -> list[int]:
    """The number of coded slices (NAL types 1 and 5) in each H.264 packet of ``path``."""
    counts = []
    with av.open(os.fspath(path)) as container:
        stream = container.streams.video[0]
        # An avcC record (version byte 1) in extradata means length-prefixed NAL units;
        # without one the packets carry Annex B start codes. The bytes alone are ambiguous.
        avcc = (stream.codec_context.extradata or b"")[:1] == b"\x01"
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            types = _nal_types(bytes(packet), avcc)
            counts.append(sum(1 for nal_type in types if nal_type in (1, 5)))
    return counts


def _nal_types(data: bytes, avcc: bool) -> list[int]:
    if not avcc:
        parts = data.replace(b"\x00\x00\x00\x01", b"\x00\x00\x01").split(b"\x00\x00\x01")
        return [p[0] & 0x1F for p in parts if p]
    types, i = [], 0  # 4-byte big-endian lengths, as x264 writes them
    while i + 4 < len(data):
        length = int.from_bytes(data[i : i + 4], "big")
        types.append(data[i + 4] & 0x1F)
        i += 4 + length
    return types


def phone_clip(path: Path, frames: list[np.ndarray], fps: int, degrees: int, hflip: bool = False, vflip: bool = False) -> Path:
    """An mp4 whose display matrix (written by FFmpeg through PyAV) says: turn the stored
    pixels ``degrees`` counter-clockwise, then mirror them. The stored pixels are ``frames``
    put through the inverse, so a player that honours the matrix shows ``frames`` again:
    ``degrees=-90`` is how a phone held upright stores portrait video."""
    stored = []
    for f in frames:
        if vflip:
            f = f[::-1]
        if hflip:
            f = f[:, ::-1]
        stored.append(np.ascontiguousarray(np.rot90(f, -round(degrees / 90))))
    h, w = stored[0].shape[:2]
    with av.open(os.fspath(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        stream.set_display_rotation(degrees, hflip=hflip, vflip=vflip)
        for i, img in enumerate(stored):
            vf = av.VideoFrame.from_ndarray(img, format="rgb24")
            vf.pts, vf.time_base = i, Fraction(1, fps)
            for packet in stream.encode(vf):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _silent_audio(container: av.container.OutputContainer, seconds: float) -> None:
    """Mux ``seconds`` of silent MP2 audio, from 0 s, into an MPEG-TS ``container``."""
    rate, samples = 48000, 1152
    stream = container.add_stream("mp2", rate=rate)
    stream.layout = "mono"
    for i in range(0, round(seconds * rate), samples):
        frame = av.AudioFrame.from_ndarray(np.zeros((1, samples), np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = rate, i, Fraction(1, rate)
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def late_video_ts(
    path: Path,
    video_start_s: float = 100.0,
    seconds: float = 2.0,
    *,
    fps: int = 10,
    width: int = 320,
    height: int = 240,
) -> Path:
    """An MPEG-TS clip whose audio starts at 0 s and whose video (the demo face) starts at
    ``video_start_s``: the container's start time is the audio's, long before the first frame."""
    with av.open(str(path), mode="w", format="mpegts") as container:
        video = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "tune": "zerolatency"})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.codec_context.time_base = Fraction(1, fps)
        _silent_audio(container, 2.0)
        first = round(video_start_s * fps)
        for i in range(round(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(render_frame(i / fps, width, height), format="rgb24")
            frame.pts, frame.time_base = first + i, Fraction(1, fps)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
    return path


def audio_only_ts(path: Path, seconds: float = 2.0) -> Path:
    """An MPEG-TS file whose program table lists an H.264 video stream that has no packet:
    it opens as video, and not one frame decodes."""
    with av.open(str(path), mode="w", format="mpegts") as container:
        video = container.add_stream("libx264", rate=30)
        video.width, video.height, video.pix_fmt = 320, 240, "yuv420p"
        _silent_audio(container, seconds)
    return path


def garbage_video_ts(path: Path, packets: int = 20, *, fps: int = 10, seed: int = 0) -> Path:
    """An MPEG-TS file whose H.264 stream holds only ``packets`` packets of random bytes:
    every one fails to decode (fewer than the 50 in a row that fail a stream on their own)."""
    rng = np.random.default_rng(seed)
    with av.open(str(path), mode="w", format="mpegts") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = 320, 240, "yuv420p"
        video.codec_context.time_base = Fraction(1, fps)
        for i in range(packets):
            # A start code and a slice NAL header, then noise: the decoder sees a broken slice.
            packet = av.Packet(b"\x00\x00\x00\x01\x65" + rng.integers(0, 256, 2000, dtype=np.uint8).tobytes())
            packet.stream, packet.pts, packet.dts, packet.time_base = video, i, i, Fraction(1, fps)
            container.mux(packet)
    return path


def frozen_timestamps_mkv(path: Path, frames: int = 30, *, width: int = 160, height: int = 120) -> Path:
    """A Matroska file of the demo face (MJPEG) whose every packet has timestamp 0: stream time
    that does not advance. Matroska takes equal timestamps (most muxers refuse them)."""
    with av.open(str(path), mode="w", format="matroska") as container:
        stream = container.add_stream("mjpeg", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuvj420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(render_frame(i / 10, width, height), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 10)
            for packet in stream.encode(frame):
                packet.pts = packet.dts = 0
                container.mux(packet)
        for packet in stream.encode(None):
            packet.pts = packet.dts = 0
            container.mux(packet)
    return path

"""A source whose frames are too large fails with a clear error instead of eating the memory."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from monitor.clock import SystemClock
from monitor.config import StreamConfig, load_settings
from monitor.errors import ConfigError, SourceError
from monitor.metrics import Metrics
from monitor.pipeline.manager import build_source
from monitor.sources.demo_media import write_clip
from monitor.types import StreamState


async def test_frames_over_the_pixel_limit_fail_the_stream_once_with_the_reason(tmp_path: Path) -> None:
    # An 8000x8000 file took the service from 0.5 to 3.3 GB and showed "running".
    clip = write_clip(tmp_path / "big.mp4", 1.0, fps=10, width=160, height=120)
    settings = load_settings(None, data_dir=tmp_path, demo=False, analysis={"max_frame_pixels": 100 * 100})
    metrics = Metrics()
    source = build_source(StreamConfig(id="big", url=str(clip), loop=True), settings, metrics, SystemClock())
    await source.start()
    try:
        with pytest.raises(SourceError, match=r"frames of 160x120 exceed analysis.max_frame_pixels \(10,000 pixels\)"):
            await asyncio.wait_for(source.recv(), 20)
    finally:
        await source.aclose()
    assert source.status.state == StreamState.FAILED and "max_frame_pixels" in (source.status.last_error or "")
    assert metrics.registry.get_sample_value("deepfake_monitor_source_reconnects_total", {"stream": "big"}) in (None, 0.0)
    # Under the default limit (4096x4096) the same file plays.
    ok = build_source(StreamConfig(id="ok", url=str(clip)), load_settings(None, data_dir=tmp_path, demo=False), Metrics(), SystemClock())
    await ok.start()
    try:
        assert (await asyncio.wait_for(ok.recv(), 20)).width == 160
    finally:
        await ok.aclose()


def test_the_limit_cannot_be_set_below_a_small_frame() -> None:
    with pytest.raises(ConfigError, match="analysis.max_frame_pixels"):
        load_settings(None, analysis={"max_frame_pixels": 100})


async def test_a_whip_track_over_the_limit_fails_with_its_reason_and_tells_its_session() -> None:
    # It showed last_error null in /api/streams, and nothing told the WHIP session, whose
    # track nobody read any more while aiortc queued every decoded frame.
    import av

    from monitor.sources.webrtc import WhipTrackSource

    class Track:
        kind = "video"

        async def recv(self) -> av.VideoFrame:
            return av.VideoFrame(160, 120, "yuv420p")

    told: list[str] = []
    source = WhipTrackSource("pub", Track(), metrics=Metrics(), on_failed=lambda s, why: told.append(why))  # type: ignore[arg-type]
    source.max_frame_pixels = 100 * 100
    await source.start()
    try:
        with pytest.raises(SourceError, match="max_frame_pixels"):
            await asyncio.wait_for(source.recv(), 5)
    finally:
        await source.aclose()
    assert source.status.state == StreamState.FAILED and "max_frame_pixels" in (source.status.last_error or "")
    assert len(told) == 1 and "max_frame_pixels" in told[0]

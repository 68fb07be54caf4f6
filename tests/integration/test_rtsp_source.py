"""The service's RTSP readers against a real RTSP server whose keyframes arrive one packet per slice."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from monitor.metrics import Metrics
from monitor.sources.av_source import RtspSource, sample_video
from monitor.types import Frame
from tests.support.rtsp_server import RtspServer

pytestmark = pytest.mark.integration

BACKGROUND = np.array([118, 128, 138])  # demo_media's plain background


def top_rows_clean(frame: Frame) -> bool:
    return bool(np.abs(frame.rgb()[:20].reshape(-1, 3).mean(axis=0) - BACKGROUND).max() <= 8)


async def test_rtsp_source_decodes_multislice_keyframes_whole(metrics: Metrics) -> None:
    # key_int 10 at 30 fps: three keyframes per second, each split into four packets.
    with RtspServer(x264_threads=4, key_int=10) as server:
        source = RtspSource("cam", server.url, metrics=metrics)
        await source.start()
        try:
            frames = [await asyncio.wait_for(source.recv(), 10) for _ in range(45)]
        finally:
            await source.aclose()
    assert [i for i, frame in enumerate(frames) if not top_rows_clean(frame)] == []
    assert source.status.decode_errors == 0


def test_sample_video_decodes_multislice_rtsp_whole() -> None:
    with RtspServer(x264_threads=4, key_int=10) as server:
        frames = list(sample_video(server.url, fps=30, max_duration_s=1.5))
    assert len(frames) >= 30
    assert [i for i, frame in enumerate(frames) if not top_rows_clean(frame)] == []

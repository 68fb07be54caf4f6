"""The service's RTSP readers against a real RTSP server: keyframes that arrive one packet per slice,
a video stream that stops while audio goes on, and a server that freezes."""

from __future__ import annotations

import asyncio
import logging

import pytest

from monitor.metrics import Metrics
from monitor.sources.av_source import RtspSource, sample_video
from monitor.types import Frame, StreamState
from tests.support.media import shows_background
from tests.support.rtsp_server import RtspServer

pytestmark = pytest.mark.integration

def top_rows_clean(frame: Frame) -> bool:
    return shows_background(frame.rgb()[:20])


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


async def test_rtsp_source_reconnects_when_video_stops_but_audio_goes_on(metrics: Metrics) -> None:
    # A camera whose video encoder hangs keeps sending audio: the socket never times out, so
    # only the gap in video can show that the stream is dead.
    with RtspServer(width=320, height=240, fps=10, source="testsrc", audio=True, video_seconds=1.0) as server:
        source = RtspSource("cam", server.url, metrics=metrics, config=RtspSource.Config(read_timeout_s=1.0))
        states: list[StreamState] = []
        source.on_state(lambda state, detail: states.append(state))
        await source.start()
        try:
            await asyncio.wait_for(source.recv(), 10)
            deadline = asyncio.get_running_loop().time() + 8
            while StreamState.RECONNECTING not in states and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.1)
        finally:
            await source.aclose()
    assert StreamState.RECONNECTING in states, states
    assert "no video for" in (source.status.last_error or "")


async def test_rtsp_errors_from_a_real_server_never_show_the_credentials(
    metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    # FFmpeg repeats the URL it failed on; the error text goes to the event log, websocket
    # clients, webhooks, /api/streams and the logs.
    caplog.set_level(logging.DEBUG)
    with RtspServer(width=320, height=240, fps=10) as server:
        good = server.url.replace("rtsp://", "rtsp://admin:s3cret@")
        wrong_mount = good.rsplit("/", 1)[0] + "/nosuch"
        source = RtspSource("cam", wrong_mount, metrics=metrics)
        details: list[str] = []
        source.on_state(lambda state, detail: details.append(detail))
        await source.start()
        try:
            deadline = asyncio.get_running_loop().time() + 15
            while source.status.reconnects < 1 and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.1)
        finally:
            await source.aclose()
    assert source.status.reconnects >= 1
    shown = [source.status.last_error or "", *details, caplog.text]
    assert "rtsp://***@127.0.0.1" in shown[0], shown[0]  # still names what failed
    assert not [text for text in shown if "s3cret" in text or "admin" in text]


async def test_a_frozen_rtsp_server_is_reported_as_a_timeout(metrics: Metrics) -> None:
    # A camera that hangs with its connection open: FFmpeg's read is interrupted after
    # read_timeout_s. Before, that read "read failed: [Errno 1414092869] Immediate exit
    # requested" (kind ExitError), as if the service were shutting down.
    with RtspServer(width=320, height=240, fps=10) as server:
        config = RtspSource.Config(open_timeout_s=1.0, read_timeout_s=1.0)
        source = RtspSource("cam", server.url, metrics=metrics, config=config)
        await source.start()
        try:
            await asyncio.wait_for(source.recv(), 10)
            server.pause()
            try:
                deadline = asyncio.get_running_loop().time() + 10
                while not source.status.last_error and asyncio.get_running_loop().time() < deadline:
                    await asyncio.sleep(0.05)
            finally:
                server.resume()
        finally:
            await source.aclose()
    assert source.status.last_error == "no data from the server for 1 s (read_timeout_s)"
    assert metrics.registry.get_sample_value(
        "deepfake_monitor_source_errors_total", {"stream": "cam", "kind": "TimeoutError"}
    ) >= 1

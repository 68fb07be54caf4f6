"""Integration tests of the test harness itself: real RTSP and Prometheus servers, media fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest, start_http_server

from monitor.sources.av_source import STREAM_DECODER_OPTIONS
from tests.support.media import corrupt_clip, empty_file, multislice_clip, shows_background, slices_per_frame, text_file
from tests.support.prometheus import Prometheus, promtool_check_metrics
from tests.support.rtsp_server import PYAV_RTSP_OPTIONS, GarbageMode, GarbageRtspServer, RtspServer

pytestmark = pytest.mark.integration



def open_rtsp(url: str, read_timeout: float = 3.0) -> av.container.InputContainer:
    container = av.open(url, timeout=(5.0, read_timeout), options=PYAV_RTSP_OPTIONS)
    # SLICE, not FRAME: frame threading adds a frame of latency per thread.
    container.streams.video[0].thread_type = "SLICE"
    return container


def read_frames(container: av.container.InputContainer, n: int) -> list[av.VideoFrame]:
    frames = []
    for frame in container.decode(video=0):
        frames.append(frame)
        if len(frames) == n:
            break
    return frames


@pytest.fixture
def rtsp_server() -> Iterator[RtspServer]:
    with RtspServer(width=640, height=480, fps=30) as server:
        yield server


def test_rtsp_decodes_the_demo_face(rtsp_server: RtspServer) -> None:
    with open_rtsp(rtsp_server.url) as container:
        frames = read_frames(container, 30)
    assert len(frames) == 30, rtsp_server.log()
    assert {(f.width, f.height) for f in frames} == {(640, 480)}
    last = frames[-1].to_ndarray(format="rgb24").astype(int)
    # Corners show the plain background: the picture decoded, not grey or garbage.
    for corner in (last[:8, :8], last[:8, -8:], last[-8:, :8], last[-8:, -8:]):
        assert shows_background(corner)


def test_rtsp_kill_is_seen_then_restart_serves_the_same_url(rtsp_server: RtspServer) -> None:
    url = rtsp_server.url
    with open_rtsp(url, read_timeout=2.0) as container:
        assert len(read_frames(container, 5)) == 5
        rtsp_server.kill()
        # A crashed server ends the stream (EOF) or raises (at the latest, the 2 s read timeout).
        with pytest.raises((av.error.FFmpegError, OSError, StopIteration)):
            for _ in range(300):
                next(container.decode(video=0))
            raise AssertionError("frames kept coming from a killed server")
    rtsp_server.restart()
    assert rtsp_server.url == url
    with open_rtsp(url) as container:
        assert len(read_frames(container, 10)) == 10


def test_rtsp_frozen_server_shows_up_as_read_timeout(rtsp_server: RtspServer) -> None:
    with open_rtsp(rtsp_server.url, read_timeout=1.5) as container:
        assert len(read_frames(container, 3)) == 3
        rtsp_server.pause()
        try:
            with pytest.raises((av.error.FFmpegError, OSError, StopIteration)):
                for _ in range(300):  # what the server had sent before it froze, then nothing
                    next(container.decode(video=0))
                raise AssertionError("frames kept coming from a frozen server")
        finally:
            rtsp_server.resume()


@pytest.mark.parametrize("mode", ["random", "nonsense", "bad_sdp", "error", "close", "silent"])
def test_garbage_server_makes_open_fail_not_hang(mode: GarbageMode) -> None:
    # A hang is ended by the open's own (2 s, 2 s) timeout; the test is that it fails, not how fast.
    with GarbageRtspServer(mode) as server:
        with pytest.raises((av.error.FFmpegError, OSError)):
            av.open(server.url, timeout=(2.0, 2.0), options=PYAV_RTSP_OPTIONS)
        assert server.connections >= 1


def test_rtsp_with_corrupted_payload_still_decodes_frames() -> None:
    # breakmydata flips bytes in the encoded stream: frames decode with errors, no hang.
    with RtspServer(width=320, height=240, garbage=0.0005) as server, open_rtsp(server.url) as container:
        frames = read_frames(container, 30)
    assert len(frames) == 30


def _top_slice_corrupt(frames: list[av.VideoFrame]) -> list[int]:
    """Indices of frames whose top rows are not the plain background (a missing top slice)."""
    return [
        i
        for i, frame in enumerate(frames)
        if not shows_background(frame.to_ndarray(format="rgb24")[:20])
    ]


def test_rtsp_multislice_server_splits_keyframes_into_slices() -> None:
    # The fixture reproduces a common camera pipeline (multi-slice x264 + rtph264pay
    # config-interval=-1): SPS/PPS before every keyframe slice, so FFmpeg's parser hands the
    # decoder one packet per slice, all with the keyframe's timestamp. Decoded without the
    # service's decoder options, most frames lose their top slice.
    with RtspServer(x264_threads=4) as server, open_rtsp(server.url) as container:
        stream = container.streams.video[0]
        packets = []
        for packet in container.demux(stream):
            packets.append(packet)
            if len(packets) == 12:
                break
        frames = [frame for packet in packets for frame in packet.decode()]
    keyframe_pts = [p.pts for p in packets if p.is_keyframe and p.pts is not None]
    assert max(keyframe_pts.count(pts) for pts in set(keyframe_pts)) == 4, server.log()
    assert len(_top_slice_corrupt(frames)) >= len(frames) // 2


def test_rtsp_multislice_frames_decode_clean_with_stream_decoder_options() -> None:
    with RtspServer(x264_threads=4) as server, open_rtsp(server.url) as container:
        container.streams.video[0].codec_context.options = dict(STREAM_DECODER_OPTIONS)
        frames = read_frames(container, 30)
    assert len(frames) == 30
    assert _top_slice_corrupt(frames) == []


def test_media_fixtures(tmp_path: Path) -> None:
    clip = multislice_clip(tmp_path / "slices.mp4", 0.5, slices=4, width=320, height=240)
    assert set(slices_per_frame(clip)) == {4}

    broken = corrupt_clip(tmp_path / "broken.mp4", 2.0)
    decoded, errors = 0, 0
    with av.open(str(broken)) as container:
        for packet in container.demux(video=0):
            try:
                decoded += len(packet.decode())
            except av.error.FFmpegError:
                errors += 1
    assert 0 < decoded < 60 or errors > 0

    for bad in (empty_file(tmp_path / "empty.mp4"), text_file(tmp_path / "notes.mp4")):
        with pytest.raises(av.error.FFmpegError):
            av.open(str(bad))


def test_prometheus_scrapes_a_loopback_target() -> None:
    registry = CollectorRegistry()
    frames = Counter("harness_frames", "Frames seen by the harness test.", registry=registry)
    frames.inc(7)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)  # the OS picks a free port
    port = server.server_port
    try:
        with Prometheus([f"127.0.0.1:{port}"], job="harness") as prometheus:
            target = prometheus.wait_for_scrape("harness")
            assert target["health"] == "up"
            result = prometheus.query('harness_frames_total{job="harness"}')
            assert [float(r["value"][1]) for r in result] == [7.0]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)

    ok, output = promtool_check_metrics(generate_latest(registry))
    assert ok, output
    ok, output = promtool_check_metrics("# TYPE bad_name counter\nbad_name 1\n")
    assert not ok and "bad_name" in output

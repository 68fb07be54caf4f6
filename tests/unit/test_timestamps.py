"""Stream time of decoded frames: files count from the container's start, across discontinuities;
a looped file with nothing to decode fails instead of spinning."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import av
import pytest

from monitor.clock import FakeClock
from monitor.errors import SourceError
from monitor.metrics import Metrics
from monitor.sources.av_source import FileSource, Timeline, decode_frames, sample_video
from monitor.types import StreamState
from tests.support.fake_time import FakeTimeFile
from tests.support.media import audio_only_ts, garbage_video_ts, late_video_ts, raw_h264, timestamped_ts


def test_timeline_counts_from_the_start_and_bridges_discontinuities() -> None:
    line = Timeline(start_s=1000.0)
    assert [round(line(raw), 3) for raw in (1000.0, 1000.1, 1000.2)] == [0.0, 0.1, 0.2]
    assert round(line(None), 3) == 0.3  # no timestamp: one frame interval on
    assert round(line(5.0), 3) == 0.4  # backwards (concatenated files): one interval on
    assert round(line(5.1), 3) == 0.5  # and regular again from there
    assert round(line(5.1 + 3600.0), 3) == 0.6  # a jump of an hour is a discontinuity too
    assert round(line(3605.1 + 30.0), 3) == 30.6  # a real gap of half a minute is kept


def test_a_repeated_timestamp_counts_as_a_missing_one() -> None:
    # Stream time that stands still froze track expiry and a file's pacing.
    line = Timeline(start_s=0.0)
    assert [round(line(raw), 3) for raw in (0.0, 0.1, 0.1, 0.1, 0.2)] == [0.0, 0.1, 0.2, 0.3, 0.4]
    frozen = Timeline(start_s=1.0)
    assert [round(frozen(1.0), 3) for _ in range(4)] == [0.0, 0.033, 0.067, 0.1]  # the default 1/30 s


def test_live_timeline_counts_from_the_first_frame() -> None:
    line = Timeline()
    assert [round(line(raw), 3) for raw in (73.5, 73.6)] == [0.0, 0.1]


def test_offline_scan_of_an_offset_file_starts_at_zero(tmp_path: Path) -> None:
    clip = timestamped_ts(tmp_path / "rec.ts", 2.0, start_s=1000.0)
    frames = list(sample_video(str(clip), 10.0, max_duration_s=1.0))
    assert len(frames) == 11  # 0.0 .. 1.0 s; before, the limit met t = 1000 s and nothing was read
    assert frames[0].pts_s == pytest.approx(0.0)
    assert frames[-1].pts_s == pytest.approx(1.0)


def test_frames_without_timestamps_step_by_the_streams_frame_rate(tmp_path: Path) -> None:
    # Before: a raw 10 fps .h264 dump stepped by an assumed 1/30 s, so it played three times too
    # fast and a 4 s scan reported 1.4 s.
    clip = raw_h264(tmp_path / "cam.h264", 4.0, 10)
    with av.open(str(clip)) as container:
        assert all(f.time is None for f in container.decode(video=0))  # what this test is about
    times = [f.pts_s for f in sample_video(str(clip), 10.0)]
    assert len(times) == 40 and times[-1] == pytest.approx(3.9, abs=0.01)


def test_offline_scan_reads_past_a_backwards_discontinuity(tmp_path: Path) -> None:
    first = timestamped_ts(tmp_path / "a.ts", 1.0, start_s=1000.0)
    second = timestamped_ts(tmp_path / "b.ts", 1.0, start_s=5.0)
    joined = tmp_path / "joined.ts"
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    times = [f.pts_s for f in sample_video(str(joined), 10.0)]
    assert len(times) == 20  # every frame of both halves, not only the first
    assert times == sorted(times) and times[-1] == pytest.approx(1.9, abs=0.05)


async def test_file_source_plays_an_offset_file_at_once_and_loops_without_a_pause(tmp_path: Path) -> None:
    # A fake clock: every frame the source delivers and every pacing wait is recorded, so the
    # check does not depend on the reader keeping up (the slot keeps only the newest frame).
    clip = timestamped_ts(tmp_path / "rec.ts", 1.0, start_s=1000.0)
    clock = FakeClock()
    started = clock.monotonic()
    source = FakeTimeFile("f", str(clip), metrics=Metrics(), clock=clock, loop=True, stop_after=16)
    await source.start()
    try:
        await asyncio.wait_for(source.recv(), 20)  # the reader may get a later frame: the slot keeps the newest
        deadline = time.monotonic() + 20  # a hang guard only
        while len(source.delivered) < 16:
            assert time.monotonic() < deadline, "the file did not loop"
            await asyncio.sleep(0.01)
    finally:
        await source.aclose()
    assert len(source.delivered) == 16
    first = source.delivered[0]
    assert first.pts_s == pytest.approx(0.0) and first.received_at == started  # was 1000 s: the file's start time
    # The second pass follows the first by one frame interval (0.1 s), not by the file's start,
    # and the source waits one frame interval per frame, at the loop too: no pause.
    times = [f.pts_s for f in source.delivered[:16]]
    assert times == pytest.approx([i / 10 for i in range(16)]), times
    assert source.slept[:15] == pytest.approx([0.1] * 15), source.slept
    assert [f.received_at - started for f in source.delivered[:16]] == pytest.approx(times)


@pytest.mark.parametrize("fps", [10, 5])
def test_scan_counts_all_the_footage_it_covered(tmp_path: Path, settings, fps: int) -> None:  # type: ignore[no-untyped-def]
    from monitor.pipeline.offline import scan

    assert settings.analysis.fps == 10
    clip = timestamped_ts(tmp_path / "rec.ts", 2.0, start_s=1000.0, fps=fps)
    # 2 s of footage, not the last frame's time (1.9 s or 1.8 s): false alarms per hour divide by it.
    assert scan(str(clip), settings).duration_s == pytest.approx(2.0, abs=0.01)


def test_timeline_counts_from_a_first_frame_long_after_the_container_start() -> None:
    line = Timeline(start_s=0.0)  # audio from 0 s, video from 100 s (or a 33-bit wrap)
    assert [round(line(raw), 3) for raw in (100.0, 100.1)] == [0.0, 0.1]
    line = Timeline(start_s=0.0)
    assert round(line(30.0), 3) == 30.0  # a first frame within MAX_JUMP_S keeps its offset


def test_offline_scan_of_a_file_whose_video_starts_late_starts_at_zero(tmp_path: Path) -> None:
    clip = late_video_ts(tmp_path / "late.ts", video_start_s=100.0, seconds=2.0)
    frames = list(sample_video(str(clip), 10.0, max_duration_s=1.0))
    assert len(frames) == 11  # before, the first frame was at 100 s and the limit read nothing
    assert frames[0].pts_s == pytest.approx(0.0)


async def test_file_source_plays_a_file_whose_video_starts_late_at_once(tmp_path: Path) -> None:
    clip = late_video_ts(tmp_path / "late.ts", video_start_s=100.0, seconds=1.0)
    source = FileSource("f", str(clip), metrics=Metrics())
    await source.start()
    try:
        first = await asyncio.wait_for(source.recv(), 5)  # before, it waited 100 s
    finally:
        await source.aclose()
    assert first.pts_s == pytest.approx(0.0)


async def wait_for_state(source: FileSource, state: StreamState, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while source.status.state != state and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert source.status.state == state, (source.status.state, source.status.last_error)


@pytest.mark.parametrize("loop", [True, False])
async def test_file_source_with_no_decodable_frame_fails_instead_of_spinning(tmp_path: Path, loop: bool) -> None:
    # The program table lists a video stream; only audio packets follow. Looped, it was
    # re-read at full speed for ever: "starting", no error, a core burnt.
    clip = audio_only_ts(tmp_path / "audio.ts")
    source = FileSource("f", str(clip), metrics=Metrics(), loop=loop)
    await source.start()
    try:
        await wait_for_state(source, StreamState.FAILED)
    finally:
        await source.aclose()
    assert source.status.frames_received == 0
    assert "no decodable video" in (source.status.last_error or "")


async def test_a_looped_file_of_corrupt_packets_only_fails(tmp_path: Path) -> None:
    # 20 corrupt packets per pass: fewer than the 50 in a row that fail a stream, so looping
    # restarted the count on every pass and never failed.
    clip = garbage_video_ts(tmp_path / "garbage.ts", packets=20)
    source = FileSource("f", str(clip), metrics=Metrics(), loop=True, realtime=False)
    await source.start()
    try:
        await wait_for_state(source, StreamState.FAILED)
    finally:
        await source.aclose()
    assert source.status.frames_received == 0
    assert 20 <= source.status.decode_errors <= 50
    assert "no decodable video" in (source.status.last_error or "")


def test_decode_errors_in_a_row_carry_over_from_the_previous_pass(tmp_path: Path) -> None:
    clip = garbage_video_ts(tmp_path / "garbage.ts", packets=20)
    errors: list[BaseException] = []
    with av.open(str(clip)) as container:
        with pytest.raises(SourceError, match="50 corrupt packets in a row"):
            list(decode_frames(container, errors.append, consecutive_errors=40))
    assert len(errors) == 10


def test_a_scan_of_a_short_file_of_corrupt_packets_fails_like_a_long_one(tmp_path: Path) -> None:
    # Before: 20 corrupt packets (under the 50 in a row that fail a read) gave no frame and no
    # error, which `monitor scan` reported as "inconclusive (no_frames)" with exit 0, "no alert";
    # 80 of them failed with exit 2.
    clip = garbage_video_ts(tmp_path / "garbage.ts", packets=20)
    errors: list[BaseException] = []
    with pytest.raises(SourceError, match=r"no decodable video frame in .*garbage.ts \(20 corrupt packets\)"):
        list(sample_video(str(clip), 10.0, on_decode_error=errors.append))
    assert len(errors) == 20  # still reported to the caller, one by one


def test_a_scan_of_a_url_that_never_answers_times_out(tmp_path: Path) -> None:
    # Before: only rtsp:// had a timeout; an http server that accepts and never answers held
    # `monitor scan` for ever.
    import socket
    import threading

    outcome: list[BaseException] = []

    def scan(url: str) -> None:
        try:
            list(sample_video(url, 10.0))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        worker = threading.Thread(target=scan, args=(f"http://127.0.0.1:{server.getsockname()[1]}/clip.mp4",), daemon=True)
        worker.start()
        worker.join(60)  # the open gives up after 5 s; a hang must fail this test, not stall the suite
        assert not worker.is_alive(), "the scan of a URL that never answers did not give up"
    assert len(outcome) == 1 and isinstance(outcome[0], SourceError) and "cannot open" in str(outcome[0])

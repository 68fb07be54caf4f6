"""Stream time of decoded frames: files count from the container's start, across discontinuities."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from monitor.metrics import Metrics
from monitor.sources.av_source import FileSource, Timeline, sample_video
from tests.support.media import timestamped_ts


def test_timeline_counts_from_the_start_and_bridges_discontinuities() -> None:
    line = Timeline(start_s=1000.0)
    assert [round(line(raw), 3) for raw in (1000.0, 1000.1, 1000.2)] == [0.0, 0.1, 0.2]
    assert round(line(None), 3) == 0.3  # no timestamp: one frame interval on
    assert round(line(5.0), 3) == 0.4  # backwards (concatenated files): one interval on
    assert round(line(5.1), 3) == 0.5  # and regular again from there
    assert round(line(5.1 + 3600.0), 3) == 0.6  # a jump of an hour is a discontinuity too
    assert round(line(3605.1 + 30.0), 3) == 30.6  # a real gap of half a minute is kept


def test_live_timeline_counts_from_the_first_frame() -> None:
    line = Timeline()
    assert [round(line(raw), 3) for raw in (73.5, 73.6)] == [0.0, 0.1]


def test_offline_scan_of_an_offset_file_starts_at_zero(tmp_path: Path) -> None:
    clip = timestamped_ts(tmp_path / "rec.ts", 2.0, start_s=1000.0)
    frames = list(sample_video(str(clip), 10.0, max_duration_s=1.0))
    assert len(frames) == 11  # 0.0 .. 1.0 s; before, the limit met t = 1000 s and nothing was read
    assert frames[0].pts_s == pytest.approx(0.0)
    assert frames[-1].pts_s == pytest.approx(1.0)


def test_offline_scan_reads_past_a_backwards_discontinuity(tmp_path: Path) -> None:
    first = timestamped_ts(tmp_path / "a.ts", 1.0, start_s=1000.0)
    second = timestamped_ts(tmp_path / "b.ts", 1.0, start_s=5.0)
    joined = tmp_path / "joined.ts"
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    times = [f.pts_s for f in sample_video(str(joined), 10.0)]
    assert len(times) == 20  # every frame of both halves, not only the first
    assert times == sorted(times) and times[-1] == pytest.approx(1.9, abs=0.05)


async def test_file_source_plays_an_offset_file_at_once_and_loops_without_a_pause(tmp_path: Path) -> None:
    clip = timestamped_ts(tmp_path / "rec.ts", 1.0, start_s=1000.0)
    source = FileSource("f", str(clip), metrics=Metrics(), loop=True)
    started = time.monotonic()
    await source.start()
    try:
        first = await asyncio.wait_for(source.recv(), 5)
        waited = time.monotonic() - started
        times = [first.pts_s]
        while times[-1] < 1.5:
            times.append((await asyncio.wait_for(source.recv(), 5)).pts_s)
    finally:
        await source.aclose()
    assert first.pts_s == pytest.approx(0.0) and waited < 5.0  # was 1000 s: the file's start time
    # The second pass follows the first by one frame interval (0.1 s), not by the file's start.
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert max(gaps) < 0.25, times


@pytest.mark.parametrize("fps", [10, 5])
def test_scan_counts_all_the_footage_it_covered(tmp_path: Path, settings, fps: int) -> None:  # type: ignore[no-untyped-def]
    from monitor.pipeline.offline import scan

    assert settings.analysis.fps == 10
    clip = timestamped_ts(tmp_path / "rec.ts", 2.0, start_s=1000.0, fps=fps)
    # 2 s of footage, not the last frame's time (1.9 s or 1.8 s): false alarms per hour divide by it.
    assert scan(str(clip), settings).duration_s == pytest.approx(2.0, abs=0.01)

"""A stream that fails or is cancelled while it starts leaves nothing behind and blocks nothing."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from monitor.alerts.bus import EventBus
from monitor.alerts.eventlog import EventLog
from monitor.clock import SystemClock
from monitor.config import Settings, StreamConfig, load_settings
from monitor.errors import StreamNotFound, StreamStartFailed
from monitor.metrics import Metrics
from monitor.pipeline.manager import StreamManager
from tests.unit.test_stream_teardown import Constant, NoFaces, Ticking

DEADLINE_S = 10.0  # generous for a busy machine; a deadlock never meets it


@pytest.fixture
def parts(tmp_path: Path) -> Any:
    settings = load_settings(None, data_dir=tmp_path, demo=False)
    log = EventLog(tmp_path / "events.sqlite3")
    metrics = Metrics()
    yield settings, EventBus(log, metrics), metrics
    log.close()


class EndsItsSession(Ticking):
    """Stands in for a WHIP track: closing it ends its session, whose teardown removes the
    session's other stream through the manager (WhipSessions._source_closed -> end)."""

    def __init__(self, stream_id: str, metrics: Metrics, manager: StreamManager, sibling: str) -> None:
        super().__init__(stream_id, metrics)
        self.manager = manager
        self.sibling = sibling
        self.closed = False

    async def aclose(self) -> None:
        await super().aclose()
        with contextlib.suppress(StreamNotFound):
            await self.manager.remove(self.sibling)
        self.closed = True


class Faces(NoFaces):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def close(self) -> None:
        self.closed = True


def manager(parts: tuple[Settings, EventBus, Metrics], make_faces: Any) -> StreamManager:
    settings, bus, metrics = parts
    return StreamManager(settings, bus, metrics, SystemClock(), Constant, make_faces)


async def test_a_failed_add_whose_source_close_removes_a_sibling_does_not_deadlock(parts: Any) -> None:
    metrics = parts[2]
    built: list[Faces] = []
    failures = ["cam.1"]

    def make_faces(stream_id: str) -> Faces:
        if stream_id in failures:
            failures.remove(stream_id)
            raise RuntimeError("MediaPipe graph init failed")
        built.append(Faces())
        return built[-1]

    m = manager(parts, make_faces)
    await m.add(StreamConfig(id="cam.0", url="x://y"), source=Ticking("cam.0", metrics))
    source = EndsItsSession("cam.1", metrics, m, sibling="cam.0")
    with pytest.raises(StreamStartFailed, match="graph init failed"):
        # Before, the cleanup closed the source under the manager's lock, and its callback's
        # remove("cam.0") waited on that lock for ever.
        await asyncio.wait_for(m.add(StreamConfig(id="cam.1", url="x://y"), source=source), DEADLINE_S)
    assert source.closed and m.list() == []  # the sibling went with the session
    assert built[0].closed
    # The manager still works: add, remove, shut down.
    await asyncio.wait_for(m.add(StreamConfig(id="cam.2", url="x://y"), source=Ticking("cam.2", metrics)), DEADLINE_S)
    await asyncio.wait_for(m.remove("cam.2"), DEADLINE_S)
    # The id is free again once the failed add's cleanup ended.
    await asyncio.wait_for(m.add(StreamConfig(id="cam.1", url="x://y"), source=Ticking("cam.1", metrics)), DEADLINE_S)
    await asyncio.wait_for(m.aclose(), DEADLINE_S)
    assert m.list() == []


async def test_a_cancelled_add_closes_the_face_stage_built_after_it_gave_up(parts: Any) -> None:
    metrics = parts[2]
    building = threading.Event()
    release = threading.Event()
    built: list[Faces] = []

    def make_faces(stream_id: str) -> Faces:
        building.set()
        release.wait(DEADLINE_S)  # MediaPipe graph setup, still running when the add is cancelled
        built.append(Faces())
        return built[-1]

    m = manager(parts, make_faces)
    adding = asyncio.create_task(m.add(StreamConfig(id="cam", url="x://y"), source=Ticking("cam", metrics)))
    assert await asyncio.to_thread(building.wait, DEADLINE_S)
    adding.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(adding, DEADLINE_S)
    assert m.list() == []
    release.set()
    deadline = time.monotonic() + DEADLINE_S
    while not (built and built[0].closed) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert built and built[0].closed  # before, the graph it returned was dropped, never closed
    await asyncio.wait_for(m.aclose(), DEADLINE_S)


async def test_a_cancelled_add_with_a_sibling_to_remove_does_not_deadlock(parts: Any) -> None:
    metrics = parts[2]
    building = threading.Event()
    release = threading.Event()

    def make_faces(stream_id: str) -> Faces:
        if stream_id == "cam.1":
            building.set()
            release.wait(DEADLINE_S)  # the client gives up meanwhile
        return Faces()

    m = manager(parts, make_faces)
    await m.add(StreamConfig(id="cam.0", url="x://y"), source=Ticking("cam.0", metrics))
    source = EndsItsSession("cam.1", metrics, m, sibling="cam.0")
    adding = asyncio.create_task(m.add(StreamConfig(id="cam.1", url="x://y"), source=source))
    assert await asyncio.to_thread(building.wait, DEADLINE_S)
    adding.cancel()
    await asyncio.sleep(0)  # the cancellation reaches the add before the build returns
    release.set()
    done, _ = await asyncio.wait({adding}, timeout=DEADLINE_S)
    assert done and adding.cancelled()
    assert m.list() == []
    await asyncio.wait_for(m.aclose(), DEADLINE_S)



class NeverCloses(Ticking):
    """A source plugin whose close never returns (a call that hangs; cancelling it still ends it)."""

    async def aclose(self) -> None:
        await super().aclose()
        await asyncio.Event().wait()


async def test_a_source_whose_close_never_returns_is_left_behind(
    parts: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: the removal (and SIGTERM's teardown) waited for ever; the stream's alerts stayed open.
    from monitor.pipeline.stream import StreamPipeline

    monkeypatch.setattr(StreamPipeline, "SOURCE_CLOSE_S", 0.3)
    metrics = parts[2]
    m = manager(parts, lambda stream_id: Faces())
    await m.add(StreamConfig(id="cam", url="x://y"), source=NeverCloses("cam", metrics))
    await asyncio.wait_for(m.remove("cam"), DEADLINE_S)
    assert m.list() == []
    assert "stream cam: its source did not close within 0.3 s; stopping the stream anyway" in caplog.text
    # Its close still runs (it holds whatever the plugin holds): counted against max_streams,
    # as a stuck decoder thread is. Before, add/remove cycles piled these up without limit.
    assert m.slots_taken() == 1

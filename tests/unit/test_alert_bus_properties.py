"""What the event bus and the event log promise (monitor/alerts/bus.py, eventlog.py): no event
lost at an overflow or at the replay/live handover, paging by id, the shutdown drain, one
CloudEvent live and replayed, reads that never hold up writes. Each test was written against a
one-line change of the code that the rest of the suite let through."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx

from monitor.alerts.bus import EventBus, SinkRunner
from monitor.alerts.eventlog import EventLog
from monitor.config import load_settings
from monitor.metrics import Metrics
from monitor.types import (
    Event,
    EventType,
    Severity,
    StreamState,
    StreamStatusData,
    TrackState,
    TrackStateData,
)
from tests.support.service import running_service

T0 = 1_700_000_000.0


def status_event(t: float, stream: str = "cam") -> Event:
    return Event(EventType.STREAM_STATUS, stream, Severity.INFO, t, StreamStatusData(StreamState.RUNNING, "", 0))


def track_event(track_id: int, t: float = T0) -> Event:
    data = TrackStateData(track_id, TrackState.SUSPICIOUS, None, 0.6, 0.7, ("score_above_threshold",), (), 1.0, 2.0)
    return Event(EventType.TRACK_STATE, "lobby", Severity.WARNING, t, data)


def drain(sub) -> list[int]:  # type: ignore[no-untyped-def]
    return [sub.queue.get_nowait()[0] for _ in range(sub.queue.qsize())]


async def test_an_overflowed_subscription_never_takes_an_event_past_the_gap(tmp_path: Path) -> None:
    """A subscriber that falls behind is marked overflowed (and evicted with `since=` its last
    id): what it can still take from its queue must be a contiguous run of ids, never one
    after the dropped event, or the client's last id would jump over the loss for good."""
    log = EventLog(tmp_path / "e.sqlite3")
    bus = EventBus(log, Metrics(), queue_size=2)
    try:
        sub = await bus.subscribe()
        await bus.publish([status_event(T0 + i) for i in range(3)])  # the third does not fit
        assert sub.overflowed.is_set()
        taken = [sub.queue.get_nowait()[0]]  # the client reads one: room again
        await bus.publish([status_event(T0 + 3)])  # a later event
        taken += drain(sub)
        assert taken == list(range(sub.start_id + 1, sub.start_id + 1 + len(taken))), taken
    finally:
        await bus.aclose()
        log.close()


async def test_subscribers_joining_during_publishes_get_every_later_event(tmp_path: Path) -> None:
    """subscribe() hands over at start_id: events up to it are in the log, every later one is
    in the queue, whatever publishes are in flight while clients join."""
    log = EventLog(tmp_path / "e.sqlite3")
    bus = EventBus(log, Metrics())
    subs = []
    try:
        await bus.publish([status_event(T0)])

        async def publisher() -> None:
            for i in range(100):
                await bus.publish([status_event(T0 + i)])

        task = asyncio.create_task(publisher())
        while not task.done() and len(subs) < 1000:
            subs.append(await bus.subscribe())
            await asyncio.sleep(0)
        await task
        last = await bus.on_log(log.last_id)
        assert last == 101
        for sub in subs:
            assert sub.start_id <= last
            assert drain(sub) == list(range(sub.start_id + 1, last + 1)), sub.start_id
    finally:
        await bus.aclose()
        log.close()


async def test_api_events_returns_at_most_limit_and_pages_on(tmp_path: Path) -> None:
    """README: `GET /api/events?since=ID&limit=N` gives at most `limit` events; page on by
    asking again from the last id received."""
    settings = load_settings(None, data_dir=tmp_path / "data", demo=False)
    async with running_service(settings) as svc:
        await svc.runtime.bus.publish([status_event(T0 + i) for i in range(7)])
        got: list[int] = []
        async with httpx.AsyncClient(base_url=svc.base) as http:
            since = 0
            for _ in range(10):
                page = [int(e["id"]) for e in (await http.get(f"/api/events?since={since}&limit=3")).json()]
                assert len(page) <= 3, page
                if not page:
                    break
                got += page
                since = page[-1]
        assert got == list(range(1, 8))


class SlowSink:
    def __init__(self) -> None:
        self.got: list[int] = []

    async def start(self) -> None:
        pass

    async def send(self, event_id: int, payload: str) -> None:
        await asyncio.sleep(0.03)  # a receiver that takes a moment per event
        self.got.append(event_id)

    async def aclose(self) -> None:
        pass


async def test_the_shutdown_drain_delivers_everything_the_log_holds(tmp_path: Path) -> None:
    """aclose(drain_s): the sink is given up to drain_s to deliver what the log holds now."""
    log = EventLog(tmp_path / "e.sqlite3")
    metrics = Metrics()
    bus = EventBus(log, metrics)
    sink = SlowSink()
    runner = SinkRunner(bus, sink, "hook", metrics)
    await runner.start()
    try:
        await bus.publish([status_event(T0 + i) for i in range(4)])
        await runner.aclose(drain_s=10.0)
    finally:
        await bus.aclose()
    assert sink.got == [1, 2, 3, 4]
    assert log.get_cursor("hook") == 4
    log.close()


async def test_reads_follow_ids_even_when_the_clock_steps_back(tmp_path: Path) -> None:
    """Ids increase; events come oldest (lowest id) first, and paging from the last id seen
    misses none, whatever the wall-clock `time` of each event (NTP may step it back)."""
    log = EventLog(tmp_path / "e.sqlite3")
    bus = EventBus(log, Metrics())
    try:
        await bus.publish([status_event(T0 + 100 - 10 * i) for i in range(6)])  # later ids, earlier times
        for read in (bus.read_since, bus.replay_since):
            got: list[int] = []
            since = 0
            while page := await read(since, 2):
                got += [i for i, _ in page]
                since = page[-1][0]
            assert got == [1, 2, 3, 4, 5, 6], read
        assert [i for i, _ in await bus.replay_last(3)] == [4, 5, 6]
    finally:
        await bus.aclose()
        log.close()


async def test_face_events_carry_their_subject_live_and_replayed_alike(tmp_path: Path) -> None:
    """README: `subject` is `streams/<stream>/tracks/<track>` for face events; a live client and
    one replaying the log must get the same CloudEvent for the same id."""
    log = EventLog(tmp_path / "e.sqlite3")
    bus = EventBus(log, Metrics())
    try:
        sub = await bus.subscribe()
        await bus.publish([track_event(7), status_event(T0, "lobby")])
        live = {i: json.loads(p) for i, p in (sub.queue.get_nowait() for _ in range(2))}
        replayed = {i: json.loads(p) for i, p in await bus.replay_since(0)}
        assert live == replayed
        assert replayed[1]["subject"] == "streams/lobby/tracks/7"
        assert "subject" not in replayed[2] or replayed[2]["subject"] == "streams/lobby"
    finally:
        await bus.aclose()
        log.close()


async def test_a_replay_query_in_progress_never_holds_up_a_publish(tmp_path: Path) -> None:
    """EventBus.replay_since: clients' reads never wait for a write, nor make one wait (the
    existing test blocks before the query starts; this blocks inside it)."""
    import threading

    log = EventLog(tmp_path / "e.sqlite3")
    bus = EventBus(log, Metrics())
    in_query, release = threading.Event(), threading.Event()

    def hold_client_reads() -> int:
        if threading.current_thread().name.startswith("eventlog-read") and not in_query.is_set():
            in_query.set()  # once: the query then goes on
            release.wait(5)
        return 0

    try:
        await bus.publish([status_event(T0 + i) for i in range(3)])
        for db in (log._db, log._reader):  # noqa: SLF001  fault injection: a slow client query
            db.set_progress_handler(hold_client_reads, 1)
        replay = asyncio.create_task(bus.replay_since(0))
        assert await asyncio.to_thread(in_query.wait, 5)
        try:
            async with asyncio.timeout(2):
                stored = await bus.publish([status_event(T0 + 3)])
        finally:
            release.set()
        assert [s.id for s in stored] == [4]
        assert [i for i, _ in await replay][:3] == [1, 2, 3]
    finally:
        release.set()
        await bus.aclose()
        log.close()

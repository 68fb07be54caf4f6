"""What happens to alert events when things go wrong: a crash with alerts open, a client that
stops reading (during service and at shutdown), a publish cancelled mid-write, a full disk,
non-finite numbers. Real SQLite, a real uvicorn server and raw sockets on loopback."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import websockets

import monitor.api.http as http_module
from monitor.alerts.bus import EventBus
from monitor.alerts.eventlog import EventLog
from monitor.app import GRACEFUL_SHUTDOWN_S, SERVICE_RESTARTED, Runtime, runtime, uvicorn_config
from monitor.config import Settings, load_settings
from monitor.errors import ConfigError
from monitor.metrics import Metrics
from monitor.types import (
    AlertData,
    Event,
    EventType,
    Severity,
    Signal,
    StreamState,
    StreamStatusData,
    TrackState,
    TrackStateData,
)

OPENED, CLOSED = EventType.ALERT_OPENED.value, EventType.ALERT_CLOSED.value


def make_settings(tmp_path: Path, **kw: object) -> Settings:
    return load_settings(None, data_dir=tmp_path / "data", demo=False, **kw)


def alert(kind: EventType, alert_id: str, end_t: float | None = None, stream: str = "cam") -> Event:
    data = AlertData(alert_id, 7, 0.91, ("score_above_threshold", "blending"), (Signal("blending", 0.8, 0.6),),
                     12.5, end_t, 1_700_000_000.0)
    severity = Severity.CRITICAL if kind == EventType.ALERT_OPENED else Severity.INFO
    return Event(kind, stream, severity, time.time(), data)  # now: retention would prune an older one


def status_event(i: int, size: int = 0) -> Event:
    return Event(EventType.STREAM_STATUS, "cam", Severity.INFO, time.time(),
                 StreamStatusData(StreamState.RUNNING, "x" * size or f"n{i}", 0))


def logged(settings: Settings) -> list[tuple[str, dict[str, Any]]]:
    log = EventLog(settings.data_dir / "events.sqlite3")
    try:
        return [(e["type"], e["data"]) for e in (json.loads(p) for _, p in log.read_since(0, 1000))]
    finally:
        log.close()


class FakeWebSocket:
    """The client's side of serve_subscriber: what it was sent (event ids) and how it was closed."""

    scope: dict[str, Any] = {}
    client = "test"

    def __init__(self) -> None:
        self.closed: tuple[int, str] | None = None
        self.sent: list[int] = []

    async def send_text(self, text: str) -> None:
        self.sent.append(int(json.loads(text)["id"]))

    async def receive(self) -> dict[str, Any]:
        await asyncio.Event().wait()  # a client that sends nothing
        return {}

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = (code, reason)


def hold_appends(log: EventLog, error: Exception | None = None) -> tuple[threading.Event, threading.Event]:
    """Make ``log.append`` wait until released, as a busy log or a slow fsync does, then append
    (or raise ``error``). Returns (writing: set once an append waits, release); ``del log.append``
    restores the real one."""
    writing, release = threading.Event(), threading.Event()
    real_append = log.append

    def held(events: list[Event]) -> Any:
        writing.set()
        release.wait(30)
        if error is not None:
            raise error
        return real_append(events)

    log.append = held  # type: ignore[method-assign]
    return writing, release


async def wait_until(predicate: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    """Generous deadlines: these wait on conditions, never measure time."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


# --- alerts left open by a crash ---------------------------------------------------------------


async def test_alerts_left_open_by_a_crash_are_closed_at_start_once(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    # The log as SIGKILL leaves it: "a" opened and closed, "b" and "c" opened only.
    log = EventLog(settings.data_dir / "events.sqlite3", settings.instance)
    log.append([alert(EventType.ALERT_OPENED, "a"), alert(EventType.ALERT_OPENED, "b"),
                alert(EventType.ALERT_CLOSED, "a", end_t=20.0), alert(EventType.ALERT_OPENED, "c", stream="door"),
                status_event(0)])
    log.close()

    async with runtime(settings) as rt:
        # Through the bus, as the streams publish: counted, offered to clients and sinks.
        closed_now = rt.metrics.registry.get_sample_value("deepfake_monitor_events_total", {"type": CLOSED})
    rows = logged(settings)
    restart_closes = rows[5:]
    assert closed_now == 2
    assert [d["alert_id"] for _, d in restart_closes] == ["b", "c"]
    opened_b = next(d for t, d in rows if t == OPENED and d["alert_id"] == "b")
    (t, b), (_, c) = restart_closes
    assert t == CLOSED and b["severity"] == "info" and c["stream_id"] == "door"
    assert b["reasons"] == [*opened_b["reasons"], SERVICE_RESTARTED]
    assert b["end_t"] == b["start_t"] == opened_b["start_t"]  # the last stream time known for sure
    same = ("track_id", "score", "signals", "start_t", "start_time", "stream_id")
    assert {k: b[k] for k in same} == {k: opened_b[k] for k in same}

    async with runtime(settings) as rt:  # a second restart finds every alert closed
        again = rt.metrics.registry.get_sample_value("deepfake_monitor_events_total", {"type": CLOSED})
    assert again == 0 and len(logged(settings)) == len(rows)


def track_state(stream: str, track_id: int, state: TrackState, t: float, reasons: tuple[str, ...] = ("score",)) -> Event:
    data = TrackStateData(track_id, state, None, 0.6, 0.7, reasons, (), t - 1.0, t)
    return Event(EventType.TRACK_STATE, stream, Severity.INFO, time.time(), data)


async def test_tracks_left_unended_by_a_crash_are_ended_at_start_once(tmp_path: Path) -> None:
    # Before: the restart closed the alerts only, and a subscriber keeping per-track state
    # showed the dead run's faces as suspicious (or in alert) for ever.
    settings = make_settings(tmp_path)
    log = EventLog(settings.data_dir / "events.sqlite3", settings.instance)
    log.append([
        # An earlier run that stopped cleanly: its track 2 on "cam" ended.
        track_state("cam", 2, TrackState.SUSPICIOUS, 5.0), track_state("cam", 2, TrackState.INCONCLUSIVE, 9.0, ("track_ended",)),
        # The run that died: ids start at 1 again, and track 2 on "cam" is another face.
        track_state("cam", 1, TrackState.CLEAR, 3.0), track_state("cam", 1, TrackState.SUSPICIOUS, 4.5),
        track_state("cam", 2, TrackState.CLEAR, 6.0),
        track_state("door", 1, TrackState.ALERT, 8.0), alert(EventType.ALERT_OPENED, "x", stream="door"),
        track_state("door", 3, TrackState.CLEAR, 2.0), track_state("door", 3, TrackState.INCONCLUSIVE, 7.0, ("track_ended",)),
    ])
    log.close()

    async with runtime(settings):
        pass
    added = logged(settings)[9:]
    assert [t for t, _ in added] == [CLOSED, *[EventType.TRACK_STATE.value] * 3]  # alert.closed first, as a clean stop
    ends = {(d["stream_id"], d["track_id"]): d for _, d in added[1:]}
    assert set(ends) == {("cam", 1), ("cam", 2), ("door", 1)}
    for d in ends.values():
        assert d["state"] == "inconclusive" and d["reasons"] == ["track_ended", SERVICE_RESTARTED]
    assert ends[("cam", 1)]["previous"] == "suspicious" and ends[("cam", 1)]["t"] == 4.5
    assert ends[("door", 1)]["previous"] == "alert" and ends[("cam", 2)]["previous"] == "clear"

    async with runtime(settings):  # a second restart finds every track ended
        pass
    assert len(logged(settings)) == 13


async def test_an_old_row_sqlite_cannot_parse_does_not_keep_alerts_open(tmp_path: Path) -> None:
    # Logs written before +-inf was mapped to null hold `Infinity`, which SQLite's JSON functions
    # reject. Before: the track query raised on it, and with it the whole start-up step, so the
    # open alert below stayed open for good.
    settings = make_settings(tmp_path)
    log = EventLog(settings.data_dir / "events.sqlite3", settings.instance)
    log.append([track_state("cam", 4, TrackState.SUSPICIOUS, 3.0), alert(EventType.ALERT_OPENED, "kept-open")])
    log._db.execute(  # noqa: SLF001 - a row as an older version wrote it
        "INSERT INTO events(type, stream_id, severity, time, subject, data) VALUES (?, ?, ?, ?, ?, ?)",
        (EventType.TRACK_STATE.value, "cam", "info", time.time(), "streams/cam/tracks/5",
         '{"track_id": 5, "state": "alert", "previous": "suspicious", "score": Infinity, "raw_score": 1.0, '
         '"reasons": ["score_above_threshold"], "signals": [], "since_t": 1.0, "t": 2.0}'),
    )
    # The same version wrote that peak into its alerts too: an old alert, opened and closed.
    # Before: the alert query failed on it, on every start, and kept "kept-open" open.
    for kind in (EventType.ALERT_OPENED, EventType.ALERT_CLOSED):
        log._db.execute(  # noqa: SLF001
            "INSERT INTO events(type, stream_id, severity, time, subject, data) VALUES (?, ?, ?, ?, ?, ?)",
            (kind.value, "cam", "critical", time.time(), "streams/cam/alerts/old",
             '{"alert_id": "old", "track_id": 5, "score": Infinity, "signals": []}'),
        )
    log.close()

    async with runtime(settings):
        pass
    added = logged(settings)[5:]
    assert [d.get("alert_id") for t, d in added if t == CLOSED] == ["kept-open"]
    ends = {d["track_id"]: d for t, d in added if t == EventType.TRACK_STATE.value}
    assert set(ends) == {4, 5} and ends[5]["previous"] == "alert" and ends[5]["score"] is None


def damage(path: Path, how: str) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as f:
        if how == "zeroed_pages":  # two pages in the middle, as a disk or copy error leaves them
            f.seek(size // 3)
            f.write(b"\0" * 8192)
        else:  # "garbage": not a database at all
            f.write(os.urandom(size))


@pytest.mark.parametrize("how", ["zeroed_pages", "garbage"])
async def test_a_damaged_event_log_is_moved_aside_and_a_new_one_started(
    tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture,
) -> None:
    # Before: zeroed pages were accepted at start; every replay and every sink's read then failed
    # for good while new alerts went into the damaged file. A garbage file stopped the start.
    settings = make_settings(tmp_path)
    path = settings.data_dir / "events.sqlite3"
    log = EventLog(path, settings.instance)
    log.append([status_event(i, size=300) for i in range(3000)])
    old_epoch = log.epoch
    log.close()
    damage(path, how)
    kept = path.read_bytes()
    async with runtime(settings) as rt:
        assert rt.log.epoch != old_epoch and rt.log.last_id() == 0
        stored = await asyncio.to_thread(rt.log.append, [alert(EventType.ALERT_OPENED, "new")])
        assert stored[0].id == 1 and await asyncio.to_thread(rt.log.read_since, 0, 10, True)
    moved = [p for p in settings.data_dir.iterdir() if p.name.startswith("events.sqlite3.corrupt-")]
    assert [p.read_bytes() for p in moved if not p.name.endswith(("-wal", "-shm", ".mark"))] == [kept]  # nothing deleted
    assert any(p.name.endswith(".mark") for p in moved)  # the old log's mark went with it: no spurious warning
    assert not any("is not the log its mark names" in r.getMessage() for r in caplog.records)
    message = next(r.getMessage() for r in caplog.records if r.levelname == "ERROR" and "damaged" in r.getMessage())
    main = next(p for p in moved if not p.name.endswith(("-wal", "-shm", ".mark")))
    assert main.name in message and ".recover" in message and "not closed" in message
    async with runtime(settings) as rt:  # the new log is kept at the next start
        assert rt.log.last_id() >= 1


async def test_a_log_damaged_while_running_is_replaced_and_loses_no_later_event(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    # Before: SQLite's "malformed" is a DatabaseError, not the OperationalError a stream waits out:
    # each stream dropped its events after 6 tries, every later batch too, every sink's read and
    # client replay failed, and only a restart (which nothing triggered) moved the file aside.
    from monitor.alerts.bus import SinkRunner
    from tests.unit.test_sink_delivery import RecordingSink

    path = tmp_path / "events.sqlite3"
    log = EventLog(path)
    metrics = Metrics()
    bus = EventBus(log, metrics)
    sink = RecordingSink()
    runner = SinkRunner(bus, sink, "hook", metrics, retry_delay_s=0.01, max_retry_delay_s=0.05)
    await runner.start()
    try:
        await bus.publish([status_event(i, size=200) for i in range(2000)])
        await wait_until(lambda: len(sink.got) == 2000, "the sink to catch up")
        sub = await bus.subscribe()
        old_epoch = log.epoch

        client = FakeWebSocket()
        serving = asyncio.create_task(http_module.serve_subscriber(client, bus, metrics, 2000, old_epoch))  # type: ignore[arg-type]
        await wait_until(lambda: len(bus._subs) == 2, "the client to subscribe")
        await bus.on_log(lambda: log._db.execute("PRAGMA wal_checkpoint(TRUNCATE)"))
        await bus.on_log(lambda: log._db.execute("PRAGMA cache_size=1"))  # read pages from disk again
        size = path.stat().st_size
        with open(path, "r+b") as f:  # the storage zeroes every page after the first
            f.seek(4096)
            f.write(b"\0" * (size - 4096))
        stored = await bus.publish([alert(EventType.ALERT_OPENED, "after")])
        assert bus.log is not log and bus.log.epoch != old_epoch and [s.id for s in stored] == [1]
        assert sub.overflowed.is_set() and sub.log_replaced  # its client starts again from the new log
        await asyncio.wait_for(serving, 10)
        assert client.closed is not None and client.closed[0] == 4409 and "since=0" in client.closed[1]
        await bus.publish([alert(EventType.ALERT_CLOSED, "after", end_t=13.0)])
        rows = await bus.replay_since(0, 10)
        assert [json.loads(p)["type"] for _, p in rows] == [OPENED, CLOSED]
        await wait_until(lambda: sink.got[2000:] == [1, 2], "the sink to deliver the new log from its start")
        assert metrics.registry.get_sample_value("deepfake_monitor_event_log_replaced_total") == 1.0
    finally:
        await runner.aclose()
        await bus.aclose()
        bus.log.close()
    moved = [p.name for p in tmp_path.iterdir() if p.name.startswith("events.sqlite3.corrupt-")]
    assert any(not n.endswith(("-wal", "-shm", ".mark")) for n in moved)
    assert any("is damaged" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)


def damage_appends(log: EventLog, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every append to ``log`` fails as on a damaged file; the bus retries a replacement fast."""
    import sqlite3

    def corrupt(events: list[Event]) -> Any:
        error = sqlite3.DatabaseError("database disk image is malformed")
        error.sqlite_errorcode = 11  # type: ignore[attr-defined]
        raise error

    log.append = corrupt  # type: ignore[method-assign]
    monkeypatch.setattr(EventBus, "REOPEN_RETRY_S", 0.05)


async def test_a_replacement_log_that_cannot_be_opened_yet_is_tried_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The damaged log is closed and moved aside; if the new one cannot be opened (a full disk),
    # the stream is told a transient error and waits, and the next try opens it.
    import sqlite3

    import monitor.alerts.bus as bus_module

    path = tmp_path / "events.sqlite3"
    log = EventLog(path)
    bus = EventBus(log, Metrics())
    real_open = bus_module.open_event_log
    tries: list[int] = []

    def full_disk_once(*args: Any) -> EventLog:
        tries.append(1)
        if len(tries) == 1:
            raise sqlite3.OperationalError("database or disk is full")
        return real_open(*args)

    monkeypatch.setattr(bus_module, "open_event_log", full_disk_once)

    damage_appends(log, monkeypatch)
    bus.register_sink("hook")
    try:
        with pytest.raises(sqlite3.OperationalError):  # what StreamPipeline._publish waits out
            await bus.publish([alert(EventType.ALERT_OPENED, "a")])
        # Tried again in the background: clients can read again before any new event comes.
        await wait_until(lambda: bus.log is not log, "the replacement to open", 10)
        assert await bus.last_id() == 0 and len(tries) == 2
        # The sink owes the new log from its start even if it crashed before reading it.
        assert bus.log.get_cursor("hook") == 0
        stored = await bus.publish([alert(EventType.ALERT_OPENED, "a")])
        assert [s.id for s in stored] == [1] and len(tries) == 2
    finally:
        await bus.aclose()
        bus.log.close()


async def test_a_background_reopen_cancelled_at_shutdown_closes_the_log_it_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: stopping the service while the background retry was opening the replacement log
    # cancelled the wait, the thread opened the log anyway, and its connection was never closed.
    import sqlite3
    import threading

    import monitor.alerts.bus as bus_module

    log = EventLog(tmp_path / "events.sqlite3")
    bus = EventBus(log, Metrics())
    real_open = bus_module.open_event_log
    inside, release = threading.Event(), threading.Event()
    opened: list[EventLog] = []
    tries: list[int] = []

    def slow_second_open(*args: Any) -> EventLog:
        tries.append(1)
        if len(tries) == 1:
            raise sqlite3.OperationalError("database or disk is full")
        inside.set()
        release.wait(10)
        new = real_open(*args)
        opened.append(new)
        return new

    monkeypatch.setattr(bus_module, "open_event_log", slow_second_open)

    damage_appends(log, monkeypatch)
    with pytest.raises(sqlite3.OperationalError):
        await bus.publish([alert(EventType.ALERT_OPENED, "a")])
    await wait_until(inside.is_set, "the background retry to start opening", 10)
    threading.Timer(0.2, release.set).start()
    await bus.aclose()  # the service stops meanwhile
    assert len(opened) == 1 and bus.log is log  # opened, never taken into use
    with pytest.raises(sqlite3.ProgrammingError):  # closed: not leaked
        opened[0].last_id()


def test_a_log_that_cannot_be_opened_is_not_taken_for_a_damaged_one(tmp_path: Path) -> None:
    # Locked, unreadable or on a full disk (OperationalError): raised as it is, the file stays.
    import sqlite3

    from monitor.alerts.eventlog import is_corrupt, open_event_log

    def error(code: int) -> sqlite3.Error:
        exc = sqlite3.DatabaseError("x")
        exc.sqlite_errorcode = code  # type: ignore[attr-defined]
        return exc

    # SQLite reports extended codes (SQLITE_CORRUPT_INDEX = 779): the primary code is the low byte.
    assert [is_corrupt(error(c)) for c in (11, 779, 26, 5, 517, 10)] == [True, True, True, False, False, False]
    path = tmp_path / "events.sqlite3"
    path.mkdir()  # "unable to open database file"
    with pytest.raises(sqlite3.OperationalError):
        open_event_log(path)
    assert [p.name for p in tmp_path.iterdir()] == ["events.sqlite3"] and path.is_dir()


async def test_a_second_service_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    # Before: it closed the first one's live alerts as service_restarted and ran every sink twice.
    settings = make_settings(tmp_path)
    async with runtime(settings) as first:
        await first.bus.publish([alert(EventType.ALERT_OPENED, "live")])
        with pytest.raises(ConfigError, match=rf"data_dir {settings.data_dir} is in use by another deepfake-monitor \(pid {os.getpid()}\)"):
            async with runtime(settings):
                pass
        assert [d.get("alert_id") for t, d in logged(settings) if t == CLOSED] == []
    async with runtime(settings):  # released with the first
        pass
    mode = lambda p: p.stat().st_mode & 0o777  # noqa: E731
    assert mode(settings.data_dir / "events.sqlite3") == 0o600 and mode(settings.data_dir / ".lock") == 0o600


def test_the_data_dir_lock_never_stops_a_start_by_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # NFS without lockd (ENOLCK) and a full disk (the pid cannot be written) raised a raw
    # OSError: the service could not start, and on a full disk never got to prune.
    import errno
    import fcntl

    import monitor.app
    from monitor.app import data_dir_lock

    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    def disk_full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with data_dir_lock(tmp_path / "a"):
        pass
    assert "cannot lock data_dir" in caplog.text
    monkeypatch.undo()
    monkeypatch.setattr(monitor.app.os, "write", disk_full)
    with data_dir_lock(tmp_path / "b"):
        pass


async def test_old_evidence_is_pruned_before_the_event_log_is_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # On a full disk opening the log fails until something is freed: pruning the evidence after
    # it meant a service that could never start again, with the old evidence never removed.
    import monitor.app
    from monitor.alerts.evidence import EvidenceStore

    order: list[str] = []
    prune, open_log = EvidenceStore.prune, monitor.app.open_event_log

    def pruned(self: EvidenceStore, older_than: float) -> int:
        order.append("evidence pruned")
        return prune(self, older_than)

    def opened(*args: Any, **kwargs: Any) -> EventLog:
        order.append("log opened")
        return open_log(*args, **kwargs)

    monkeypatch.setattr(EvidenceStore, "prune", pruned)
    monkeypatch.setattr(monitor.app, "open_event_log", opened)
    async with runtime(make_settings(tmp_path)):
        pass
    assert order == ["evidence pruned", "log opened"]


# --- clients that stop reading -----------------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(rt: Runtime, settings: Settings) -> AsyncIterator[tuple[uvicorn.Server, asyncio.Task[None], int]]:
    """The service's uvicorn, with its server object at hand (its open connections)."""
    config = uvicorn_config(rt.app, settings, rt.metrics)
    config.port, config.log_level = 0, "warning"
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    try:
        await wait_until(lambda: server.started or task.done(), "server start", 20)
        yield server, task, server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        server.force_exit = True  # whatever the test left behind: never hang here
        await asyncio.wait({task}, timeout=30)


def stalled_client(port: int) -> socket.socket:
    """An alert websocket client that completes the handshake and then never reads again."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window fills fast
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(f"GET /ws/alerts HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)  # byte by byte: read the handshake answer and nothing after it
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def backed_up(server: uvicorn.Server) -> bool:
    """Whether some connection holds data the socket would not take (the client stopped reading)."""
    return any(c.transport.get_write_buffer_size() > 0 for c in list(server.server_state.connections))


async def stall(rt: Runtime, server: uvicorn.Server, port: int) -> socket.socket:
    sock = await asyncio.to_thread(stalled_client, port)  # blocking: off the server's loop
    await wait_until(lambda: rt.bus._subs, "the subscription")  # noqa: SLF001
    # 10 MB: more than every socket buffer on the way, so a send is left waiting for room (a
    # client that stopped reading while nothing is sent is not noticed until the next event).
    for i in range(200):
        await rt.bus.publish([status_event(i, 50_000)])
    # Or already dropped for it: on a loaded machine the deadline may pass between two looks.
    evicted = lambda: (rt.metrics.registry.get_sample_value("deepfake_monitor_websocket_evictions_total") or 0) > 0  # noqa: E731
    await wait_until(lambda: backed_up(server) or evicted(), "the server's writes backing up")
    return sock


async def test_a_client_that_stops_reading_is_dropped_and_frees_its_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: every send waited for room in the socket for ever, the 1013 close too; the client
    # kept its subscription and the only place (max_ws_clients=1), so no one else got alerts.
    monkeypatch.setattr(http_module, "WS_SEND_TIMEOUT_S", 1.0)
    settings = make_settings(tmp_path, alerts={"queue_size": 5}, server={"max_ws_clients": 1})
    async with runtime(settings) as rt, serving(rt, settings) as (server, _, port):
        sock = await stall(rt, server, port)
        try:
            reg = rt.metrics.registry
            await wait_until(lambda: reg.get_sample_value("deepfake_monitor_websocket_clients") == 0, "eviction")
            assert reg.get_sample_value("deepfake_monitor_websocket_evictions_total") == 1
            assert not rt.bus._subs  # noqa: SLF001 - its subscription is gone too
            # Its connection is dropped, unsent data and all, although it still reads nothing.
            await wait_until(lambda: not server.server_state.connections, "the transport aborted")
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws/alerts") as other:
                await wait_until(lambda: rt.bus._subs, "the new subscription")  # noqa: SLF001
                await rt.bus.publish([status_event(999)])
                async with asyncio.timeout(30):
                    got = json.loads(await other.recv())
            assert got["data"]["detail"] == "n999"
        finally:
            sock.close()


async def test_a_client_that_stops_reading_does_not_block_shutdown(tmp_path: Path) -> None:
    # Before: uvicorn waited for that connection to close, and a close waits for the unsent
    # data to drain: server.serve() never returned, so the teardown (closing alerts, the sink
    # drain) never ran, and docker stop ended the process with SIGKILL.
    settings = make_settings(tmp_path, alerts={"queue_size": 5})
    async with asyncio.timeout(120):  # the teardown below must run and finish, too
        async with runtime(settings) as rt, serving(rt, settings) as (server, task, port):
            assert server.config.timeout_graceful_shutdown == GRACEFUL_SHUTDOWN_S
            sock = await stall(rt, server, port)
            try:
                server.should_exit = True  # what SIGTERM does
                done, _ = await asyncio.wait({task}, timeout=60)  # 5 s expected: generous for a loaded machine
                assert task in done, "server.serve() still waits for the stalled client"
                task.result()
            finally:
                sock.close()


# --- a publish cancelled while its write runs --------------------------------------------------


async def test_a_cancelled_publish_still_reaches_live_subscribers(tmp_path: Path) -> None:
    # Before: the executor thread committed event 1, but the cancelled publish skipped the
    # fan-out; a live client then got event 2 and never event 1.
    log = EventLog(tmp_path / "e.sqlite3")
    writing, release = hold_appends(log)
    bus = EventBus(log, Metrics())
    try:
        sub = await bus.subscribe()
        publishing = asyncio.create_task(bus.publish([status_event(1)]))
        await wait_until(writing.is_set, "the write under way", 30)
        publishing.cancel()
        await asyncio.sleep(0)
        release.set()
        with pytest.raises(asyncio.CancelledError):  # the caller still learns it was cancelled
            await publishing
        assert sub.queue.qsize() == 1  # ...but only after the fan-out
        del log.append  # the real one again
        await bus.publish([status_event(2)])
        assert [sub.queue.get_nowait()[0] for _ in range(sub.queue.qsize())] == [1, 2]
    finally:
        release.set()
        await bus.aclose()
        log.close()


async def test_a_cancelled_publish_whose_write_then_fails_is_not_taken_for_stored(tmp_path: Path) -> None:
    # Before: `started` stayed set, so the cancelled stream took the events for stored and never
    # said they were dropped (often the shutdown's own alert.closed).
    import sqlite3

    log = EventLog(tmp_path / "e.sqlite3")
    writing, release = hold_appends(log, sqlite3.OperationalError("database is locked"))
    bus = EventBus(log, Metrics())
    try:
        started = asyncio.Event()
        publishing = asyncio.create_task(bus.publish([status_event(1)], started))
        await wait_until(writing.is_set, "the write under way", 30)
        assert started.is_set()
        publishing.cancel()
        await asyncio.sleep(0)
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await publishing
        assert not started.is_set()  # the caller logs them as dropped
    finally:
        release.set()
        await bus.aclose()
        log.close()


async def test_a_client_joining_waits_for_no_queued_write(tmp_path: Path) -> None:
    # Before: subscribing, and /api/events' check of `since`, ran on the writer thread behind
    # every queued append (each up to SQLite's 30 s busy timeout while another process held
    # the lock): a dashboard refill or `monitor alerts` resume hung meanwhile.
    log = EventLog(tmp_path / "e.sqlite3")
    log.append([status_event(1)])
    bus = EventBus(log, Metrics())
    release = threading.Event()
    try:
        early = await bus.subscribe()
        writing, release = hold_appends(log)
        publishing = asyncio.create_task(bus.publish([status_event(2)]))
        await wait_until(writing.is_set, "the write under way", 30)
        async with asyncio.timeout(2):
            sub = await bus.subscribe()
            assert await bus.last_id() == 1
        assert sub.start_id == early.start_id == 1
        release.set()
        await publishing
        assert sub.queue.get_nowait()[0] == 2 and early.queue.get_nowait()[0] == 2  # nothing skipped
    finally:
        release.set()
        await bus.aclose()
        log.close()


async def test_a_resume_from_an_event_committed_but_not_yet_offered_is_not_refused(tmp_path: Path) -> None:
    # A client that read id 2 from /api/events (committed, on the readers' connection) before
    # the bus offered it was told its log had been reset (4409): subscriptions start at the
    # newest id offered. The resume is checked against the committed ids too.
    log = EventLog(tmp_path / "e.sqlite3")
    bus = EventBus(log, Metrics())
    await bus.publish([status_event(1)])
    await bus.subscribe()
    real_mark = log._write_mark
    committed, release = threading.Event(), threading.Event()

    def slow_mark(*args: Any, **kwargs: Any) -> Any:
        committed.set()
        release.wait(30)  # after COMMIT, before append returns: a slow disk
        return real_mark(*args, **kwargs)

    log._write_mark = slow_mark  # type: ignore[method-assign]
    publishing = asyncio.create_task(bus.publish([status_event(2)]))

    client = FakeWebSocket()
    try:
        await wait_until(committed.is_set, "the commit", 30)
        assert (await bus.replay_last(1))[-1][0] == 2  # what the client saw
        serving = asyncio.create_task(http_module.serve_subscriber(client, bus, bus.metrics, 2, log.epoch))  # type: ignore[arg-type]
        await asyncio.sleep(0.3)
        assert client.closed is None  # before: 4409 "since=2 > last id 1"
        release.set()
        await publishing
        await bus.publish([status_event(3)])
        await wait_until(lambda: client.sent == [3], "the next event, and not event 2 again")
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
    finally:
        release.set()
        await bus.aclose()
        log.close()


# --- a full disk -------------------------------------------------------------------------------


async def test_a_full_disk_raises_its_own_error_and_is_counted(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "e.sqlite3")
    metrics = Metrics()
    assert metrics.registry.get_sample_value("deepfake_monitor_event_log_errors_total") == 0  # born at zero
    pages = log._db.execute("PRAGMA page_count").fetchone()[0]  # noqa: SLF001
    log._db.execute(f"PRAGMA max_page_count={pages}")  # noqa: SLF001 - the disk is full now
    bus = EventBus(log, metrics)
    big = Event(EventType.STREAM_STATUS, "cam", Severity.INFO, 1.0,
                StreamStatusData(StreamState.RUNNING, "x" * 20_000, 0))
    try:
        # Before: SQLite had rolled back already; our ROLLBACK raised "cannot rollback - no
        # transaction is active", which hid the real error in the log line and the exception.
        with pytest.raises(Exception, match="full") as raised:
            await bus.publish([big])
        assert raised.value.__context__ is None
        assert metrics.registry.get_sample_value("deepfake_monitor_event_log_errors_total") == 1
        log._db.execute("PRAGMA max_page_count=1000000")  # noqa: SLF001 - space freed
        assert [s.id for s in await bus.publish([big])] == [1]  # no transaction left dangling
    finally:
        await bus.aclose()
        log.close()


# --- non-finite numbers ------------------------------------------------------------------------


def _strict(text: str) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_infinity_and_nan_are_never_written_as_json(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "e.sqlite3")
    try:
        signals = (Signal("a", math.inf, 1.0), Signal("b", -math.inf, 0.5), Signal("c", math.nan, 0.0))
        data = AlertData("x", 1, math.inf, (), signals, 0.0, None, 1.0)
        stored = log.append([Event(EventType.ALERT_OPENED, "cam", Severity.CRITICAL, 1.0, data)])
        # Before: "score": Infinity, live and replayed (JSON.parse and strict receivers refuse it).
        for text in (log.render(stored[0]), log.read_since(0)[0][1]):
            event = _strict(text)
            assert event["data"]["score"] is None
            assert [s["value"] for s in event["data"]["signals"]] == [None, None, None]
            json.dumps(event, allow_nan=False)
        # A row written by an earlier version, which stored Infinity as is, is read back as null.
        log._db.execute("UPDATE events SET data = ?", ('{"score":Infinity,"v":-Infinity}',))  # noqa: SLF001
        assert _strict(log.read_since(0)[0][1])["data"] == {"score": None, "v": None}
    finally:
        log.close()


def test_the_event_log_is_written_through_to_disk(tmp_path: Path) -> None:
    # A crash of the process loses nothing with any setting; power loss or an OS crash does
    # unless SQLite syncs each commit (synchronous FULL, 2) in a write-ahead log.
    log = EventLog(tmp_path / "events.sqlite3")
    try:
        assert log._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert log._db.execute("PRAGMA synchronous").fetchone()[0] == 2
    finally:
        log.close()


async def test_alerts_total_counts_each_alert_opened_by_severity(tmp_path: Path) -> None:
    # The counter dashboards chart and alerting rules fire on: closes and other events do not count.
    metrics = Metrics()
    bus = EventBus(EventLog(tmp_path / "events.sqlite3"), metrics)
    try:
        await bus.publish([alert(EventType.ALERT_OPENED, "a"), alert(EventType.ALERT_CLOSED, "a", end_t=20.0), status_event(1)])
        await bus.publish([alert(EventType.ALERT_OPENED, "b")])
        count = metrics.registry.get_sample_value
        assert count("deepfake_monitor_alerts_total", {"severity": Severity.CRITICAL.value}) == 2
        assert count("deepfake_monitor_alerts_total", {"severity": Severity.INFO.value}) in (None, 0)
    finally:
        await bus.aclose()

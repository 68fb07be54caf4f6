"""Composition root: settings -> objects. One AsyncExitStack owns start-up order and teardown."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import resource
import signal
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from monitor.alerts.bus import EventBus, SinkRunner
from monitor.alerts.eventlog import EventLog, open_event_log
from monitor.alerts.evidence import EvidenceStore
from monitor.alerts.policy import SEVERITY
from monitor.api.http import create_app
from monitor.clock import Clock, SystemClock
from monitor.components import detector_factory, faces_factory
from monitor.config import DEMO_URL, Settings, StreamConfig, redact_url
from monitor.errors import ConfigError, StreamStartFailed
from monitor.metrics import Metrics
from monitor.pipeline.manager import StreamManager
from monitor.pipeline.worker import run_in_daemon_thread
from monitor.plugins import SINK_GROUP, load_plugin, plugin_config
from monitor.sources.base import failure_text, redact_text
from monitor.sources.webrtc import check_media_addresses
from monitor.types import AlertData, Event, EventType, Severity, Signal, TrackState, TrackStateData

logger = logging.getLogger(__name__)
# At shutdown, how long each alert sink may take to deliver what is owed before it is stopped
# (the rest is delivered after the next start). Inside docker stop's 10 s grace period.
SINK_DRAIN_S = 3.0
# At shutdown, how long uvicorn waits for open connections (alert websockets, a slow response)
# before it cancels their handlers. Without a limit, one client that stopped reading kept its
# connection, and uvicorn waiting, for ever: the teardown (closing alerts, SINK_DRAIN_S) never
# ran and docker stop's SIGKILL ended it. Short, so the teardown normally still fits in the 10 s.
GRACEFUL_SHUTDOWN_S = 5.0

DEMO_STREAM = StreamConfig(id="demo", url=DEMO_URL)


@dataclass
class Runtime:
    settings: Settings
    metrics: Metrics
    bus: EventBus
    manager: StreamManager
    app: FastAPI

    @property
    def log(self) -> EventLog:
        """The event log now: the bus replaces one found damaged while running."""
        return self.bus.log


@contextlib.asynccontextmanager
async def runtime(settings: Settings, clock: Clock | None = None, metrics: Metrics | None = None) -> AsyncIterator[Runtime]:
    """Build and start everything the settings describe; tear it down in reverse order."""
    clock = clock or SystemClock()
    metrics = metrics or Metrics()
    check_media_addresses(settings)  # what the settings cannot check: the machine's own addresses
    async with contextlib.AsyncExitStack() as stack:
        # First: a second service on the same data_dir closed the first one's live alerts as
        # "service_restarted" and ran every sink twice.
        stack.enter_context(data_dir_lock(settings.data_dir))
        evidence = EvidenceStore(
            settings.data_dir / "evidence",
            lambda ok: metrics.evidence_saved.labels("saved" if ok else "failed").inc(),
            max_bytes=settings.alerts.evidence_max_mib << 20,
            min_free_bytes=settings.alerts.evidence_min_free_mib << 20,
        )
        # After the streams stop (registered before them): what their last alerts queued is written.
        stack.push_async_callback(asyncio.to_thread, evidence.close)
        # Old evidence goes with old events, also when saving it has been turned off since; before
        # the log is opened, as on a full disk opening it fails until something is freed.
        await asyncio.to_thread(evidence.prune, clock.time() - settings.alerts.retention_days * 86400)
        try:
            log = open_event_log(settings.data_dir / "events.sqlite3", settings.instance)
        except (OSError, sqlite3.Error) as exc:  # a data_dir that is a file, not writable, full
            raise ConfigError(f"cannot open the event log in data_dir {settings.data_dir}: {exc}") from exc
        stack.callback(log.close)
        try:
            prune_event_log(log, settings, clock.time())
        except sqlite3.Error as exc:
            # A nearly full disk: watching goes first. Small appends may still fit; if they do not,
            # streams pause and retry (event_log_errors_total) rather than the service not starting.
            logger.warning("could not prune the event log (%s); running with it as it is, pruning at the next start", exc)
        bus = EventBus(log, metrics, settings.alerts.queue_size)
        # Closed after the bus's threads stop; a log the bus replaced (damaged) too.
        stack.callback(lambda: bus.log is not log and bus.log.close())
        stack.push_async_callback(bus.aclose)
        # And again every day: a service never restarted kept every event and every alert's
        # evidence for good, until the disk filled (and then could not start again).
        stop_pruning = asyncio.Event()
        pruning = asyncio.create_task(prune_daily(bus, evidence, settings, clock, stop_pruning), name="prune-daily")
        stack.push_async_callback(_stopped, pruning, stop_pruning)

        make_detector = detector_factory(settings)  # fails loudly on an unknown detector
        # Built once now, its weights loaded and verified: a service taking streams only over WHIP
        # or the API started "healthy" with a broken bundle and failed at the first stream.
        try:
            await run_in_daemon_thread(make_detector)  # a hung load must not hold up a SIGTERM
        except ConfigError:
            raise
        except Exception as exc:  # a plugin's own failure: named, not a traceback
            raise ConfigError(f"detector {settings.detector.name!r} cannot be created: {failure_text(exc)}") from exc

        # Sinks start before the manager so that they stop after it: the events the streams'
        # shutdown writes (alerts closed, tracks ended) are delivered before the process exits.
        # They drain together, under one deadline, not one after another.
        runners: list[SinkRunner] = []
        stack.push_async_callback(close_sinks, runners, SINK_DRAIN_S)
        for sink_config in settings.sinks:
            cls = load_plugin(SINK_GROUP, sink_config.name)
            options = plugin_config(cls, sink_config.options, url_path_secret=True)
            what = f"sink {sink_config.name!r} ({sink_config.key})"
            try:
                sink = cls(options)
            except Exception as exc:  # a plugin's own failure: named, not a traceback
                raise ConfigError(f"{what} cannot be created: {failure_text(exc)}") from exc
            runner = SinkRunner(bus, sink, sink_config.key, metrics)
            try:
                await runner.start()
            except Exception as exc:
                try:
                    await sink.aclose()
                except Exception:
                    logger.exception("closing %s after it failed to start", what)
                raise ConfigError(f"{what} failed to start: {failure_text(exc)}") from exc
            runners.append(runner)

        # Before any stream can open a new alert, and after the sinks started, so they deliver
        # the closes too (a sink new to this log starts from its end).
        await close_interrupted_alerts(bus, clock.time())

        manager = StreamManager(
            settings, bus, metrics, clock, make_detector, faces_factory(settings),
            evidence=evidence if settings.alerts.evidence else None,
        )
        stack.push_async_callback(manager.aclose)

        streams = settings.streams or ((DEMO_STREAM,) if settings.demo else ())
        for stream in streams:
            try:
                await manager.add(stream)
            except StreamStartFailed as exc:
                # As a detector that cannot load at start-up: exit 2 with the reason, not a
                # traceback and exit 1. (A camera that is down is not this: it starts and retries.)
                raise ConfigError(str(exc)) from exc

        app = create_app(settings, manager, bus, metrics, evidence)
        yield Runtime(settings, metrics, bus, manager, app)


async def close_sinks(runners: list[SinkRunner], drain_s: float) -> None:
    results = await asyncio.gather(*(r.aclose(drain_s) for r in runners), return_exceptions=True)
    for runner, result in zip(runners, results):
        if isinstance(result, BaseException):
            logger.warning("closing sink %s failed: %r", runner.name, result)


LOCK_FILE = ".lock"


@contextlib.contextmanager
def data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Hold ``data_dir`` for this service alone (an advisory lock on ``data_dir/.lock``, released
    when the process ends, however it ends). ConfigError naming the holder when another has it."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:  # a data_dir that is a file, not writable
        raise ConfigError(f"cannot open the event log in data_dir {data_dir}: {exc}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
            raise ConfigError(
                f"data_dir {data_dir} is in use by another deepfake-monitor (pid {holder}): two services "
                "on one event log would close each other's alerts and deliver every event twice. "
                "Give each service its own data_dir"
            ) from None
        except OSError as exc:  # no locks there (NFS without lockd): run, as before the lock
            logger.warning("cannot lock data_dir %s (%s): make sure no other service uses it", data_dir, exc)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:  # a full disk: the pid only names the holder; pruning must still run
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


# Reason code added to the alert.closed written at start-up for an alert a previous run left open.
SERVICE_RESTARTED = "service_restarted"


async def close_interrupted_alerts(bus: EventBus, now: float) -> int:
    """Close every alert a previous run left open, and end its face tracks: it died (SIGKILL,
    OOM, a stop past its grace period) before its teardown did, and no later run would. Each
    alert gets the ``alert.closed`` the stream would have written, then each track the last
    ``track.state`` (``inconclusive``, ``track_ended``) a clean stop announces, so a subscriber
    keeping per-track state does not show the dead run's faces as suspicious for ever. Both go
    through the normal publish path (sinks, clients), with ``service_restarted`` among their
    reasons. Once written, the log holds them, so the next start finds nothing: idempotent. A
    failure to write is logged and left for the next start rather than stopping this one.
    Returns how many alerts it closed."""
    try:
        try:
            unclosed = await bus.on_log(bus.log.unclosed_alerts)
        except Exception:  # the tracks' ends still follow
            logger.exception("could not find the alerts the previous run left open")
            unclosed = []
        closes = [_restart_close(stream_id, data, now) for stream_id, data in unclosed]
        try:
            unended = await bus.on_log(bus.log.unended_tracks)
        except Exception:  # the tracks' ends are a courtesy: never at the cost of the alerts' closes
            logger.exception("could not find the face tracks the previous run left unended")
            unended = []
        ends = [_restart_end(stream_id, data, now) for stream_id, data in unended]
        if closes or ends:
            await bus.publish(closes + ends)  # as a clean stop orders them: alert.closed first
        if closes:
            logger.warning(
                "closed %d alert(s) left open by the previous run (reason %s): %s",
                len(closes), SERVICE_RESTARTED, ", ".join(str(data["alert_id"]) for _, data in unclosed),
            )
        if ends:
            logger.warning("ended %d face track(s) the previous run left unended (reason %s)", len(ends), SERVICE_RESTARTED)
    except Exception:
        logger.exception("could not close the alerts left open by the previous run; the next start tries again")
        return 0
    return len(closes)


def _restart_end(stream_id: str, data: dict[str, Any], now: float) -> Event:
    try:
        previous: TrackState | None = TrackState(data.get("state"))
    except ValueError:
        previous = None
    last_t = float(data.get("t") or 0.0)  # the last stream time known for this track
    ended = TrackStateData(
        track_id=int(data.get("track_id") or 0),
        state=TrackState.INCONCLUSIVE,
        previous=previous,
        score=data.get("score"),
        raw_score=data.get("raw_score"),
        reasons=("track_ended", SERVICE_RESTARTED),
        signals=(),
        since_t=last_t,
        t=last_t,
    )
    return Event(EventType.TRACK_STATE, stream_id, SEVERITY[TrackState.INCONCLUSIVE], now, ended)


def _restart_close(stream_id: str, data: dict[str, Any], now: float) -> Event:
    reasons = tuple(str(r) for r in data.get("reasons") or ())
    start_t = float(data.get("start_t") or 0.0)
    closed = AlertData(
        alert_id=str(data["alert_id"]),
        track_id=int(data.get("track_id") or 0),
        score=float(data.get("score") or 0.0),
        reasons=reasons if SERVICE_RESTARTED in reasons else (*reasons, SERVICE_RESTARTED),
        signals=tuple(
            Signal(str(s.get("name", "")), float(s.get("value") or 0.0), float(s.get("weight") or 0.0))
            for s in data.get("signals") or () if isinstance(s, dict)
        ),
        start_t=start_t,
        # When the alert really ended died with the process: its start is the last stream time
        # known for certain (end_t is stream time, which a restart does not continue).
        end_t=start_t,
        start_time=float(data.get("start_time") or now),
        evidence=str(data["evidence"]) if data.get("evidence") else None,
    )
    return Event(EventType.ALERT_CLOSED, stream_id, Severity.INFO, now, closed)


PRUNE_EVERY_S = 86400.0


async def prune_daily(bus: EventBus, evidence: EvidenceStore, settings: Settings, clock: Clock, stop: asyncio.Event) -> None:
    """Start-up's pruning, once a day while the service runs, until ``stop``: evidence, then
    events, in a thread of its own (each batch of 2,000 takes the log's lock: streams' writes
    wait one batch at most). Half-written bundles are left to the writer, unless an hour old."""
    while True:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), PRUNE_EVERY_S)
        if stop.is_set():
            return
        try:
            now = clock.time()
            await asyncio.to_thread(evidence.prune, now - settings.alerts.retention_days * 86400, time.time() - 3600)
            await asyncio.to_thread(prune_event_log, bus.log, settings, now)
        except Exception:  # a full disk, a locked log: tried again tomorrow, as at start-up
            logger.warning("could not prune the event log and evidence; trying again in %g h", PRUNE_EVERY_S / 3600, exc_info=True)


async def _stopped(task: asyncio.Task[None], stop: asyncio.Event) -> None:
    """Stop the daily pruning and wait for a pass under way: its thread must not go on against
    a closed log after the data_dir lock is released."""
    stop.set()
    await task


def prune_event_log(log: EventLog, settings: Settings, now: float) -> int:
    """Delete events older than ``alerts.retention_days``, except those a configured sink has
    not delivered yet. Sinks promise at-least-once delivery, so retention gives way to them:
    a sink down for longer than the retention keeps its backlog (the log grows meanwhile) and
    each start-up warns about it. Cursors of sinks no longer configured hold nothing back."""
    older_than = now - settings.alerts.retention_days * 86400
    cursors = {c.key: log.get_cursor(c.key) for c in settings.sinks}
    owed = {key: cursor for key, cursor in cursors.items() if cursor is not None}  # None: not started yet
    for key, cursor in owed.items():
        kept = log.count_older(cursor, older_than)
        if kept:
            logger.warning(
                "sink %s has %d undelivered events older than alerts.retention_days=%g (its cursor is at "
                "event %d); they are kept, not pruned, until it delivers them or is removed from `sinks`",
                key, kept, settings.alerts.retention_days, cursor,
            )
    pruned = log.prune(older_than, keep_after=min(owed.values(), default=None))
    if pruned:
        logger.info("pruned %d events older than %g days", pruned, settings.alerts.retention_days)
    return pruned


# Request headers that carry credentials. websockets, which uvicorn hands its "uvicorn.error"
# logger, logs every handshake header at DEBUG ("< %s: %s"); the dashboard's token travels in
# Sec-WebSocket-Protocol (bearer.<base64url>).
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "sec-websocket-protocol"})


def _redact_header(name: str, value: str) -> str:
    if name == "sec-websocket-protocol":  # only the bearer offer is secret
        return ", ".join("bearer.***" if p.strip().startswith("bearer.") else p.strip() for p in value.split(","))
    return "***"


class RedactSecrets(logging.Filter):
    """Hides credentials in what uvicorn logs. It logs every websocket handshake at INFO, path
    and query included (``"WebSocket /ws/alerts?access_token=..." [accepted]``), even with the
    access log off, so a client passing its token in the query wrote it to the log on each
    connect; at DEBUG, request headers too."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple):
            if (
                len(args) == 2 and isinstance(record.msg, str) and record.msg.endswith("%s: %s")
                and str(args[0]).lower() in _SECRET_HEADERS
            ):
                record.args = (args[0], _redact_header(str(args[0]).lower(), str(args[1])))
            elif any(isinstance(a, str) and "?" in a for a in args):
                record.args = tuple(redact_url(a) if isinstance(a, str) and "?" in a else a for a in args)
        elif isinstance(record.msg, str) and "?" in record.msg and not args:
            record.msg = redact_url(record.msg)
        return True


class RedactClientUrls(logging.Filter):
    """Hides the credentials in URLs that HTTP client libraries log: httpx logs every request's
    full URL at INFO (``HTTP Request: POST http://user:password@sfu/whep?token=...``), and a
    WHEP source or the webhook sink would write theirs to the log on every request."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact_text(str(a)) if "://" in str(a) else a for a in record.args)
        elif isinstance(record.msg, str) and "://" in record.msg:
            record.msg = redact_text(record.msg)
        return True


# HTTP client loggers: their INFO line per request is noise for an operator, and both carry URLs.
HTTP_CLIENT_LOGGERS = ("httpx", "httpcore")


def install_log_redaction() -> None:
    for name in ("uvicorn.error", "uvicorn.access"):
        target = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in target.filters):
            target.addFilter(RedactSecrets())
    for name in HTTP_CLIENT_LOGGERS:
        target = logging.getLogger(name)
        if target.level == logging.NOTSET:  # left as configured if someone set it on purpose
            target.setLevel(logging.WARNING)
        if not any(isinstance(f, RedactClientUrls) for f in target.filters):
            target.addFilter(RedactClientUrls())


def uvicorn_config(app: FastAPI, settings: Settings, metrics: Metrics | None = None) -> uvicorn.Config:
    config = _uvicorn_config(app, settings, metrics)
    install_log_redaction()  # after uvicorn.Config, which (re)configures its loggers
    return config


def raise_open_file_limit(ceiling: int = 1 << 20) -> int:
    """Raise this process's soft limit on open files to its hard limit (at most ``ceiling``), as
    servers do; the new soft limit. Under the common default of 1024, about a thousand idle
    connections from anyone, token or not, used every descriptor: /healthz stopped answering,
    WHIP answered 500 and cameras could not reconnect. Nothing in the service uses select(),
    so descriptors past 1024 are safe."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = ceiling if hard == resource.RLIM_INFINITY else min(hard, ceiling)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError):
        logger.warning("could not raise the open-file limit from %d to %d", soft, want, exc_info=True)
        return soft
    return want


def head_deadline_protocol(timeout: float, metrics: Metrics | None, max_connections: int | None = None) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a deadline on each request head.

    uvicorn times out only a kept-alive connection that stays silent, and cancels that timer as
    soon as any byte arrives: a client that connected and sent nothing, or sent a head a byte at
    a time, kept its connection and file descriptor for ever (the slowloris attack). Here a head
    must be complete within ``timeout`` of the connection opening, or of the first byte of a
    later request on a kept-alive connection (silence between requests is uvicorn's
    ``timeout_keep_alive``), or the connection is closed.

    With ``max_connections``, a connection that would make more open at once (HTTP and
    websocket alike: uvicorn tracks both in one set) is dropped as soon as it is accepted."""

    class HeadDeadlineH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
            super().connection_made(transport)  # type: ignore[arg-type]
            if max_connections is not None and len(self.connections) > max_connections:
                if metrics is not None:
                    metrics.http_rejections.labels("too_many_connections").inc()
                logger.debug("dropping a connection from %s: %d open (server.max_connections)", self.client, len(self.connections) - 1)
                self.transport.abort()  # connection_lost takes it out of the set
                return
            self._arm_head_timer()

        def data_received(self, data: bytes) -> None:
            if self._head_timer is None and self.conn.their_state is h11.IDLE:
                self._arm_head_timer()  # the start of a head on a kept-alive connection
            super().data_received(data)

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.their_state is not h11.IDLE:
                self._cancel_head_timer()  # the head is complete
            elif self._head_timer is None and self.conn.trailing_data[0]:
                self._arm_head_timer()  # part of a pipelined head, already buffered

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

        def _arm_head_timer(self) -> None:
            self._cancel_head_timer()
            if not self.transport.is_closing():
                self._head_timer = self.loop.call_later(timeout, self._head_overdue)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_overdue(self) -> None:
            self._head_timer = None
            if self.transport.is_closing() or self.transport.get_protocol() is not self:
                return  # closed already, or upgraded to a websocket
            if self.conn.their_state is h11.IDLE:  # the head is still not complete
                if metrics is not None:
                    metrics.http_rejections.labels("timeout").inc()
                logger.debug("closing a connection from %s: no complete request head within %.1f s", self.client, timeout)
                self.transport.close()

    return HeadDeadlineH11Protocol


def _uvicorn_config(app: FastAPI, settings: Settings, metrics: Metrics | None) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        # h11, not httptools (uvicorn's default), which has no limit on a request's head: a client
        # could hold any amount of memory with a header it never finishes, before auth or the
        # body limit act. h11 answers 400 and closes once the head passes 64 KiB.
        http=head_deadline_protocol(settings.server.request_timeout_s, metrics, settings.server.max_connections),
        # h11 refuses a head still unfinished past this size. It checks between network reads, so
        # one that arrives complete can be up to a read larger (about 128 KiB measured): memory
        # stays bounded either way.
        h11_max_incomplete_event_size=64 * 1024,
        ws="websockets-sansio",
        lifespan="off",
        log_level=settings.log_level.lower(),
        access_log=False,
        server_header=False,
        ws_max_size=64 * 1024,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )


class _Server(uvicorn.Server):
    """uvicorn re-raises a captured SIGTERM/SIGINT as soon as it stops serving, which would
    kill the process before our teardown closes alerts and flushes the log. Here the signal
    only asks uvicorn to stop; teardown then runs and the process exits normally."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def warn_if_proxied_without_token(settings: Settings) -> bool:
    """A loopback-bound service with no token but browser origins to allow is most likely behind
    a reverse proxy: then everyone who reaches the proxy gets the API, WHIP ingest and alerts."""
    server = settings.server
    if server.is_loopback and not server.token and server.cors_origins:
        logger.warning(
            "server.cors_origins is set (%s) but server.token is not: if a reverse proxy makes this service "
            "reachable, everyone who reaches it gets the API, WHIP ingest and alerts; set server.token",
            ", ".join(server.cors_origins),
        )
        return True
    return False


async def serve(settings: Settings) -> None:
    """Run the service until SIGINT/SIGTERM, then stop streams, close open alerts and exit."""
    warn_if_proxied_without_token(settings)
    files = raise_open_file_limit()
    if files != resource.RLIM_INFINITY and settings.server.max_connections > files // 2:
        # Streams, WHIP sessions, the event log and evidence need descriptors beyond connections.
        logger.warning(
            "server.max_connections (%d) is more than half the open-file limit (%d): a flood of connections "
            "can leave streams without descriptors; raise the limit (LimitNOFILE, ulimit -n) or lower max_connections",
            settings.server.max_connections, files,
        )
    # From the start, not only while uvicorn serves: a SIGTERM while starting (loading models,
    # opening streams) killed the process at once. Here the first signal stops the service at
    # the first point it can, and gives the signals back: a second one (a start that hangs in
    # a plugin, an impatient Ctrl-C) kills it as before.
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    handled: list[int] = []

    def first_signal() -> None:
        stopping.set()
        # Both back to their default action, not asyncio's: removing its SIGINT handler puts back
        # Python's KeyboardInterrupt, and a second Ctrl-C during a start hanging in a thread then
        # waited for that thread (for ever, if it hung) instead of ending the process.
        _second_signal_exits(loop, handled)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, first_signal)
            handled.append(sig)
    try:
        async with runtime(settings) as rt:
            if stopping.is_set():
                logger.info("stopped while starting: shutting down")
                return
            server = _Server(uvicorn_config(rt.app, settings, rt.metrics))
            ready = asyncio.create_task(_announce(server))

            async def stop_when_asked() -> None:  # a signal before uvicorn took them over
                await stopping.wait()
                server.should_exit = True

            watch = asyncio.create_task(stop_when_asked())
            try:
                await server.serve()
            finally:
                ready.cancel()
                watch.cancel()
                # uvicorn gives back asyncio's do-nothing handler when it stops: a second signal
                # during teardown (a camera that never lets go, a hung plugin) was ignored.
                _second_signal_exits(loop, handled)
            logger.info("shutting down (a second SIGINT or SIGTERM exits at once)")
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)


def _second_signal_exits(loop: asyncio.AbstractEventLoop, handled: list[int]) -> None:
    """From now on SIGINT and SIGTERM end the process at once, without teardown."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in handled:
        loop.remove_signal_handler(sig)
    handled.clear()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


async def _announce(server: uvicorn.Server) -> None:
    started = time.monotonic()
    while not server.started:
        await asyncio.sleep(0.05)
    for srv in server.servers:
        for sock in srv.sockets:
            host, port = sock.getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host  # an IPv6 address in a URL needs brackets
            # One parseable line, so scripts and tests can find a port chosen with port=0.
            print(f"monitor listening on http://{shown}:{port} (ready in {time.monotonic() - started:.1f}s)", flush=True)

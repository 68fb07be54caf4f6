"""Fan-out of stored events: write to the log first, then to each subscriber's bounded queue.
A subscriber that falls behind is marked overflowed (its owner evicts it); alert sinks keep a
durable cursor in the log and catch up from it, so they lose nothing across restarts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from monitor.alerts.eventlog import EventLog, is_corrupt, move_aside, open_event_log
from monitor.errors import RejectedEvent
from monitor.metrics import Metrics
from monitor.plugins import AlertSink
from monitor.types import Event, EventType, StoredEvent

logger = logging.getLogger(__name__)
T = TypeVar("T")


class Subscription:
    """One consumer's bounded queue of (id, CloudEvents JSON)."""

    def __init__(self, maxsize: int, start_id: int) -> None:
        self.queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue(maxsize)
        self.start_id = start_id  # the log's last id when this subscription began
        self.overflowed = asyncio.Event()
        self.log_replaced = False  # set with overflowed: the damaged log was replaced, ids start again

    def offer(self, item: tuple[int, str]) -> None:
        if self.overflowed.is_set():
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.overflowed.set()


class EventBus:
    REPLACE_EVERY_S = 60.0  # a damaged log is replaced at most this often
    REOPEN_RETRY_S = 2.0  # how often a replacement that could not be opened is tried again

    def __init__(self, log: EventLog, metrics: Metrics, queue_size: int = 1000) -> None:
        self.log = log
        self.metrics = metrics
        self.queue_size = queue_size
        self._subs: set[Subscription] = set()
        # One writer thread keeps SQLite work off the loop and in id order.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eventlog")
        # Clients' reads (replays, /api/events) on their own thread and connection: before, they
        # queued with the writes, and 8 clients replaying a long log made every publish wait
        # about 66 ms (254 ms with 32), stalling the streams' analysis with it.
        self._readers = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eventlog-read")
        self._lock = asyncio.Lock()
        self._new_events = asyncio.Condition()
        # (id, logepoch) of the newest event offered to subscribers since start, None before the
        # first: a live subscriber that has not got it after a while is cut off (see /api/streams).
        self.last_offered: tuple[int, str] | None = None
        self.log_generation = 0  # how many times a damaged log was replaced since start
        self._replaced_at = -float("inf")
        self._replacing: BaseException | None = None  # why the damaged log is being replaced, until done
        self._moved_aside = False  # during a replacement: the damaged file is closed and renamed
        self._reopening: asyncio.Future[None] | None = None  # retries a replacement that failed
        self._sinks: set[str] = set()  # sink runners' cursor names (register_sink)
        self._offered_id: int | None = None  # the newest id offered to subscribers (None: read it from the log)
        self._offered_log: EventLog | None = None  # the log _offered_id belongs to

    async def publish(self, events: Sequence[Event], started: asyncio.Event | None = None) -> list[StoredEvent]:
        """Store ``events``, then offer them to every subscriber. Cancelling the caller does not
        split the two: once the append is under way the executor thread commits it whatever
        happens to us, so the fan-out must follow, or a live client would get the next event
        (a higher id) and skip these for good. A cancelled caller still sees CancelledError,
        but only after the fan-out, and with the lock held until then, so no later publish
        offers a higher id first. ``started`` is set once the write is under way: a caller
        cancelled before then (waiting for the lock) knows nothing was written. It is cleared
        again when a cancelled caller's write then failed: those events were not stored either."""
        if not events:
            return []
        async with self._lock:
            if started is not None:
                started.set()
            step = asyncio.ensure_future(self._append_and_offer(list(events)))
            try:
                return await asyncio.shield(step)
            except asyncio.CancelledError:
                while not step.done():
                    try:
                        await asyncio.wait({step})
                    except asyncio.CancelledError:
                        pass  # cancelled again: the step must still finish first
                failed = step.cancelled() or step.exception() is not None  # a failed append was counted
                if failed and started is not None:
                    started.clear()  # so the cancelled caller knows these events were not stored
                raise

    async def _append_and_offer(self, events: list[Event]) -> list[StoredEvent]:
        loop = asyncio.get_running_loop()
        try:
            if self._replacing is not None:
                await self._finish_replacement()  # the last try could not open the new log (a full disk)
            try:
                stored = await loop.run_in_executor(self._executor, self.log.append, events)
            except sqlite3.DatabaseError as exc:
                now = loop.time()
                if not is_corrupt(exc) or now - self._replaced_at < self.REPLACE_EVERY_S:
                    raise  # a disk that damages each new log too: the streams wait, not a file a second
                self._replaced_at = now
                # Damaged under the running service (a bad sector, a page zeroed by the storage):
                # every later write and read failed, each stream dropped its events after a few
                # tries, and only a restart moved the file aside. Now it is moved aside here and
                # a new log (a new epoch) takes these events and all later ones.
                self.metrics.event_log_errors.inc()
                await self._replace_damaged_log(exc)
                stored = await loop.run_in_executor(self._executor, self.log.append, events)
        except Exception:
            # The caller (StreamPipeline._publish) retries and then gives up with a log line:
            # counted here so a failing log (disk full, locked) alarms, not just logs.
            self.metrics.event_log_errors.inc()
            raise
        for s in stored:
            self.metrics.events.labels(s.event.type.value).inc()
            if s.event.type == EventType.ALERT_OPENED:
                self.metrics.alerts.labels(s.event.severity.value).inc()
            rendered = (s.id, self.log.render(s))
            for sub in self._subs:
                sub.offer(rendered)
            self.last_offered = (s.id, self.log.epoch)
            self._offered_id, self._offered_log = s.id, self.log
        async with self._new_events:
            self._new_events.notify_all()
        return stored

    async def _replace_damaged_log(self, reason: BaseException) -> None:
        """Move the damaged log aside and open a new one in its place (called under the lock).
        Live clients are closed so that they start again from the new log's first id (theirs
        belong to the old one); every sink's cursor in the new log is 0 before any event goes
        in, so each delivers it from its beginning, as after a start that found the log damaged.
        If that cannot be done now (a full disk), the publishing stream is told and waits, and
        a background task keeps trying, so that reads work again without a new event."""
        self._replacing = reason
        try:
            await self._finish_replacement()
        except Exception:
            if self._reopening is None or self._reopening.done():
                self._reopening = asyncio.ensure_future(self._keep_replacing())
            raise

    async def _finish_replacement(self) -> None:
        reason = self._replacing
        assert reason is not None
        old = self.log
        sinks = sorted(self._sinks)

        def replace() -> EventLog:
            if not self._moved_aside:
                try:
                    old.close()
                except Exception:  # a damaged connection may fail to close: it is dropped anyway
                    logger.debug("closing the damaged event log failed", exc_info=True)
                move_aside(old.path, reason)  # OSError: tried again, never the damaged file reused
                self._moved_aside = True
            new = open_event_log(old.path, old.instance)
            try:
                for name in sinks:  # each owes the new log from its first event, even after a crash now
                    new.set_cursor(name, 0)
            except BaseException:
                new.close()
                raise
            return new

        opening = asyncio.get_running_loop().run_in_executor(self._executor, replace)
        try:
            self.log = await asyncio.shield(opening)
        except asyncio.CancelledError:
            # Cancelled (the service stopping during a background retry): the thread still
            # finishes opening the new log, which is then closed here, not leaked.
            with contextlib.suppress(Exception):
                (await opening).close()
            raise
        self._replacing, self._moved_aside = None, False
        self._offered_id = None  # the new log's ids start again
        self.last_offered = None  # an id of the old log: sinks' lag and /api/streams' headers were off
        self.log_generation += 1
        self.metrics.event_log_replaced.inc()
        for sub in self._subs:
            sub.log_replaced = True
            sub.overflowed.set()
        async with self._new_events:
            self._new_events.notify_all()  # sinks waiting for new events look at the new log now

    async def _keep_replacing(self) -> None:
        while self._replacing is not None:
            await asyncio.sleep(self.REOPEN_RETRY_S)
            async with self._lock:
                if self._replacing is None:
                    return
                try:
                    await self._finish_replacement()
                except Exception as exc:
                    logger.warning("the damaged event log's replacement cannot be opened yet (%s); retrying", exc)

    def register_sink(self, name: str) -> None:
        """A sink delivering from this log: its cursor starts at 0 in a log that replaces it."""
        self._sinks.add(name)

    async def subscribe(self) -> Subscription:
        """A live subscription from now on. Its ``start_id`` is the newest id offered so far:
        events up to it are in the log, and every later one is offered to it. Taken together,
        with no await between, so it waits for no write (it had waited behind every queued
        append, up to SQLite's 30 s busy timeout each, on the writer thread)."""
        while self._offered_id is None or self._offered_log is not self.log:
            # Once per log: the newest id in it, read before anything is offered (the cached id
            # belongs to the log it was read from: a log put in place any other way is read too).
            async with self._lock:
                if self._offered_id is None or self._offered_log is not self.log:
                    log = self.log
                    self._offered_id, self._offered_log = await self.on_log(log.last_id), log
        sub = Subscription(self.queue_size, self._offered_id)
        self._subs.add(sub)
        return sub

    async def last_id(self) -> int:
        """The newest id in the log, for clients (on the readers' thread: it waits for no write)."""
        return await asyncio.get_running_loop().run_in_executor(self._readers, self.log.last_id, True)

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    async def read_since(self, after_id: int, limit: int = 500) -> list[tuple[int, str]]:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.log.read_since, after_id, limit)

    async def on_log(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a call on the event log in its own thread (SQLite stays off the loop)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def replay_since(self, after_id: int, limit: int = 500) -> list[tuple[int, str]]:
        """As read_since, for clients (websocket replays, /api/events): it never waits for a
        write, nor makes one wait. Committed events only, which is all that was published.
        Sinks keep read_since: their wait_for_new relies on reads queueing with the writes."""
        return await asyncio.get_running_loop().run_in_executor(self._readers, self.log.read_since, after_id, limit, True)

    async def replay_last(self, n: int) -> list[tuple[int, str]]:
        """The newest ``n`` events (EventLog.read_last), for clients, as replay_since."""
        return await asyncio.get_running_loop().run_in_executor(self._readers, self.log.read_last, n, True)

    async def wait_for_new(self, timeout: float) -> None:
        async with self._new_events:
            try:
                await asyncio.wait_for(self._new_events.wait(), timeout)
            except asyncio.TimeoutError:
                pass

    async def aclose(self) -> None:
        if self._reopening is not None:
            self._reopening.cancel()
            await asyncio.gather(self._reopening, return_exceptions=True)  # its log closed, if it opened one
        self._readers.shutdown(wait=True)
        self._executor.shutdown(wait=True)


class SinkRunner:
    """Delivers every event to one sink in id order, at least once: the cursor (keyed by the
    sink's id) advances only after ``send`` succeeds, and failures retry with backoff from it.
    The one exception is an event the receiver refuses for good (``RejectedEvent``): after
    ``REJECT_ATTEMPTS`` attempts it is logged, counted and passed over, so that one bad event
    cannot block every later alert; it stays in the event log."""

    # A receiver may briefly answer 400 during a deploy, so a rejection is retried a little.
    REJECT_ATTEMPTS = 3
    # A receiver that refuses this many events in a row with none accepted in between most
    # likely refuses every event (a bad signature, a schema or size limit it applies to all):
    # skipping on would drop every alert, so its rejections are retried like any failure
    # until one event gets through.
    MAX_SKIPPED_IN_A_ROW = 3
    # A send still unfinished after this long counts as failed and is retried: a sink that hangs
    # (a receiver that accepts and never answers) stalled delivery with nothing counted or logged.
    SEND_TIMEOUT_S = 60.0
    # At shutdown, how long the delivery task may take to stop once cancelled, and the sink's close.
    CLOSE_S = 5.0
    # The longest wait a receiver's Retry-After (a failure's ``retry_after_s``) can ask for: alerts
    # wait meanwhile, so an hour is not granted.
    RETRY_AFTER_MAX_S = 300.0

    def __init__(
        self, bus: EventBus, sink: AlertSink, name: str, metrics: Metrics,
        *, retry_delay_s: float = 0.5, max_retry_delay_s: float = 30.0,
    ) -> None:
        self.bus = bus
        self.sink = sink
        self.name = name
        self.metrics = metrics
        self.retry_delay_s = retry_delay_s
        self.max_retry_delay_s = max_retry_delay_s
        self._task: asyncio.Task[None] | None = None
        self.cursor = 0  # the last event delivered (or skipped), once saved in the log
        self._skipped_key = f"{name}#skipped_in_a_row"  # kept beside the cursor, across restarts
        self._skipped_in_a_row = 0
        self._wake = asyncio.Event()  # cuts a retry's backoff short (shutdown drain)
        self._head_at_start = 0  # the log's last id when the runner started (for the lag)
        self._generation = 0  # the bus's log_generation that ``cursor`` counts in

    async def start(self) -> None:
        self.bus.register_sink(self.name)
        self._generation = self.bus.log_generation
        cursor = self.cursor = await self._first_cursor()  # first: if it fails, there is no started sink to close
        # A restart must not reset the safeguard: against a receiver refusing everything, each
        # start would otherwise skip MAX_SKIPPED_IN_A_ROW more events.
        self._skipped_in_a_row = await self.bus.on_log(self.bus.log.get_cursor, self._skipped_key) or 0
        # Series born at zero, so increase() sees the first failure or rejection.
        self.metrics.sink_failures.labels(self.name)
        self.metrics.sink_rejected.labels(self.name)
        self._head_at_start = await self.bus.on_log(self.bus.log.last_id)
        self.metrics.sink_lag.labels(self.name).set_function(self.lag)
        await self.sink.start()
        self._task = asyncio.create_task(self._run(cursor), name=f"sink-{self.name}")
        self._task.add_done_callback(self._ended)

    def lag(self) -> int:
        """Events in the log this sink has not had yet (read at each scrape, from memory)."""
        head = max(self._head_at_start, self.bus.last_offered[0] if self.bus.last_offered else 0)
        return max(head - self.cursor, 0)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled():
            # _run only ends by being stopped: anything else means no more deliveries until a
            # restart, which must not go unnoticed.
            logger.error("sink %s stopped delivering: %r", self.name, task.exception())

    async def _first_cursor(self) -> int:
        """The stored cursor; for a sink never started before, the log's end, saved at once.
        A new sink starts from now rather than flooding its target with history, but from then
        on it owes every event: were the cursor saved only after the first delivery, a restart
        while its receiver is down would start "from now" again and skip what it still owes.
        Set here, before start() returns, so no event published after start is missed either."""
        log = self.bus.log
        cursor = await self.bus.on_log(log.get_cursor, self.name)
        if cursor is None:
            cursor = await self.bus.on_log(log.last_id)
            await self.bus.on_log(log.set_cursor, self.name, cursor)
            return cursor
        oldest = await self.bus.on_log(log.oldest_id)
        if oldest is None:  # everything pruned: the next event is the first it can get
            oldest = await self.bus.on_log(log.last_id) + 1
        if oldest > cursor + 1:
            # Retention holds back only for configured sinks: one removed from `sinks` for a
            # while and added back finds part of what it owes pruned. Said, not silently skipped.
            logger.warning(
                "sink %s resumes after event %d, but events %d-%d were pruned while it was not configured: "
                "they are not delivered (it goes on from event %d)", self.name, cursor, cursor + 1, oldest - 1, oldest,
            )
        return cursor

    async def _run(self, cursor: int) -> None:
        log = self.bus.log
        generation = self._generation  # the log ``cursor`` was read from, at start()
        delay = self.retry_delay_s
        rejected_id, rejections = 0, 0  # the event being rejected, and how many times so far
        while True:
            try:
                if self.bus.log_generation != generation:
                    # The damaged log was replaced by a new one: its ids start again at 1, and
                    # this sink owes all of it.
                    # The bus set this sink's cursor there to 0 before the log took any event.
                    log, generation = self.bus.log, self.bus.log_generation
                    cursor = self.cursor = 0
                    self._generation = generation
                    rejected_id, rejections = 0, 0
                    self._skipped_in_a_row = 0
                    self._head_at_start = 0
                    logger.warning("sink %s: the event log was replaced; delivering the new log from its start", self.name)
                batch = await self.bus.read_since(cursor, 100)
                if not batch:
                    await self.bus.wait_for_new(5.0)
                    continue
                for event_id, payload in batch:
                    try:
                        try:
                            async with asyncio.timeout(self.SEND_TIMEOUT_S):
                                await self.sink.send(event_id, payload)
                        except TimeoutError:
                            raise TimeoutError(f"send of event {event_id} took over {self.SEND_TIMEOUT_S:g} s") from None
                    except RejectedEvent as exc:
                        if event_id != rejected_id:
                            rejected_id, rejections = event_id, 0
                        rejections += 1
                        if rejections < self.REJECT_ATTEMPTS:
                            raise  # retried with backoff like any failure
                        if self._skipped_in_a_row >= self.MAX_SKIPPED_IN_A_ROW:
                            if rejections == self.REJECT_ATTEMPTS:
                                logger.error(
                                    "sink %s: the receiver refused %d events in a row and now event %d: it seems to "
                                    "refuse every event, so nothing more is skipped; retrying until it accepts one",
                                    self.name, self._skipped_in_a_row, event_id,
                                )
                            raise
                        self._give_up(event_id, rejections, exc)
                        await self._set_skipped(self._skipped_in_a_row + 1)
                    else:
                        if self._skipped_in_a_row:
                            await self._set_skipped(0)
                    delay = self.retry_delay_s
                    # Advanced in memory first: if saving fails, the retry does not resend it.
                    cursor = event_id
                    await self.bus.on_log(log.set_cursor, self.name, cursor)
                    self.cursor = cursor
            except asyncio.CancelledError as exc:
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise  # the runner is being stopped
                # A plugin let a cancellation of its own escape: a failure like any other.
                # Re-raised, it ended the runner for good, silently.
                delay = await self._back_off(cursor, str(exc) or "cancelled inside the sink", delay)
            except Exception as exc:
                delay = await self._back_off(cursor, exc, delay)

    async def _back_off(self, cursor: int, exc: BaseException | str, delay: float) -> float:
        """After a failure (delivery or log alike): count it, wait, and give the next delay. The
        runner retries from the cursor, so nothing is skipped and it never dies."""
        self.metrics.sink_failures.labels(self.name).inc()
        asked = getattr(exc, "retry_after_s", None)
        wait = delay
        if isinstance(asked, (int, float)) and not isinstance(asked, bool) and asked == asked:  # not NaN
            # Before, a 429 or 503's Retry-After was ignored: retried every 0.5-30 s regardless.
            wait = min(max(delay, float(asked)), self.RETRY_AFTER_MAX_S)
        logger.warning("sink %s failed after event %d: %s; retrying in %.1fs", self.name, cursor, exc, wait)
        try:
            await asyncio.wait_for(self._wake.wait(), wait)
        except asyncio.TimeoutError:
            pass
        self._wake.clear()  # cut one backoff short, not every later one
        return min(delay * 2, self.max_retry_delay_s)

    async def _set_skipped(self, n: int) -> None:
        await self.bus.on_log(self.bus.log.set_cursor, self._skipped_key, n)
        self._skipped_in_a_row = n

    def _give_up(self, event_id: int, attempts: int, exc: RejectedEvent) -> None:
        self.metrics.sink_failures.labels(self.name).inc()  # still a failed delivery
        self.metrics.sink_rejected.labels(self.name).inc()
        logger.error(
            "sink %s: the receiver refused event %d for good %d times (%s); skipped it and went on "
            "with the next events. It stays in the event log until alerts.retention_days: "
            "GET /api/events?since=%d",
            self.name, event_id, attempts, exc, event_id - 1,
        )

    async def aclose(self, drain_s: float = 0.0) -> None:
        """Stop delivering. With ``drain_s``, first give the sink up to that long to deliver what
        the log holds now: at shutdown, the alerts closed and tracks ended by the shutdown
        itself, which would otherwise wait for the next start (or for ever, for a sink that is
        then removed). Whatever is left stays owed and is sent after the next start."""
        if self._task is not None and drain_s > 0 and not self._task.done():
            loop = asyncio.get_running_loop()
            deadline = loop.time() + drain_s
            target = await self.bus.on_log(self.bus.log.last_id)
            generation = self.bus.log_generation
            self._wake.set()  # a runner waiting out a backoff of up to 30 s tries again now
            # A cursor still in a replaced log counts as 0 in the new one.
            while (self.cursor if self._generation == generation else 0) < target and loop.time() < deadline and not self._task.done():
                await asyncio.sleep(0.05)
        # Each bounded: a sink whose send swallows the cancellation, or whose close never returns,
        # held SIGTERM until SIGKILL, and the log was never closed. Left behind past the limit.
        if self._task is not None:
            self._task.cancel()
            await self._bounded(self._task, "its delivery task did not stop")
        await self._bounded(asyncio.ensure_future(self.sink.aclose()), "its close did not return")

    async def _bounded(self, task: asyncio.Future[None], what: str) -> None:
        done, _ = await asyncio.wait({task}, timeout=self.CLOSE_S)
        if not done:
            logger.warning("sink %s: %s within %g s; left behind", self.name, what, self.CLOSE_S)
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # no "never retrieved"
        elif not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]

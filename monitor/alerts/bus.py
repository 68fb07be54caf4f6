"""Fan-out of stored events: write to the log first, then to each subscriber's bounded queue.
A subscriber that falls behind is marked overflowed (its owner evicts it); alert sinks keep a
durable cursor in the log and catch up from it, so they lose nothing across restarts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from monitor.alerts.eventlog import EventLog
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

    def offer(self, item: tuple[int, str]) -> None:
        if self.overflowed.is_set():
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.overflowed.set()


class EventBus:
    def __init__(self, log: EventLog, metrics: Metrics, queue_size: int = 1000) -> None:
        self.log = log
        self.metrics = metrics
        self.queue_size = queue_size
        self._subs: set[Subscription] = set()
        # One writer thread keeps SQLite work off the loop and in id order.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eventlog")
        self._lock = asyncio.Lock()
        self._new_events = asyncio.Condition()

    async def publish(self, events: Sequence[Event]) -> list[StoredEvent]:
        if not events:
            return []
        loop = asyncio.get_running_loop()
        async with self._lock:
            stored = await loop.run_in_executor(self._executor, self.log.append, list(events))
            for s in stored:
                self.metrics.events.labels(s.event.type.value).inc()
                if s.event.type == EventType.ALERT_OPENED:
                    self.metrics.alerts.labels(s.event.severity.value).inc()
                rendered = (s.id, self.log.render(s))
                for sub in self._subs:
                    sub.offer(rendered)
        async with self._new_events:
            self._new_events.notify_all()
        return stored

    async def subscribe(self) -> Subscription:
        async with self._lock:
            last = await asyncio.get_running_loop().run_in_executor(self._executor, self.log.last_id)
            sub = Subscription(self.queue_size, last)
            self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    async def read_since(self, after_id: int, limit: int = 500) -> list[tuple[int, str]]:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.log.read_since, after_id, limit)

    async def on_log(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a call on the event log in its own thread (SQLite stays off the loop)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def read_last(self, n: int) -> list[tuple[int, str]]:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.log.read_last, n)

    async def wait_for_new(self, timeout: float) -> None:
        async with self._new_events:
            try:
                await asyncio.wait_for(self._new_events.wait(), timeout)
            except asyncio.TimeoutError:
                pass

    async def aclose(self) -> None:
        self._executor.shutdown(wait=True)


class SinkRunner:
    """Delivers every event to one sink in id order, at least once: the cursor (keyed by the
    sink's id) advances only after ``send`` succeeds, and failures retry with backoff."""

    def __init__(self, bus: EventBus, sink: AlertSink, name: str, metrics: Metrics) -> None:
        self.bus = bus
        self.sink = sink
        self.name = name
        self.metrics = metrics
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        cursor = await self._first_cursor()  # first: if it fails, there is no started sink to close
        await self.sink.start()
        self._task = asyncio.create_task(self._run(cursor), name=f"sink-{self.name}")

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

    async def _run(self, cursor: int) -> None:
        log = self.bus.log
        delay = 0.5
        while True:
            try:
                batch = await self.bus.read_since(cursor, 100)
                if not batch:
                    await self.bus.wait_for_new(5.0)
                    continue
                for event_id, payload in batch:
                    await self.sink.send(event_id, payload)
                    delay = 0.5
                    cursor = event_id
                    await self.bus.on_log(log.set_cursor, self.name, cursor)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Delivery failures and log errors alike: wait and retry from the cursor, so
                # nothing is skipped and the runner never dies.
                self.metrics.sink_failures.labels(self.name).inc()
                logger.warning("sink %s failed after event %d: %s; retrying in %.1fs", self.name, cursor, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self.sink.aclose()

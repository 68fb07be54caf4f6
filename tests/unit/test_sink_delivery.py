"""Alert sinks: durable cursor across restarts, events refused for good skipped after retries
(transient failures never), the webhook's status mapping, and start-up pruning that spares
their backlog."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from monitor_webhook import DeliveryError, WebhookSink

from monitor.alerts.bus import EventBus, SinkRunner
from monitor.alerts.eventlog import EventLog
from monitor.app import close_sinks, prune_event_log
from monitor.config import Settings, load_settings
from monitor.errors import RejectedEvent
from monitor.metrics import Metrics
from monitor.types import Event, EventType, Severity, StreamState, StreamStatusData

DAY = 86400.0
NOW = 1_700_000_000.0


def status_event(t: float) -> Event:
    return Event(EventType.STREAM_STATUS, "cam", Severity.INFO, t, StreamStatusData(StreamState.RUNNING, "", 0))


class RecordingSink:
    """Records delivered ids; while ``down``, every send fails as an unreachable receiver would."""

    def __init__(self, down: bool = False) -> None:
        self.down = down
        self.got: list[int] = []

    async def start(self) -> None:
        pass

    async def send(self, event_id: int, payload: str) -> None:
        if self.down:
            raise ConnectionError("receiver down")
        self.got.append(event_id)

    async def aclose(self) -> None:
        pass


async def run_sink(path: Path, sink: RecordingSink, publish: int = 0, expect: int = 0, settle: float = 0.3) -> None:
    """One process lifetime: start the sink, publish ``publish`` events, let it work until it
    has delivered ``expect`` events (or for ``settle`` s when none are expected), stop."""
    log = EventLog(path)
    metrics = Metrics()
    bus = EventBus(log, metrics)
    runner = SinkRunner(bus, sink, "hook", metrics)
    await runner.start()
    await bus.publish([status_event(NOW + i) for i in range(publish)])
    deadline = asyncio.get_running_loop().time() + 10.0
    while len(sink.got) < expect and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
    await asyncio.sleep(settle)  # room for anything delivered that should not have been
    await runner.aclose()
    await bus.aclose()
    log.close()


async def test_new_sink_starts_at_end_of_log(tmp_path: Path) -> None:
    path = tmp_path / "e.sqlite3"
    log = EventLog(path)
    log.append([status_event(NOW), status_event(NOW)])
    log.close()
    sink = RecordingSink()
    await run_sink(path, sink, publish=1, expect=1)
    # No history flood, but everything after start() returned (before: the cursor was read
    # in the runner's task, after this publish, so event 3 was skipped too).
    assert sink.got == [3]


async def test_event_owed_before_first_delivery_survives_restart(tmp_path: Path) -> None:
    # Before: the first cursor was saved only after a successful send, so a restart while the
    # receiver was down started "from now" again and event 1 was never delivered.
    path = tmp_path / "e.sqlite3"
    await run_sink(path, RecordingSink(down=True), publish=1)
    sink = RecordingSink()
    await run_sink(path, sink, expect=1)
    assert sink.got == [1]


class FlakySink:
    """Fails chosen events a set number of times (``math.inf``: for ever) before accepting them:
    ``reject`` as a receiver refusing the event for good would, ``transient`` as one that is down."""

    def __init__(self, reject: dict[int, float] | None = None, transient: dict[int, float] | None = None) -> None:
        self.reject = reject or {}
        self.transient = transient or {}
        self.attempts: Counter[int] = Counter()
        self.got: list[int] = []

    async def start(self) -> None:
        pass

    async def send(self, event_id: int, payload: str) -> None:
        self.attempts[event_id] += 1
        if self.attempts[event_id] <= self.reject.get(event_id, 0):
            raise RejectedEvent(f"event {event_id}: HTTP 422 'no such field'")
        if self.attempts[event_id] <= self.transient.get(event_id, 0):
            raise ConnectionError("receiver down")
        self.got.append(event_id)

    async def aclose(self) -> None:
        pass


@contextlib.asynccontextmanager
async def running_sink(path: Path, sink: FlakySink, metrics: Metrics) -> AsyncIterator[EventBus]:
    """One process lifetime of a sink, with short retry delays so the tests stay fast."""
    log = EventLog(path)
    bus = EventBus(log, metrics)
    runner = SinkRunner(bus, sink, "hook", metrics, retry_delay_s=0.01, max_retry_delay_s=0.05)
    await runner.start()
    try:
        yield bus
    finally:
        await runner.aclose()
        await bus.aclose()
        log.close()


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    assert condition()


def sample(metrics: Metrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(f"deepfake_monitor_sink_{name}_total", {"sink": "hook"})


async def test_a_receiver_refusing_every_event_does_not_make_the_sink_skip_them_all(tmp_path: Path) -> None:
    metrics = Metrics()
    sink = FlakySink(reject={i: math.inf for i in range(1, 7)})
    async with running_sink(tmp_path / "e.sqlite3", sink, metrics) as bus:
        await bus.publish([status_event(NOW + i) for i in range(6)])
        await until(lambda: sink.attempts[4] >= 10)  # the fourth refusal in a row is retried, not skipped
        assert bus.log.get_cursor("hook") == 3
        assert sink.attempts[5] == 0
        sink.reject[4] = 0  # the receiver is fixed: delivery resumes where it stopped
        sink.reject[5] = sink.reject[6] = 0
        await until(lambda: sink.got == [4, 5, 6])
    assert sample(metrics, "rejected") == 3


async def test_the_safeguard_holds_across_restarts(tmp_path: Path) -> None:
    # Before: the count of skipped events lived in memory, so each restart skipped 3 more.
    path = tmp_path / "e.sqlite3"
    metrics = Metrics()
    refuse_all = {i: math.inf for i in range(1, 9)}
    first = FlakySink(reject=dict(refuse_all))
    async with running_sink(path, first, metrics) as bus:
        await bus.publish([status_event(NOW + i) for i in range(8)])
        await until(lambda: first.attempts[4] >= 4)
    second = FlakySink(reject=dict(refuse_all))
    async with running_sink(path, second, metrics) as bus:
        await until(lambda: second.attempts[4] >= 4)
        assert bus.log.get_cursor("hook") == 3 and second.attempts[5] == 0
        second.reject[4] = 0  # one event accepted: the count starts again
        await until(lambda: bus.log.get_cursor("hook") >= 7)  # 5, 6, 7 skipped; 8 held again
        await until(lambda: second.attempts[8] >= 4)
        assert bus.log.get_cursor("hook") == 7


async def test_the_shutdown_drain_cuts_a_retry_backoff_short(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "e.sqlite3")
    metrics = Metrics()
    bus = EventBus(log, metrics)
    sink = FlakySink(transient={1: 1})
    runner = SinkRunner(bus, sink, "hook", metrics, retry_delay_s=30.0, max_retry_delay_s=30.0)
    await runner.start()
    try:
        await bus.publish([status_event(NOW)])
        await until(lambda: sink.attempts[1] == 1)  # failed once; now waiting 30 s to retry
        loop = asyncio.get_running_loop()
        started = loop.time()
        await runner.aclose(drain_s=20.0)
        elapsed = loop.time() - started
    finally:
        await bus.aclose()
    # Before: the drain waited out its whole time while the runner slept, then cancelled it.
    assert sink.got == [1] and log.get_cursor("hook") == 1
    assert elapsed < 10.0
    log.close()


async def test_sinks_drain_together_at_shutdown(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "e.sqlite3")
    metrics = Metrics()
    bus = EventBus(log, metrics)
    sinks = [FlakySink(transient={1: math.inf}) for _ in range(4)]  # receivers down
    runners = [SinkRunner(bus, s, f"hook{i}", metrics, retry_delay_s=0.05, max_retry_delay_s=0.1) for i, s in enumerate(sinks)]
    order: list[str] = []
    for i, r in enumerate(runners):
        await r.start()

        async def recorded(drain_s: float = 0.0, i: int = i, close: Callable[[float], Any] = r.aclose) -> None:
            order.append(f"drain {i}")
            try:
                await close(drain_s)
            finally:
                order.append(f"closed {i}")

        r.aclose = recorded  # type: ignore[method-assign]
    try:
        await bus.publish([status_event(NOW)])
        loop = asyncio.get_running_loop()
        started = loop.time()
        await close_sinks(runners, 2.0)
        elapsed = loop.time() - started
    finally:
        await bus.aclose()
        log.close()
    # One shared deadline: every drain starts before any ends (one after another took 8 s).
    assert sorted(order[:4]) == [f"drain {i}" for i in range(4)], order
    assert len(order) == 8
    assert elapsed >= 2.0  # each receiver, down, was given its whole drain time


async def test_event_rejected_for_good_is_skipped_after_three_attempts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: the runner retried event 2 for ever, so events 3 and 4 were never delivered.
    path = tmp_path / "e.sqlite3"
    metrics = Metrics()
    sink = FlakySink(reject={2: math.inf})
    with caplog.at_level(logging.ERROR, logger="monitor.alerts.bus"):
        async with running_sink(path, sink, metrics) as bus:
            await bus.publish([status_event(NOW + i) for i in range(4)])
            await until(lambda: sink.got == [1, 3, 4])
            await until(lambda: bus.log.get_cursor("hook") == 4)
    assert sink.attempts[2] == 3
    assert sample(metrics, "rejected") == 1
    assert sample(metrics, "failures") == 3  # every refused attempt is a failed delivery
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "sink hook" in errors[0] and "event 2" in errors[0] and "HTTP 422 'no such field'" in errors[0]
    assert "GET /api/events?since=1" in errors[0]

    # The cursor was saved past it: the next lifetime does not resend it.
    again = FlakySink(reject={2: math.inf})
    async with running_sink(path, again, Metrics()) as bus:
        await bus.publish([status_event(NOW + 4)])
        await until(lambda: again.got == [5])
    assert again.attempts == {5: 1}
    # Skipped for the sink, but still in the log for whoever looks.
    log = EventLog(path)
    assert [r[0] for r in log.read_since(1, 1)] == [2]
    log.close()


async def test_brief_rejection_is_retried_not_skipped(tmp_path: Path) -> None:
    # A receiver mid-deploy may answer 400 a couple of times: that event is delivered, not skipped.
    metrics = Metrics()
    sink = FlakySink(reject={2: 2})
    async with running_sink(tmp_path / "e.sqlite3", sink, metrics) as bus:
        await bus.publish([status_event(NOW + i) for i in range(3)])
        await until(lambda: sink.got == [1, 2, 3])
    assert sink.attempts[2] == 3
    assert sample(metrics, "rejected") == 0


async def test_transient_failures_retry_until_delivered_and_skip_nothing(tmp_path: Path) -> None:
    # More failures than a rejection gets: a transient error must never lead to a skip.
    metrics = Metrics()
    sink = FlakySink(transient={2: 6})
    async with running_sink(tmp_path / "e.sqlite3", sink, metrics) as bus:
        await bus.publish([status_event(NOW + i) for i in range(3)])
        await until(lambda: sink.got == [1, 2, 3])
        await until(lambda: bus.log.get_cursor("hook") == 3)
    assert sink.attempts == {1: 1, 2: 7, 3: 1}
    assert sample(metrics, "failures") == 6
    assert sample(metrics, "rejected") == 0  # created at zero, so increase() sees the first one


class StuckSink(FlakySink):
    """Hangs on chosen events a set number of times, or lets a cancellation of its own escape."""

    def __init__(self, hang: dict[int, int] | None = None, leak_cancel: dict[int, int] | None = None) -> None:
        super().__init__()
        self.hang = hang or {}
        self.leak_cancel = leak_cancel or {}

    async def send(self, event_id: int, payload: str) -> None:
        self.attempts[event_id] += 1
        if self.attempts[event_id] <= self.hang.get(event_id, 0):
            await asyncio.Event().wait()  # a receiver that accepted the request and never answers
        if self.attempts[event_id] <= self.leak_cancel.get(event_id, 0):
            raise asyncio.CancelledError()  # a library's own cancel scope, leaking
        self.got.append(event_id)


async def test_a_sink_that_hangs_or_leaks_a_cancellation_is_retried_and_its_lag_shows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: a hung send stalled delivery with nothing counted or logged, and a leaked
    # CancelledError ended the runner for good, silently.
    monkeypatch.setattr(SinkRunner, "SEND_TIMEOUT_S", 0.2)
    metrics = Metrics()
    sink = StuckSink(hang={2: 1}, leak_cancel={3: 2})
    lag = lambda: metrics.registry.get_sample_value("deepfake_monitor_sink_lag_events", {"sink": "hook"})  # noqa: E731
    async with running_sink(tmp_path / "e.sqlite3", sink, metrics) as bus:
        assert lag() == 0
        sink.hang[1] = 1
        await bus.publish([status_event(NOW + i) for i in range(3)])
        await until(lambda: sink.attempts[1] == 1)
        assert lag() == 3  # the first send hangs: nothing delivered yet
        await until(lambda: sink.got == [1, 2, 3])
        await until(lambda: lag() == 0)
    assert dict(sink.attempts) == {1: 2, 2: 2, 3: 3}
    assert sample(metrics, "failures") == 4
    assert "send of event 1 took over 0.2 s" in caplog.text and "cancelled inside the sink" in caplog.text
    assert "stopped delivering" not in caplog.text


class StubbornSink(FlakySink):
    """Swallows the first cancellation of a send (a library's own cancel scope), and never
    finishes closing (a call that hangs; cancelling it still ends it)."""

    def __init__(self) -> None:
        super().__init__()
        self.swallowed = False

    async def send(self, event_id: int, payload: str) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if self.swallowed:
                raise
            self.swallowed = True
            await asyncio.sleep(3600)

    async def aclose(self) -> None:
        await asyncio.Event().wait()


async def test_shutdown_leaves_a_sink_behind_that_will_not_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: SIGTERM's teardown waited for ever on such a sink, and the log was never closed.
    monkeypatch.setattr(SinkRunner, "CLOSE_S", 0.2)
    log = EventLog(tmp_path / "e.sqlite3")
    metrics = Metrics()
    bus = EventBus(log, metrics)
    runner = SinkRunner(bus, StubbornSink(), "hook", metrics)
    await runner.start()
    await bus.publish([status_event(NOW)])
    await asyncio.sleep(0.1)  # the send is under way, and stuck
    await asyncio.wait_for(close_sinks([runner], 0.1), 5)
    assert "sink hook: its delivery task did not stop within 0.2 s; left behind" in caplog.text
    assert "sink hook: its close did not return within 0.2 s; left behind" in caplog.text
    await bus.aclose()
    log.close()


def webhook(status: int, **headers: str) -> WebhookSink:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers=headers, text="no such field")

    config = WebhookSink.Config(url="https://siem.example/hook", timeout_s=0.5)
    return WebhookSink(config, transport=httpx.MockTransport(answer))


@pytest.mark.parametrize("status", [400, 413, 415, 422])
async def test_webhook_payload_refusals_are_rejected_events(status: int) -> None:
    sink = webhook(status)
    await sink.start()
    try:
        with pytest.raises(RejectedEvent, match=f"event 7: HTTP {status} 'no such field'"):
            await sink.send(7, '{"id": "7"}')
    finally:
        await sink.aclose()


async def refusal(config: WebhookSink.Config, answer: Callable[[httpx.Request], httpx.Response]) -> RejectedEvent:
    """What a webhook sink with ``config`` raises when its receiver answers ``answer``."""
    sink = WebhookSink(config, transport=httpx.MockTransport(answer))
    await sink.start()
    try:
        with pytest.raises(RejectedEvent) as refused:
            await sink.send(7, '{"id": "7"}')
    finally:
        await sink.aclose()
    return refused.value


@pytest.mark.parametrize(
    "url, headers, sent",
    [
        ("https://siem.example/hook/T000SECRETPATH", {"Authorization": "Bearer TOPSECRET-TOKEN"}, "***"),
        ("https://user:pa%24%24word@siem.example/hook/T000SECRETPATH", {}, "Basic ***"),  # httpx sends the URL's as Basic
    ],
)
async def test_a_refusal_that_echoes_our_credentials_is_logged_without_them(url: str, headers: dict[str, str], sent: str) -> None:
    # Receivers and gateways that echo the request in their error put the configured token in
    # the service's log (the refusal's excerpt is logged at WARNING and ERROR).
    def echo(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, text=f"bad request; you sent {request.headers['authorization']} to {request.url.path}")

    refused = await refusal(WebhookSink.Config(url=url, timeout_s=0.5, headers=headers, secret="s" * 16), echo)
    assert str(refused) == f"event 7: HTTP 400 'bad request; you sent {sent} to ***'"


@pytest.mark.parametrize(
    "body",
    [
        '{"error": "bad", "path": "\\/hook\\/T000SECRETPATH"}',  # JSON escapes the "/"
        " " * 4090 + "Bearer TOPSECRET-TOKEN and more",  # the token cut in two where the read stops
    ],
)
async def test_a_refusal_echoing_our_credentials_in_other_forms_is_scrubbed_too(body: str) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(422, text=body)

    config = WebhookSink.Config(url="https://siem.example/hook/T000SECRETPATH", timeout_s=0.5, headers={"Authorization": "Bearer TOPSECRET-TOKEN"})
    refused = str(await refusal(config, answer))
    assert "SECRET" not in refused and "TOPS" not in refused and "Bear" not in refused, refused


@pytest.mark.parametrize(
    "status, headers",
    # Auth, wrong URL, throttling, redirects (not followed: a config error) and server errors
    # apply to every event: skipping on them would skip every alert.
    [(401, {}), (403, {}), (404, {}), (405, {}), (407, {}), (408, {}), (409, {}), (429, {}),
     (301, {"location": "https://elsewhere/"}), (302, {"location": "https://elsewhere/"}),
     (307, {"location": "https://elsewhere/"}), (500, {}), (503, {})],
)
async def test_webhook_failures_that_apply_to_every_event_are_retried(status: int, headers: dict[str, str]) -> None:
    sink = webhook(status, **headers)
    await sink.start()
    try:
        with pytest.raises(DeliveryError, match=f"HTTP {status}") as caught:
            await sink.send(7, '{"id": "7"}')
        assert not isinstance(caught.value, RejectedEvent)
        if 300 <= status < 400:
            assert "redirect not followed" in str(caught.value)
    finally:
        await sink.aclose()


def settings_with_hook(tmp_path: Path, retention_days: float = 30.0) -> Settings:
    return load_settings(
        None, data_dir=tmp_path / "data", demo=False, alerts={"retention_days": retention_days},
        sinks=[{"name": "webhook", "id": "hook"}],
    )


def test_pruning_keeps_what_a_configured_sink_has_not_delivered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = EventLog(tmp_path / "e.sqlite3")
    log.append([status_event(NOW - 40 * DAY + i) for i in range(4)])  # ids 1-4, past retention
    log.append([status_event(NOW)])  # id 5, recent
    log.set_cursor("hook", 2)  # delivered 1-2; its receiver has been down since
    log.set_cursor("removed", 0)  # a sink no longer configured holds nothing back
    with caplog.at_level(logging.WARNING, logger="monitor.app"):
        assert prune_event_log(log, settings_with_hook(tmp_path), NOW) == 2
    assert [r[0] for r in log.read_since(0)] == [3, 4, 5]
    assert "sink hook has 2 undelivered events older than alerts.retention_days=30" in caplog.text

    # Once the sink has caught up, its backlog goes at the next start-up, without a warning.
    log.set_cursor("hook", 5)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="monitor.app"):
        assert prune_event_log(log, settings_with_hook(tmp_path), NOW) == 2
    assert [r[0] for r in log.read_since(0)] == [5]
    assert caplog.text == ""
    log.close()


def test_pruning_without_sinks_or_before_a_sink_started(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "e.sqlite3")
    log.append([status_event(NOW - 40 * DAY), status_event(NOW)])
    # "hook" is configured but has no cursor yet: it will start at the end of the log anyway.
    assert prune_event_log(log, settings_with_hook(tmp_path), NOW) == 1
    assert [r[0] for r in log.read_since(0)] == [2]
    log.close()


def test_pruning_goes_in_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import monitor.alerts.eventlog as eventlog

    monkeypatch.setattr(eventlog, "PRUNE_BATCH", 3)  # one transaction per 3 events
    log = EventLog(tmp_path / "e.sqlite3")
    log.append([status_event(NOW - 40 * DAY + i) for i in range(10)])
    log.append([status_event(NOW)])
    log.set_cursor("hook", 8)
    assert prune_event_log(log, settings_with_hook(tmp_path), NOW) == 8  # 1-8, not the 9-10 the sink owes
    assert [r[0] for r in log.read_since(0)] == [9, 10, 11]
    log.close()


async def test_the_service_starts_when_the_log_cannot_be_pruned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A nearly full disk: the one pruning transaction failed and `monitor serve` exited with a
    # traceback, watching nothing, though appends still had room.
    import sqlite3

    import monitor.app
    from monitor.app import runtime

    def full(*args: Any) -> int:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(monitor.app, "prune_event_log", full)
    settings = load_settings(None, data_dir=tmp_path / "data", demo=False)
    async with runtime(settings) as rt:
        await rt.bus.publish([status_event(NOW)])
        assert rt.log.last_id() == 1


async def test_a_sink_added_back_is_told_what_was_pruned_while_it_was_gone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = EventLog(tmp_path / "e.sqlite3")
    log.append([status_event(NOW - 40 * DAY + i) for i in range(5)])
    log.append([status_event(NOW) for _ in range(3)])
    log.set_cursor("hook", 1)  # it had delivered event 1, then was removed from `sinks`
    log.prune(NOW - 30 * DAY)  # a start-up without it: nothing held back for it
    bus = EventBus(log, Metrics())
    runner = SinkRunner(bus, RecordingSink(), "hook", Metrics())
    with caplog.at_level(logging.WARNING, logger="monitor.alerts.bus"):
        assert await runner._first_cursor() == 1
    assert "events 2-5 were pruned while it was not configured" in caplog.text
    log.prune(NOW + DAY)  # everything: the log is empty, the next event will be 9
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="monitor.alerts.bus"):
        assert await runner._first_cursor() == 1
    assert "events 2-8 were pruned while it was not configured" in caplog.text
    log.close()


async def test_a_service_that_runs_for_months_still_prunes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Pruning ran only at start-up: a service never restarted kept every event and every alert's
    # evidence until the disk filled. It now runs once a day too (here every 0.2 s).
    import os

    import monitor.app
    from monitor.app import runtime

    monkeypatch.setattr(monitor.app, "PRUNE_EVERY_S", 0.2)
    settings = load_settings(None, data_dir=tmp_path / "data", demo=False)
    async with runtime(settings) as rt:
        await rt.bus.publish([status_event(NOW - 40 * DAY)])  # old by its time: due for pruning
        folder = settings.data_dir / "evidence" / ("ab" * 16)
        folder.mkdir(parents=True)
        (folder / "evidence.json").write_text("{}")
        os.utime(folder / "evidence.json", (NOW - 40 * DAY, NOW - 40 * DAY))
        await rt.bus.publish([status_event(NOW + 2000 * DAY)])  # recent: kept
        await until(lambda: [r[0] for r in rt.log.read_since(0)] == [2] and not folder.exists(), timeout=10)


@pytest.mark.parametrize(
    ("status", "header", "expected"),
    # "\xb2" (a superscript two, in latin-1): str.isdigit() says yes, float() refused it, and a
    # bare ValueError replaced the "HTTP 503" in the log.
    [(429, "120", 120.0), (503, "Tue, 14 Nov 2023 22:14:20 GMT", 60.0), (429, "soon", None), (500, "120", None), (429, None, None), (503, "\xb2", None)],
)
async def test_webhook_passes_on_the_receivers_retry_after(status: int, header: str | None, expected: float | None) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers=[(b"Retry-After", header.encode("latin-1"))] if header else [])

    config = WebhookSink.Config(url="https://siem.example/hook", timeout_s=0.5)
    sink = WebhookSink(config, clock=lambda: 1_700_000_000.0, transport=httpx.MockTransport(answer))  # 22:13:20 GMT
    await sink.start()
    try:
        with pytest.raises(DeliveryError) as failed:
            await sink.send(7, "{}")
        assert failed.value.retry_after_s == expected
        assert str(failed.value) == f"event 7: HTTP {status}"
    finally:
        await sink.aclose()


class AskingToWait(FlakySink):
    """Fails the first attempt of every event with a Retry-After of ``wait_s``."""

    def __init__(self, wait_s: float) -> None:
        super().__init__()
        self.wait_s = wait_s
        self.at: list[float] = []

    async def send(self, event_id: int, payload: str) -> None:
        self.at.append(asyncio.get_running_loop().time())
        self.attempts[event_id] += 1
        if self.attempts[event_id] == 1:
            raise DeliveryError("HTTP 429", retry_after_s=self.wait_s)
        self.got.append(event_id)


async def test_a_retry_after_is_waited_out_up_to_a_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: ignored, the next try came after the runner's own 0.5 s (here 0.01 s).
    metrics = Metrics()
    sink = AskingToWait(0.6)
    async with running_sink(tmp_path / "e.sqlite3", sink, metrics) as bus:
        await bus.publish([status_event(NOW)])
        await until(lambda: sink.got == [1])
        assert sink.at[1] - sink.at[0] >= 0.55
        monkeypatch.setattr(SinkRunner, "RETRY_AFTER_MAX_S", 0.2)  # an hour is not granted
        sink.wait_s = 3600.0
        await bus.publish([status_event(NOW)])
        await until(lambda: sink.got == [1, 2], timeout=3)
        assert sink.at[3] - sink.at[2] < 1.0


async def test_retries_of_a_receiver_that_stays_down_back_off_to_the_cap(tmp_path: Path) -> None:
    # A receiver down for an hour would otherwise be hit every retry_delay_s (7,200 times at 0.5 s).
    metrics = Metrics()
    log = EventLog(tmp_path / "e.sqlite3")
    bus = EventBus(log, metrics)
    runner = SinkRunner(bus, FlakySink(), "hook", metrics, retry_delay_s=0.5, max_retry_delay_s=30.0)
    try:
        delays = [0.5]
        for _ in range(8):
            runner._wake.set()  # end each wait at once; what is asserted is the next delay
            delays.append(await runner._back_off(1, "receiver down", delays[-1]))
        assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
        assert sample(metrics, "failures") == 8
    finally:
        await bus.aclose()
        log.close()

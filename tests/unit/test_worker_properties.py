"""Tests (from a mutation audit) of monitor.pipeline.worker.DaemonWorker: an Executor with one daemon thread."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Future

import pytest

from monitor.pipeline.worker import DaemonWorker


def occupied(worker: DaemonWorker, after: Callable[[], None] | None = None) -> tuple[threading.Event, Future]:
    """Submit a call that holds ``worker`` until the returned event is set (then runs ``after``);
    returns once that call has started."""
    started, release = threading.Event(), threading.Event()

    def block() -> None:
        started.set()
        release.wait(30)
        if after is not None:
            after()

    future = worker.submit(block)
    assert started.wait(30)
    return release, future


def test_shutdown_with_cancel_futures_cancels_the_calls_still_queued() -> None:
    worker = DaemonWorker("probe-cancel")
    ran: list[int] = []
    release, running = occupied(worker)
    queued = [worker.submit(ran.append, i) for i in range(3)]
    worker.shutdown(wait=False, cancel_futures=True)
    release.set()
    running.result(timeout=30)  # the call under way finishes
    assert all(f.cancelled() for f in queued)
    worker._thread.join(30)  # noqa: SLF001
    assert ran == []


def test_shutdown_with_wait_returns_only_after_the_queued_calls_ran() -> None:
    worker = DaemonWorker("probe-wait")
    ran: list[int] = []
    release, _ = occupied(worker, after=lambda: ran.append(0))
    worker.submit(ran.append, 1)
    threading.Timer(0.2, release.set).start()
    worker.shutdown(wait=True)
    assert ran == [0, 1]
    assert not worker._thread.is_alive()  # noqa: SLF001


def test_a_call_cancelled_before_it_runs_is_skipped_and_the_next_one_runs() -> None:
    worker = DaemonWorker("probe-skip")
    ran: list[str] = []
    release, _ = occupied(worker)
    skipped = worker.submit(ran.append, "skipped")
    after = worker.submit(ran.append, "after")
    assert skipped.cancel()
    assert not after.running()  # queued, not started: the worker marks a call running when it starts it
    release.set()
    after.result(timeout=30)
    with pytest.raises(CancelledError):
        skipped.result(timeout=0)
    assert ran == ["after"]
    worker.shutdown(wait=True)


def test_a_call_is_marked_running_while_it_runs() -> None:
    """An Executor's future says ``running()`` while its call runs, and then cannot be cancelled."""
    worker = DaemonWorker("probe-running")
    release, future = occupied(worker)
    try:
        assert future.running()
        assert not future.cancel()
    finally:
        release.set()
    future.result(timeout=30)
    worker.shutdown(wait=True)


class _Interrupt(BaseException):
    pass


def test_a_base_exception_reaches_the_caller_and_the_worker_goes_on() -> None:
    worker = DaemonWorker("probe-base")

    def boom() -> None:
        raise _Interrupt("stop")

    failing = worker.submit(boom)
    with pytest.raises(_Interrupt):
        failing.result(timeout=30)
    assert worker.submit(lambda: 42).result(timeout=30) == 42
    worker.shutdown(wait=True)


def test_the_worker_thread_is_a_daemon_and_submit_after_shutdown_fails() -> None:
    worker = DaemonWorker("probe-daemon")
    assert worker._thread.daemon  # noqa: SLF001
    worker.shutdown(wait=True)
    worker.shutdown(wait=True)  # twice is harmless
    with pytest.raises(RuntimeError, match="after shutdown"):
        worker.submit(print)

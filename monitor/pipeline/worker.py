"""One daemon thread that runs a stream's analysis calls in order.

``concurrent.futures.ThreadPoolExecutor`` would do, but its workers are joined when the
interpreter exits: one call stuck in a native library (MediaPipe, ONNX Runtime, a decoder)
would keep ``monitor serve`` alive after SIGTERM until it is killed. A daemon thread does not.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any


class DaemonWorker(Executor):
    """An ``Executor`` with a single daemon thread: calls run one at a time, in order."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]] | None] = (
            queue.SimpleQueue()
        )
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new calls after shutdown")
            future: Future[Any] = Future()
            self._queue.put((future, fn, args, kwargs))
            return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                if cancel_futures:
                    while True:
                        try:
                            item = self._queue.get_nowait()
                        except queue.Empty:
                            break
                        if item is not None:
                            item[0].cancel()
                self._queue.put(None)  # after the calls already queued
        if wait:
            self._thread.join()

    def alive(self) -> bool:
        """Whether its thread still runs: after ``shutdown(wait=False)``, until the call under
        way (perhaps stuck in a native library) and those queued behind it have returned."""
        return self._thread.is_alive()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            future, fn, args, kwargs = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # handed to whoever awaits the call
                future.set_exception(exc)


async def run_in_daemon_thread(fn: Callable[..., Any], *args: Any, name: str = "daemon-call") -> Any:
    """``fn(*args)`` on a daemon thread of its own, awaited: as ``asyncio.to_thread``, except
    that a call still running at exit (a model load hung on a stalled mount) does not keep the
    process alive after SIGTERM."""
    worker = DaemonWorker(name)
    try:
        return await asyncio.get_running_loop().run_in_executor(worker, fn, *args)
    finally:
        worker.shutdown(wait=False)

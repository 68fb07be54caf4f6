"""Child processes for tests: loopback ports, readiness waits, captured logs, cleanup at exit."""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

LOOPBACK = "127.0.0.1"

# Every process started here, so an interrupted test run cannot leave servers behind.
_live: set[ManagedProcess] = set()
_temp_logs: set[Path] = set()  # log files ManagedProcess made itself


def free_port() -> int:
    """A TCP port free on loopback right now (another process may still take it: retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = LOOPBACK) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_until(
    ready: Callable[[], bool],
    timeout: float,
    what: str,
    *,
    alive: Callable[[], bool] = lambda: True,
    detail: Callable[[], str] = lambda: "",
    interval: float = 0.05,
) -> None:
    """Poll ``ready`` until true; fail fast if ``alive`` turns false, with ``detail()`` (a log)."""
    deadline = time.monotonic() + timeout
    while True:
        if ready():
            return
        if not alive():
            raise RuntimeError(f"{what}: process exited before it was ready\n{detail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not ready after {timeout:.0f} s\n{detail()}")
        time.sleep(interval)


class ManagedProcess:
    """One child process whose stdout and stderr go to a log file, killed at interpreter exit."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.name = name
        self.env = dict(env) if env is not None else None
        if log_path is None:
            fd, raw = tempfile.mkstemp(prefix=f"{name}-", suffix=".log")
            os.close(fd)
            log_path = Path(raw)
            _temp_logs.add(log_path)  # ours: removed at interpreter exit, not left in /tmp
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        # Append: a restarted server keeps the log of its previous life for debugging.
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,  # a Ctrl-C in the test terminal must not hit it first
            )
        _live.add(self)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def signal(self, sig: int) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(sig)

    def stop(self, *, graceful: bool = True, timeout: float = 5.0) -> int | None:
        """SIGTERM and wait (SIGKILL if it does not exit), or SIGKILL at once; the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            if graceful:
                proc.send_signal(signal.SIGCONT)  # a paused process cannot handle SIGTERM
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
            else:
                proc.kill()
        code = proc.wait(timeout)
        _live.discard(self)
        return code


@atexit.register
def _kill_leftovers() -> None:
    """Kill what is still running, then remove the log files this module created: a failing
    test has shown a log by then (``wait_until``'s detail), and every run of the suite left a
    few in /tmp. ``MONITOR_TEST_KEEP_LOGS=1`` keeps them."""
    for managed in list(_live):
        managed.stop(graceful=False, timeout=2.0)
    if os.environ.get("MONITOR_TEST_KEEP_LOGS") != "1":
        for path in list(_temp_logs):
            path.unlink(missing_ok=True)
            _temp_logs.discard(path)

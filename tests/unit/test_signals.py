"""`monitor serve`'s signals: the first stops it cleanly, a second during teardown ends it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import asyncio, contextlib
    from fastapi import FastAPI
    import monitor.app as app
    from monitor.config import load_settings
    from monitor.metrics import Metrics

    @contextlib.asynccontextmanager
    async def stuck_teardown(settings, clock=None, metrics=None):
        try:
            yield app.Runtime(settings, Metrics(), None, None, FastAPI())
        finally:
            print("teardown", flush=True)
            await asyncio.sleep(120)  # a camera whose decoder never lets go

    app.runtime = stuck_teardown
    asyncio.run(app.serve(load_settings(None, demo=False, data_dir={data_dir!r}, server={{"port": 0}})))
    """
)


def spawn(code: str) -> subprocess.Popen[str]:
    """``code`` in a Python of its own, from the project's root, its output line by line."""
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=Path(__file__).resolve().parents[2], env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_a_second_signal_during_teardown_ends_the_process(tmp_path: Path) -> None:
    # Before: uvicorn put back asyncio's do-nothing handler when it stopped, and every later
    # SIGINT or SIGTERM was ignored for the whole teardown.
    proc = spawn(SCRIPT.format(data_dir=str(tmp_path / "data")))
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        for wanted in ("monitor listening on", "teardown"):
            deadline = time.monotonic() + 60
            while not any(wanted in line for line in lines):
                line = proc.stdout.readline()
                assert line and time.monotonic() < deadline, "".join(lines)
                lines.append(line)
                if wanted == "monitor listening on" and wanted in line:
                    proc.send_signal(signal.SIGTERM)  # the first: a clean stop begins
        proc.send_signal(signal.SIGINT)  # the second, 120 s of teardown ahead
        assert proc.wait(20) == -signal.SIGINT
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


HUNG_START = textwrap.dedent(
    """
    import asyncio, contextlib, time
    import monitor.app as app
    from monitor.config import load_settings

    @contextlib.asynccontextmanager
    async def hung_start(settings, clock=None, metrics=None):
        print("starting", flush=True)
        await asyncio.to_thread(time.sleep, 120)  # a plugin's start that never returns, in a thread
        yield None

    app.runtime = hung_start
    asyncio.run(app.serve(load_settings(None, demo=False, data_dir={data_dir!r}, server={{"port": 0}})))
    """
)


def test_a_second_ctrl_c_during_a_hung_start_ends_the_process(tmp_path: Path) -> None:
    # Before: removing asyncio's SIGINT handler put back Python's KeyboardInterrupt, so the second
    # Ctrl-C made asyncio.run wait for the hung thread (120 s here) instead of ending the process.
    proc = spawn(HUNG_START.format(data_dir=str(tmp_path / "data")))
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "starting" in line, line
        time.sleep(0.5)  # the signal handlers are in place before the runtime starts
        proc.send_signal(signal.SIGINT)  # the first: a clean stop, once the start returns
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)  # the second: now
        assert proc.wait(20) == -signal.SIGINT
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

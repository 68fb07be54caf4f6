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


def test_a_second_signal_during_teardown_ends_the_process(tmp_path: Path) -> None:
    # Before: uvicorn put back asyncio's do-nothing handler when it stopped, and every later
    # SIGINT or SIGTERM was ignored for the whole teardown.
    code = SCRIPT.format(data_dir=str(tmp_path / "data"))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=Path(__file__).resolve().parents[2], env={**os.environ, "PYTHONUNBUFFERED": "1"})
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

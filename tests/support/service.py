"""Run the real service for tests: in-process on a free port, or as a `monitor serve` process."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn
import yaml
from starlette.applications import Starlette
from starlette.routing import Mount

from monitor.app import Runtime, runtime, uvicorn_config
from monitor.config import Settings

MONITOR = str(Path(sys.executable).with_name("monitor"))


@dataclass
class Running:
    runtime: Runtime
    base: str  # http://127.0.0.1:PORT

    @property
    def ws(self) -> str:
        return "ws" + self.base[4:]


@contextlib.asynccontextmanager
async def running_service(settings: Settings, prefix: str = "") -> AsyncIterator[Running]:
    """The whole service in this event loop, on a free loopback port; with ``prefix`` (e.g.
    "/monitor"), under that path, as a reverse proxy serving it there would."""
    async with runtime(settings) as rt:
        app = Starlette(routes=[Mount(prefix, app=rt.app)]) if prefix else rt.app
        config = uvicorn_config(app, settings, rt.metrics)
        config.port = 0
        config.log_level = "warning"
        server = uvicorn.Server(config)
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        task = asyncio.create_task(server.serve())
        deadline = time.monotonic() + 20
        while not server.started:
            if task.done():
                task.result()
            if time.monotonic() > deadline:
                raise TimeoutError("service did not start")
            await asyncio.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            yield Running(rt, f"http://127.0.0.1:{port}")
        finally:
            server.should_exit = True
            await task


class ServiceProcess:
    """`monitor serve` as a child process (for restart tests); loopback, free port."""

    def __init__(self, workdir: Path, config: dict[str, object], env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.config_path = workdir / "monitor.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.env = {**os.environ, "GLOG_minloglevel": "2", **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.base = ""
        self.log = workdir / "service.log"
        self._cleanup_registered = False

    def start(self, port: int = 0, timeout: float = 60.0) -> str:
        """Start it and wait (at most ``timeout``) for its "listening on" line. Output goes to
        the log file, not a pipe nobody drains; a start that fails is killed, not leaked."""
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                [MONITOR, "serve", "-c", str(self.config_path), "--port", str(port)],
                cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT, text=True,
            )
        if not self._cleanup_registered:
            atexit.register(self.stop, signal.SIGKILL)  # whatever a failing test left running
            self._cleanup_registered = True
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                m = re.search(r"listening on (http://\S+)", self.log.read_text(errors="replace")[offset:])
                if m:
                    self.base = m.group(1)
                    return self.base
                if self.proc.poll() is not None:
                    raise RuntimeError(f"monitor exited with {self.proc.returncode}: {self.log.read_text()[-3000:]}")
                time.sleep(0.05)
            raise TimeoutError(f"monitor did not report its port within {timeout:.0f} s")
        except BaseException:
            self.stop(signal.SIGKILL)
            raise

    @property
    def port(self) -> int:
        return int(self.base.rsplit(":", 1)[1])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    def get(self, path: str, **kw: object) -> httpx.Response:
        return httpx.get(self.base + path, timeout=10, **kw)  # type: ignore[arg-type]

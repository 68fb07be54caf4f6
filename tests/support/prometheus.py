"""A real Prometheus (Debian's binary) scraping a loopback target, and promtool's metrics lint."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.support.procs import LOOPBACK, ManagedProcess, free_port, wait_until

PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"

# No proxies: an http_proxy in the environment must not route loopback calls elsewhere.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def promtool_check_metrics(text: str | bytes) -> tuple[bool, str]:
    """Lint an exposition with ``promtool check metrics``: (passed, what promtool said)."""
    data = text.encode() if isinstance(text, str) else text
    result = subprocess.run([PROMTOOL, "check", "metrics"], input=data, capture_output=True, timeout=30)
    output = (result.stdout + result.stderr).decode(errors="replace")
    return result.returncode == 0, output


class Prometheus:
    """Prometheus on ``127.0.0.1:<free port>`` scraping ``targets`` every second.

    Storage lives in a temporary directory removed by ``stop()``.
    """

    def __init__(
        self,
        targets: Sequence[str],
        *,
        job: str = "monitor",
        metrics_path: str = "/metrics",
        scrape_interval: str = "1s",
    ) -> None:
        self.job = job
        self.port = 0
        self._workdir = Path(tempfile.mkdtemp(prefix="prometheus-"))
        # JSON is valid YAML: no YAML library needed to write the config.
        config = {
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
            "scrape_configs": [
                {
                    "job_name": job,
                    "metrics_path": metrics_path,
                    "scrape_interval": scrape_interval,
                    "scrape_timeout": scrape_interval,
                    "static_configs": [{"targets": list(targets)}],
                }
            ],
        }
        self.config_path = self._workdir / "prometheus.yml"
        self.config_path.write_text(json.dumps(config, indent=2))
        self._proc: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def log(self) -> str:
        return self._proc.log() if self._proc is not None else ""

    def start(self, timeout: float = 30.0) -> Prometheus:
        # free_port() finds a port free now; another process may bind it before Prometheus
        # does. A start that dies on "address already in use" is retried on a fresh port.
        for attempt in range(3):
            self.port = free_port()
            self._proc = ManagedProcess(
                [
                    PROMETHEUS,
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self._workdir / 'data'}",
                    f"--web.listen-address={LOOPBACK}:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=warn",
                ],
                name="prometheus",
                log_path=self._workdir / "prometheus.log",
            )
            self._proc.start()
            proc = self._proc
            try:
                wait_until(self._ready, timeout, "prometheus", alive=lambda: proc.running, detail=self.log, interval=0.1)
                return self
            except RuntimeError:  # it exited before it was ready
                if attempt == 2 or "address already in use" not in self.log():
                    raise
                proc.stop(graceful=False)
        raise AssertionError("unreachable")

    def _ready(self) -> bool:
        try:
            with _OPENER.open(f"{self.url}/-/ready", timeout=1) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def _api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with _OPENER.open(f"{self.url}/api/v1/{path}{query}", timeout=5) as response:
            body = json.load(response)
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus API {path}: {body}")
        return body["data"]

    def targets(self) -> list[dict[str, Any]]:
        return list(self._api("targets", state="active")["activeTargets"])

    def wait_for_scrape(self, job: str | None = None, timeout: float = 20.0) -> dict[str, Any]:
        """Wait until every target of ``job`` was scraped successfully (health "up"); the first target."""
        job = job or self.job
        deadline = time.monotonic() + timeout
        last: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            last = [t for t in self.targets() if t["labels"].get("job") == job]
            if last and all(t["health"] == "up" for t in last):
                return last[0]
            time.sleep(0.2)
        errors = [(t.get("scrapeUrl"), t.get("health"), t.get("lastError")) for t in last]
        raise TimeoutError(f"job {job!r} not up after {timeout} s: {errors}\n{self.log()}")

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query: the ``result`` list (each with ``metric`` and ``value``)."""
        return list(self._api("query", query=expr)["result"])

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop(graceful=True, timeout=10)
            self._proc = None
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> Prometheus:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

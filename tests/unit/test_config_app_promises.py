"""Promises of README.md and docs/operations.md (and the settings' own schema) about the
configuration, the CLI's exit statuses, and the service's start-up and shutdown
(monitor/config.py, cli.py, app.py). Each of these tests was written against a one-line change
of the code that the rest of the suite let through. Generated fixtures only; nothing binds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from typer.testing import CliRunner

import monitor.app
import monitor.pipeline.offline
from monitor.alerts.eventlog import EventLog
from monitor.app import RedactSecrets, data_dir_lock, prune_event_log, runtime, uvicorn_config
from monitor.cli import app
from monitor.config import Settings, load_settings
from monitor.errors import ConfigError, MonitorError
from monitor.types import Event, EventType, Severity, StreamState, StreamStatusData

DAY = 86400.0


@pytest.fixture(autouse=True)
def _no_monitor_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("MONITOR_")]:
        monkeypatch.delenv(name)


def _settings(tmp_path: Path, **kw: Any) -> Settings:
    kw.setdefault("demo", False)
    return load_settings(None, data_dir=tmp_path / "data", **kw)


# ---------------------------------------------------------------- config.py: ranges and checks


@pytest.mark.parametrize("port", [-1, 65536])
def test_a_port_outside_0_to_65535_is_refused_naming_the_key(port: int) -> None:
    with pytest.raises(ConfigError, match=r"server\.port"):
        load_settings(None, server={"port": port})
    for ok in (0, 65535):  # 0 picks a free port; 65535 is the highest there is
        assert load_settings(None, server={"port": ok}).server.port == ok


@pytest.mark.parametrize(("section", "value"), [("analysis", {"fps": 0}), ("analysis", {"fps": 61}), ("analysis", {"fps": -5})])
def test_an_analysis_rate_outside_its_range_is_a_config_error_naming_the_key(section: str, value: dict) -> None:
    # fps 0 used to be a ZeroDivisionError traceback when the bound was loosened; the key must be named.
    with pytest.raises(ConfigError, match=r"analysis\.fps"):
        load_settings(None, **{section: value})


def test_a_streams_analysis_rate_of_0_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"streams\[0\]\.analysis_fps"):
        load_settings(None, streams=[{"id": "cam", "url": "demo://astronaut", "analysis_fps": 0}])


def test_track_lost_s_may_equal_inconclusive_after_s() -> None:
    # docs/operations.md: track_lost_s "may not exceed" inconclusive_after_s; equal is allowed.
    s = load_settings(None, analysis={"track_lost_s": 2.0}, policy={"inconclusive_after_s": 2.0})
    assert s.analysis.track_lost_s == s.policy.inconclusive_after_s == 2.0
    with pytest.raises(ConfigError, match="track_lost_s"):
        load_settings(None, analysis={"track_lost_s": 2.5}, policy={"inconclusive_after_s": 2.0})


def test_a_hysteresis_equal_to_suspicious_enter_is_refused() -> None:
    # docs/operations.md: "a hysteresis of suspicious_enter or more, which no score could leave,
    # is refused at start-up". Equal gives an exit threshold of 0: an alert could never close.
    with pytest.raises(ConfigError, match="hysteresis"):
        load_settings(None, policy={"suspicious_enter": 0.4, "alert_enter": 0.7, "hysteresis": 0.4})
    assert load_settings(None, policy={"suspicious_enter": 0.4, "hysteresis": 0.39}).policy.hysteresis == 0.39


@pytest.mark.parametrize("text", ["- server\n- streams\n", "just a string\n", "42\n"])
def test_a_config_file_that_is_not_a_mapping_is_a_one_line_error(tmp_path: Path, text: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(cfg)
    r = CliRunner().invoke(app, ["config", "show", "-c", str(cfg)])
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert "Traceback" not in r.output


def test_a_monitor_variable_that_is_not_valid_json_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONITOR_SERVER", "{not json")
    with pytest.raises(ConfigError, match="server"):
        load_settings(None)
    r = CliRunner().invoke(app, ["config", "show"])
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert "Traceback" not in r.output


# ---------------------------------------------------------------- cli.py: exit codes


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"not really a video")  # scan is replaced: only its existence matters
    return path


def _scan_raising(exc: BaseException, seen: dict[str, Any] | None = None):
    def fake_scan(target: str, settings: Settings, **kw: Any) -> Any:
        if seen is not None:
            seen.update(kw, target=target)
        raise exc

    return fake_scan


def test_scan_interrupted_exits_130_not_1(monkeypatch: pytest.MonkeyPatch, clip: Path) -> None:
    # 1 means "an alert was raised": an interrupted scan must never read as a detection.
    monkeypatch.setattr(monitor.pipeline.offline, "scan", _scan_raising(KeyboardInterrupt()))
    r = CliRunner().invoke(app, ["scan", str(clip), "-q"])
    assert r.exit_code == 130, (r.exit_code, r.output)


def test_scan_failing_unexpectedly_exits_2_not_1(monkeypatch: pytest.MonkeyPatch, clip: Path) -> None:
    monkeypatch.setattr(monitor.pipeline.offline, "scan", _scan_raising(RuntimeError("a library bug")))
    r = CliRunner().invoke(app, ["scan", str(clip), "-q"])
    assert r.exit_code == 2, (r.exit_code, r.output)


def test_scan_of_a_url_stops_after_30_s_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(monitor.pipeline.offline, "scan", _scan_raising(MonitorError("stop here"), seen))
    r = CliRunner().invoke(app, ["scan", "rtsp://127.0.0.1:9/x", "-q"])
    assert r.exit_code == 2, r.output
    assert seen["max_duration_s"] == 30.0
    r = CliRunner().invoke(app, ["scan", "rtsp://127.0.0.1:9/x", "-q", "--duration", "5"])
    assert seen["max_duration_s"] == 5.0


def test_train_interrupted_exits_130(monkeypatch: pytest.MonkeyPatch) -> None:
    import monitor.training.train

    def interrupted(args: list[str]) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(monitor.training.train, "main", interrupted)
    r = CliRunner().invoke(app, ["train", "--source", "tsv:x"])
    assert r.exit_code == 130, (r.exit_code, r.output)


def test_evaluate_interrupted_exits_130(monkeypatch: pytest.MonkeyPatch) -> None:
    import monitor.training.evaluate

    def interrupted(*a: Any, **kw: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(monitor.training.evaluate, "evaluate", interrupted)
    r = CliRunner().invoke(app, ["evaluate", "--source", "real:/nonexistent", "-q", "--workers", "1"])
    assert r.exit_code == 130, (r.exit_code, r.output)


# ---------------------------------------------------------------- app.py: start-up and shutdown


def test_uvicorn_binds_the_configured_address() -> None:
    for host in ("127.0.0.1", "::1", "localhost"):
        settings = load_settings(None, server={"host": host})
        assert uvicorn_config(FastAPI(), settings).host == host
    exposed = load_settings(None, server={"host": "10.1.2.3", "token": "t" * 32, "port": 0})
    assert uvicorn_config(FastAPI(), exposed).host == "10.1.2.3"


def test_the_data_dir_is_created_readable_by_its_user_only(tmp_path: Path) -> None:
    # docs/operations.md: "0600 files, 0700 folders".
    data_dir = tmp_path / "fresh" / "data"
    with data_dir_lock(data_dir):
        pass
    assert stat.S_IMODE(data_dir.stat().st_mode) & 0o077 == 0


def _status(t: float) -> Event:
    return Event(EventType.STREAM_STATUS, "cam", Severity.INFO, t, StreamStatusData(StreamState.RUNNING, "x", 0))


def test_retention_is_counted_in_days(tmp_path: Path) -> None:
    now = time.time()
    log = EventLog(tmp_path / "e.sqlite3")
    try:
        log.append([_status(now - 31 * DAY), _status(now - 2 * DAY), _status(now - 3600), _status(now)])
        settings = _settings(tmp_path, alerts={"retention_days": 30})
        assert prune_event_log(log, settings, now) == 1
        assert [i for i, _ in log.read_since(0)] == [2, 3, 4]
    finally:
        log.close()


def test_a_second_signal_handler_is_not_what_stops_a_signalled_server() -> None:
    """A SIGTERM while uvicorn serves must only ask it to stop: the process then runs its
    teardown (closing alerts, flushing the log). uvicorn itself re-raises the signal when it
    stops serving, which would end the process before the teardown."""
    code = (
        "import os, signal, time, uvicorn\n"
        "from monitor.app import _Server\n"
        "server = _Server(uvicorn.Config(app=lambda *a: None))\n"
        "with server.capture_signals():\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(0.2)\n"
        "print('teardown runs', server.should_exit, flush=True)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[2])
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert "teardown runs True" in r.stdout


def test_a_signal_while_starting_stops_without_serving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # docs/operations.md: a SIGTERM while the service is still starting stops it once its
    # streams are open, without serving.
    served: list[object] = []

    @contextlib.asynccontextmanager
    async def signalled_while_starting(settings: Settings) -> AsyncIterator[Any]:
        os.kill(os.getpid(), signal.SIGTERM)  # the service's own handler takes it
        for _ in range(50):
            await asyncio.sleep(0.01)
        yield type("Rt", (), {"app": FastAPI(), "metrics": None})()

    class NeverServe:
        def __init__(self, config: Any) -> None:
            served.append(config)
            self.started, self.servers, self.should_exit = False, [], False

        async def serve(self) -> None:
            return None

    monkeypatch.setattr(monitor.app, "runtime", signalled_while_starting)
    monkeypatch.setattr(monitor.app, "_Server", NeverServe)
    monkeypatch.setattr(monitor.app, "uvicorn_config", lambda *a, **k: "config")
    asyncio.run(monitor.app.serve(_settings(tmp_path)))
    assert served == []


def test_websocket_handshake_credentials_are_hidden_in_uvicorns_debug_log() -> None:
    secret = "s3cr3t-token-value-0123456789"
    for header, value in (("authorization", f"Bearer {secret}"), ("sec-websocket-protocol", f"cloudevents.json, bearer.{secret}")):
        record = logging.LogRecord("uvicorn.error", logging.DEBUG, __file__, 1, "< %s: %s", (header, value), None)
        assert RedactSecrets().filter(record)
        assert secret not in record.getMessage()
    kept = logging.LogRecord("uvicorn.error", logging.DEBUG, __file__, 1, "< %s: %s", ("user-agent", "curl/8"), None)
    RedactSecrets().filter(kept)
    assert kept.getMessage() == "< user-agent: curl/8"


def test_a_broken_detector_bundle_stops_the_start_even_without_streams(tmp_path: Path) -> None:
    settings = _settings(tmp_path, detector={"name": "temporal-v1", "options": {"model_dir": str(tmp_path / "no-bundle")}})

    async def start() -> None:
        async with runtime(settings):
            pass

    with pytest.raises(ConfigError, match="manifest.json is missing"):
        asyncio.run(start())


def test_no_evidence_store_reaches_the_streams_when_evidence_is_off(tmp_path: Path) -> None:
    # README: alerts.evidence false "saves no images of faces".
    async def start(settings: Settings) -> object:
        async with runtime(settings) as rt:
            return rt.manager.evidence

    assert asyncio.run(start(_settings(tmp_path, alerts={"evidence": False}))) is None
    assert asyncio.run(start(_settings(tmp_path / "on", alerts={"evidence": True}))) is not None


def _events(data_dir: Path) -> list[dict[str, Any]]:
    log = EventLog(data_dir / "events.sqlite3")
    try:
        return [json.loads(p) for _, p in log.read_since(0, 10_000)]
    finally:
        log.close()


def _run_demo(tmp_path: Path, seconds: float, **kw: Any) -> Settings:
    settings = load_settings(None, data_dir=tmp_path / "data", demo=True, detector={"name": "baseline-landmarks"}, **kw)

    async def run() -> None:
        async with runtime(settings):
            await asyncio.sleep(seconds)

    asyncio.run(run())
    return settings


def test_shutdown_stops_every_stream_and_ends_its_tracks(tmp_path: Path) -> None:
    # docs/operations.md: SIGTERM stops cleanly: streams close, open alerts (and tracks) are closed.
    settings = _run_demo(tmp_path, 1.0)
    events = _events(settings.data_dir)
    statuses = [e["data"]["state"] for e in events if e["type"].endswith("stream.status.v1")]
    assert statuses and statuses[-1] == "stopped", statuses
    last_state: dict[int, dict[str, Any]] = {}
    for e in events:
        if e["type"].endswith("track.state.v1"):
            last_state[e["data"]["track_id"]] = e["data"]
    assert all("track_ended" in d["reasons"] for d in last_state.values()), last_state


def test_after_a_clean_stop_the_log_file_alone_holds_every_event(tmp_path: Path) -> None:
    # docs/operations.md: "the log is flushed" at shutdown; a plain copy of a *running* log
    # misses its -wal, but after a clean stop the database file is complete on its own.
    settings = _run_demo(tmp_path, 0.5)
    db = settings.data_dir / "events.sqlite3"
    copy = tmp_path / "copy.sqlite3"
    copy.write_bytes(db.read_bytes())
    with contextlib.closing(sqlite3.connect(copy)) as conn:
        in_file = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    assert in_file > 0 and in_file == len(_events(settings.data_dir))


def test_a_configured_file_missing_at_start_fails_only_its_own_stream(tmp_path: Path) -> None:
    # docs/operations.md: "A configured file missing when the service starts ... fails its own
    # stream (failed, no such file); the service and its other streams run on."
    missing = tmp_path / "not-mounted-yet" / "call.mp4"
    streams = [{"id": "gone", "url": str(missing)}, {"id": "demo", "url": "demo://astronaut"}]
    settings = load_settings(None, data_dir=tmp_path / "data", detector={"name": "baseline-landmarks"}, streams=streams)

    async def run() -> dict[str, Any]:
        got: dict[str, str] = {}
        async with runtime(settings):
            for _ in range(100):
                await asyncio.sleep(0.05)
                events = _events(settings.data_dir)
                got = {e["data"]["stream_id"]: e["data"]["state"] for e in events if e["type"].endswith("stream.status.v1")}
                if got.get("gone") == "failed" and got.get("demo") == "running":
                    return {"got": got, "events": events}
            raise AssertionError(f"streams never reached failed/running: {got}")

    result = asyncio.run(run())
    failed = [e["data"] for e in result["events"] if e["type"].endswith("stream.status.v1") and e["data"]["stream_id"] == "gone"]
    assert "no such file" in failed[-1]["detail"]


def test_alert_sinks_get_the_events_the_shutdown_itself_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # docs/operations.md: at SIGTERM "each alert sink gets up to 3 s to deliver those last events".
    got: list[dict[str, Any]] = []

    class Recorder:
        name = "recorder"

        def __init__(self, config: Any) -> None:
            pass

        async def start(self) -> None:
            pass

        async def send(self, event_id: int, payload: str) -> None:
            await asyncio.sleep(0.01)  # a receiver a little slower than the log
            got.append(json.loads(payload))

        async def aclose(self) -> None:
            pass

    real = monitor.app.load_plugin
    monkeypatch.setattr(monitor.app, "load_plugin", lambda group, name: Recorder if name == "recorder" else real(group, name))
    settings = _run_demo(tmp_path, 0.5, sinks=[{"name": "recorder"}])
    logged = [e["id"] for e in _events(settings.data_dir)]
    assert [e["id"] for e in got] == logged
    states = [e["data"]["state"] for e in got if e["type"].endswith("stream.status.v1")]
    assert states[-1] == "stopped", states


def test_an_event_log_that_cannot_be_opened_is_a_config_error_naming_the_data_dir(tmp_path: Path) -> None:
    # docs/operations.md: a log that cannot be opened (locked, unreadable, a full disk) stops the
    # start with that reason; the CLI turns a ConfigError into a one-line error with exit status 2.
    data_dir = tmp_path / "data"
    (data_dir / "events.sqlite3").mkdir(parents=True)  # not a database file: cannot be opened

    async def start() -> None:
        async with runtime(_settings(tmp_path)):
            pass

    with pytest.raises(ConfigError, match="cannot open the event log in data_dir"):
        asyncio.run(start())


def test_the_readmes_configuration_example_is_valid_as_written(tmp_path: Path) -> None:
    # The example a new user copies: every key in it must exist, and every value must pass the
    # settings and the plugins' own options, as `monitor config show` checks a file. Only its
    # CA file, which must exist, is swapped for a real one.
    import re

    from monitor.components import check_plugins
    from monitor.config import load_settings

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = re.search(r"## Configuration\n.*?```yaml\n(.*?)```", readme, re.S)
    assert example is not None
    ca = tmp_path / "camera-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    text = example.group(1).replace("/etc/deepfake-monitor/camera-ca.pem", str(ca))
    assert text != example.group(1)
    cfg = tmp_path / "monitor.yaml"
    cfg.write_text(text)
    settings = load_settings(cfg)
    check_plugins(settings)
    assert settings.log_level == "INFO" and settings.alerts.queue_size == 1000 and settings.policy.ema_halflife_s == 1.0
    assert [s.id for s in settings.streams] == ["lobby", "boardroom", "recorded-call", "sfu-alice"]
    assert [s.name for s in settings.sinks] == ["webhook", "redis"]

"""What the REST API and the stream manager promise (monitor/api/http.py,
monitor/pipeline/manager.py, config.host_allowed): the token on every data route, whole-name
host allow-lists, no credentials in answers, the 64-stream limit, ids held while closing, one
stream's failure or removal never touching another, /healthz, 503 with Retry-After, JSON media
types, evidence files. Each test was written against a one-line change of the code that the
rest of the suite let through.

The app is driven in-process over httpx's ASGI transport (no socket), with the stream manager
fed prebuilt in-memory sources (tests.unit.test_stream_teardown.Ticking): deterministic, fast.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from monitor.alerts.bus import EventBus
from monitor.alerts.eventlog import EventLog
from monitor.alerts.evidence import MANIFEST, EvidenceStore
from monitor.api.http import check_api_hosts, create_app
from monitor.clock import SystemClock
from monitor.config import Settings, StreamConfig, load_settings
from monitor.errors import SourceError, StreamExists, StreamStartFailed
from monitor.metrics import Metrics
from monitor.pipeline.manager import StreamManager
from monitor.pipeline.stream import StreamPipeline
from monitor.types import Frame
from tests.unit.test_stream_teardown import Constant, NoFaces, Ticking

TOKEN = "p" * 32
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ALERT = "0123456789abcdef0123456789abcdef"


@dataclass
class Svc:
    settings: Settings
    manager: StreamManager
    metrics: Metrics
    http: httpx.AsyncClient


@asynccontextmanager
async def service(tmp_path: Path, analysis: dict[str, Any] | None = None, **server: Any) -> AsyncIterator[Svc]:
    settings = load_settings(None, data_dir=tmp_path / "data", demo=False, server=server, analysis=analysis or {})
    log = EventLog(tmp_path / "events.sqlite3")
    metrics = Metrics()
    bus = EventBus(log, metrics)
    manager = StreamManager(settings, bus, metrics, SystemClock(), Constant, lambda stream_id: NoFaces())
    evidence = EvidenceStore(tmp_path / "evidence")
    folder = tmp_path / "evidence" / ALERT
    folder.mkdir(parents=True)
    (folder / MANIFEST).write_text(json.dumps({"alert_id": ALERT}))
    (folder / "frame.jpg").write_bytes(b"\xff\xd8\xff\xd9")
    app = create_app(settings, manager, bus, metrics, evidence)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            yield Svc(settings, manager, metrics, http)
    finally:
        await manager.aclose()
        log.close()


async def add_ticking(svc: Svc, stream_id: str) -> Ticking:
    source = Ticking(stream_id, svc.metrics)
    await svc.manager.add(StreamConfig(id=stream_id, url="x://y"), source=source)
    return source


ROUTES = [
    ("GET", "/api/streams", None),
    ("POST", "/api/streams", {"id": "new", "url": "demo://astronaut"}),
    ("GET", "/api/streams/cam", None),
    ("DELETE", "/api/streams/cam", None),
    ("GET", "/api/events?since=0", None),
    ("GET", f"/api/alerts/{ALERT}/evidence", None),
    ("GET", f"/api/alerts/{ALERT}/evidence/frame.jpg", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[f"{m}:{p}" for m, p, _ in ROUTES])
async def test_every_data_route_needs_the_token(tmp_path: Path, method: str, path: str, body: Any) -> None:
    # README: with server.token set, every route that reads or changes data needs it; only
    # /healthz and /metrics may be public (server.public_metrics, true here by default).
    async with service(tmp_path, token=TOKEN) as svc:
        await add_ticking(svc, "cam")
        for headers in ({}, {"Authorization": "Bearer " + "x" * 32}):
            r = await svc.http.request(method, path, json=body, headers=headers)
            assert r.status_code == 401, (method, path, r.status_code, r.text)
            assert r.headers.get("www-authenticate") == "Bearer"
        # Nothing was changed by the refused requests.
        assert [p.config.id for p in svc.manager.list()] == ["cam"]
        # And the same request with the token is not refused.
        ok = await svc.http.request(method, path, json=body, headers=AUTH)
        assert ok.status_code != 401, ok.text


async def test_public_healthz_names_no_stream(tmp_path: Path) -> None:
    # /healthz is public by default: it counts streams by state but names none.
    async with service(tmp_path, token=TOKEN) as svc:
        await add_ticking(svc, "secret-lobby-cam")
        r = await svc.http.get("/healthz")
        assert r.status_code == 200
        assert "secret-lobby-cam" not in r.text
        body = r.json()
        assert body["status"] == "ok" and sum(body["streams"].values()) == 1


async def test_503_while_shutting_down_says_when_to_retry(tmp_path: Path) -> None:
    # README: POST /api/streams → 503 (with Retry-After) while shutting down.
    async with service(tmp_path) as svc:
        await svc.manager.aclose()
        r = await svc.http.post("/api/streams", json={"id": "late", "url": "demo://astronaut"})
        assert r.status_code == 503, r.text
        assert r.headers.get("retry-after", "").isdigit(), r.headers
        assert "error" in r.json()


async def test_evidence_file_route_serves_only_the_images(tmp_path: Path) -> None:
    # Only frame.jpg and face-<k>.jpg are served at .../evidence/{file}.
    async with service(tmp_path) as svc:
        assert (await svc.http.get(f"/api/alerts/{ALERT}/evidence/frame.jpg")).status_code == 200
        for name in (MANIFEST, "face-10.jpg", "frame.jpeg", ".."):
            r = await svc.http.get(f"/api/alerts/{ALERT}/evidence/{name}")
            assert r.status_code == 404, (name, r.status_code)


@pytest.mark.parametrize("url", ["rtsp://cam1.lan.evil.example/x", "rtsp://evilcam1.lan/x", "rtsp://cam1.la/x", "rtsp://xcam1.lan./x"])
async def test_allowed_host_names_match_whole_names_only(tmp_path: Path, url: str) -> None:
    # operations.md: api_stream_hosts names are matched as the URL writes them (case and a
    # final dot aside): never by prefix or suffix.
    async with service(tmp_path, api_stream_hosts=["cam1.lan"]) as svc:
        r = await svc.http.post("/api/streams", json={"id": "a", "url": url})
        assert r.status_code == 403 and "server.api_stream_hosts" in r.text, (url, r.text)
        assert svc.manager.list() == []
    stream = StreamConfig(id="ok", url="rtsp://CAM1.lan./x")
    check_api_hosts(stream, ("cam1.lan",))  # the listed name itself passes


class SlowClose(Ticking):
    """A source whose close waits until released."""

    def __init__(self, stream_id: str, metrics: Metrics) -> None:
        super().__init__(stream_id, metrics)
        self.closing = asyncio.Event()
        self.release = asyncio.Event()

    async def aclose(self) -> None:
        self.closing.set()
        await self.release.wait()
        await super().aclose()


async def test_an_id_stays_taken_while_its_stream_closes(tmp_path: Path) -> None:
    async with service(tmp_path) as svc:
        source = SlowClose("cam", svc.metrics)
        await svc.manager.add(StreamConfig(id="cam", url="x://y"), source=source)
        removing = asyncio.create_task(svc.manager.remove("cam"))
        await asyncio.wait_for(source.closing.wait(), 5)
        with pytest.raises(StreamExists, match="still closing"):
            await svc.manager.add(StreamConfig(id="cam", url="x://y"), source=Ticking("cam", svc.metrics))
        r = await svc.http.post("/api/streams", json={"id": "cam", "url": "demo://astronaut"})
        assert r.status_code == 409, r.text
        source.release.set()
        await asyncio.wait_for(removing, 10)
        await add_ticking(svc, "cam")  # free again once the teardown ended


async def test_removing_one_stream_leaves_the_others_running(tmp_path: Path) -> None:
    async with service(tmp_path) as svc:
        sources = {i: await add_ticking(svc, i) for i in ("a", "b", "c")}
        assert (await svc.http.delete("/api/streams/b")).status_code == 204
        assert sorted(s["id"] for s in (await svc.http.get("/api/streams")).json()) == ["a", "c"]
        for i in ("a", "c"):
            assert not sources[i]._stop.is_set(), i  # noqa: SLF001 - never asked to stop
            assert (await svc.http.get(f"/api/streams/{i}")).status_code == 200


async def test_a_stream_whose_teardown_fails_does_not_stop_the_shutdown_of_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One failing stream never affects another: shutdown still closes every other stream.
    async with service(tmp_path) as svc:
        sources = {i: await add_ticking(svc, i) for i in ("a", "bad", "c")}
        real = StreamPipeline.aclose

        async def aclose(self: StreamPipeline) -> None:
            await real(self)
            if self.config.id == "bad":
                raise RuntimeError("teardown bug")  # after closing it: nothing left running

        monkeypatch.setattr(StreamPipeline, "aclose", aclose)
        await svc.manager.aclose()  # must not raise
        assert svc.manager.list() == []
        for i in ("a", "c"):
            assert sources[i]._stop.is_set(), i  # noqa: SLF001 - closed


class FailingClose(Ticking):
    async def aclose(self) -> None:
        await super().aclose()
        raise RuntimeError("close failed too")


async def test_a_failed_add_reports_its_own_error_not_its_cleanups(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=tmp_path / "data", demo=False)
    log = EventLog(tmp_path / "events.sqlite3")
    metrics = Metrics()

    def make_faces(stream_id: str) -> NoFaces:
        raise ValueError("face graph failed")

    manager = StreamManager(settings, EventBus(log, metrics), metrics, SystemClock(), Constant, make_faces)
    try:
        with pytest.raises(StreamStartFailed, match="cannot start: ValueError: face graph failed") as failed:
            await manager.add(StreamConfig(id="cam", url="x://y"), source=FailingClose("cam", metrics))
        assert isinstance(failed.value.__cause__, ValueError)  # its own error, not its cleanup's
        assert manager.list() == []
    finally:
        await manager.aclose()
        log.close()


class Broken(Ticking):
    """A source that fails for good when it opens (bad input, not a network error)."""

    def _open(self) -> None:
        raise SourceError("unsupported codec", retryable=False)


async def test_a_failed_stream_is_listed_and_counted_and_affects_no_other(tmp_path: Path) -> None:
    async with service(tmp_path) as svc:
        await svc.manager.add(StreamConfig(id="broken", url="x://y"), source=Broken("broken", svc.metrics))
        await add_ticking(svc, "good")
        async with asyncio.timeout(10):
            while True:
                states = {s["id"]: s for s in (await svc.http.get("/api/streams")).json()}
                if states["broken"]["state"] == "failed" and states["good"]["state"] == "running":
                    break
                await asyncio.sleep(0.02)
        assert "unsupported codec" in (states["broken"]["last_error"] or "")
        assert (await svc.http.get("/api/streams/broken")).json()["state"] == "failed"
        health = (await svc.http.get("/healthz")).json()["streams"]
        assert health == {"failed": 1, "running": 1}, health


async def test_at_most_64_streams(tmp_path: Path) -> None:
    # README: the limit of 64 streams; POST /api/streams answers 400 past it.
    async with service(tmp_path) as svc:
        for i in range(64):
            await svc.manager.add(StreamConfig(id=f"s{i}", url="x://y"), source=Ticking(f"s{i}", svc.metrics))
        r = await svc.http.post("/api/streams", json={"id": "one-more", "url": "demo://astronaut"})
        assert r.status_code == 400 and "at most 64 streams" in r.json()["error"], r.text
        assert len(svc.manager.list()) == 64


async def test_a_url_password_never_appears_in_stream_answers(tmp_path: Path) -> None:
    # README: a URL's credentials never appear in errors, events or logs (nor in the API).
    async with service(tmp_path) as svc:
        url = "rtsp://admin:s3cretpw@127.0.0.1:9/x"
        r = await svc.http.post("/api/streams", json={"id": "cam", "url": url, "options": {"open_timeout_s": 0.5}})
        assert r.status_code == 201, r.text
        answers = [r, await svc.http.get("/api/streams"), await svc.http.get("/api/streams/cam")]
        for answer in answers:
            assert "s3cretpw" not in answer.text, answer.text
        assert r.json()["url"].startswith("rtsp://") and "127.0.0.1:9/x" in r.json()["url"]


@pytest.mark.parametrize("ctype", ["application/json; charset=utf-8", "Application/JSON"], ids=["charset", "case"])
async def test_json_with_parameters_is_json(tmp_path: Path, ctype: str) -> None:
    # Only application/json is taken: a media type parameter or its case does not make it another.
    async with service(tmp_path) as svc:
        r = await svc.http.post("/api/streams", content=b'{"id": "bad id!", "url": "demo://astronaut"}', headers={"content-type": ctype})
        assert r.status_code == 422, r.text
        r = await svc.http.post("/api/streams", content=b'{"id": "a", "url": "demo://astronaut"}', headers={"content-type": "text/plain"})
        assert r.status_code == 415


class BigFrames(Ticking):
    """160x120 frames, as a WHIP track handed to the manager would deliver them."""

    def _read(self) -> Any:
        while not self._stop.is_set():
            yield Frame(self.stream_id, self.next_seq(), 0.0, time.monotonic(), 160, 120, np.zeros((120, 160, 3), np.uint8))
            time.sleep(0.05)


async def test_a_handed_in_source_keeps_to_max_frame_pixels(tmp_path: Path) -> None:
    # README: a stream (file, RTSP, WHIP or WHEP) whose frames exceed analysis.max_frame_pixels
    # fails with that reason. WHIP tracks are built outside the manager and handed in.
    async with service(tmp_path, analysis={"max_frame_pixels": 100 * 100}) as svc:
        await svc.manager.add(StreamConfig(id="pub", url="x://y"), source=BigFrames("pub", svc.metrics))
        async with asyncio.timeout(10):
            # Until it fails, or frames over the limit were taken in (then it never will).
            while (status := (await svc.http.get("/api/streams/pub")).json())["state"] != "failed" and status["frames_received"] < 3:
                await asyncio.sleep(0.02)
        assert status["state"] == "failed" and "max_frame_pixels" in (status["last_error"] or ""), status


async def test_a_stream_whose_face_stage_cannot_start_is_a_503_with_the_reason(tmp_path: Path) -> None:
    # Before: a bare "500 Internal Server Error" (and a traceback in the log) when the face stage,
    # the detector or a source plugin failed as the stream was built.
    async with service(tmp_path) as svc:
        build_threads: list[bool] = []

        def broken_faces(stream_id: str) -> NoFaces:
            build_threads.append(threading.current_thread().daemon)
            raise RuntimeError("MediaPipe graph init failed")

        svc.manager.make_faces = broken_faces
        r = await svc.http.post("/api/streams", json={"id": "cam", "url": "demo://astronaut"})
        assert r.status_code == 503 and r.headers["retry-after"] == "5", r.text
        assert r.json()["error"] == "stream 'cam' cannot start: RuntimeError: MediaPipe graph init failed"
        assert svc.manager.list() == [] and svc.manager.slots_taken() == 0
        # Built on a daemon thread: one hung in a load does not keep the process alive after SIGTERM.
        assert build_threads == [True]


async def test_a_configured_stream_that_cannot_start_stops_serve_with_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: a traceback and exit status 1; now a ConfigError, which `monitor serve` reports with exit 2.
    import monitor.app
    from monitor.app import runtime
    from monitor.errors import ConfigError

    def broken_factory(settings: Any) -> Any:
        def make(stream_id: str) -> NoFaces:
            raise RuntimeError("MediaPipe graph init failed")
        return make

    monkeypatch.setattr(monitor.app, "faces_factory", broken_factory)
    settings = load_settings(None, data_dir=tmp_path / "data", demo=True)
    with pytest.raises(ConfigError, match="stream 'demo' cannot start: RuntimeError: MediaPipe graph init failed"):
        async with runtime(settings):
            pass


class FailsToStart(Ticking):
    async def start(self) -> None:
        raise SourceError("camera refused", retryable=False)


async def test_a_stream_that_fails_to_start_is_not_left_listed(tmp_path: Path) -> None:
    # A failed add leaves nothing behind: not in the list, its id free again, others untouched.
    async with service(tmp_path) as svc:
        await add_ticking(svc, "other")
        with pytest.raises(StreamStartFailed, match="cannot start: SourceError: camera refused"):
            await svc.manager.add(StreamConfig(id="cam", url="x://y"), source=FailsToStart("cam", svc.metrics))
        assert [s["id"] for s in (await svc.http.get("/api/streams")).json()] == ["other"]
        assert (await svc.http.get("/api/streams/cam")).status_code == 404
        await add_ticking(svc, "cam")  # the id is free
        assert sorted(p.config.id for p in svc.manager.list()) == ["cam", "other"]


@pytest.mark.parametrize("url", ["demo://user:s3cret@cam/x", "gopher://user:s3cret@cam/x"])
async def test_a_refused_url_is_named_without_its_password(tmp_path: Path, url: str) -> None:
    async with service(tmp_path) as svc:
        r = await svc.http.post("/api/streams", json={"id": "d", "url": url})
        assert r.status_code in (400, 422), r.text
        assert "s3cret" not in r.text


async def test_the_body_deadline_ends_with_the_body() -> None:
    """BodyLimit's deadline covers receiving the body only: a handler that, once the body is in,
    waits on receive() for the client's disconnect (as streaming responses do) waits past the
    deadline without a 408."""
    from monitor.api.http import BodyLimit

    got: list[dict] = []
    sent: list[dict] = []
    incoming = [{"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.request", "body": b"c", "more_body": False}]

    async def receive() -> dict:
        if incoming:
            return incoming.pop(0)
        await asyncio.sleep(1.0)  # the client disconnects long after the deadline
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    async def app(scope: dict, receive_: Any, send_: Any) -> None:
        for _ in range(3):
            got.append(await receive_())

    metrics = Metrics()
    await BodyLimit(app, limit=10, metrics=metrics, timeout=0.3)({"type": "http", "headers": []}, receive, send)
    assert [m["type"] for m in got] == ["http.request", "http.request", "http.disconnect"]
    assert sent == []  # no 408
    assert not metrics.registry.get_sample_value("deepfake_monitor_http_rejected_total", {"reason": "timeout"})

    # A body whose last part comes after the deadline is still cut off: only a finished body ends it.
    got.clear()
    incoming[:] = [{"type": "http.request", "body": b"ab", "more_body": True}]
    await BodyLimit(app, limit=10, metrics=metrics, timeout=0.3)({"type": "http", "headers": []}, receive, send)
    assert [m["type"] for m in got] == ["http.request"]
    assert sent[0]["status"] == 408
    assert metrics.registry.get_sample_value("deepfake_monitor_http_rejected_total", {"reason": "timeout"}) == 1.0

"""HTTP and websocket routes: health, metrics, streams, alert websocket (CloudEvents).

One ASGI app on one port; auth by bearer token (a header; for the websocket also a
``bearer.`` subprotocol; an ``access_token`` query still works) whenever a token is
configured; request bodies are capped before they are read.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import enum
import ipaddress
import json
import logging
import math
import os
import re
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from monitor import __version__
from monitor.alerts.bus import EventBus
from monitor.alerts.evidence import FILE_NAME as EVIDENCE_FILE
from monitor.alerts.evidence import MANIFEST as EVIDENCE_MANIFEST
from monitor.alerts.evidence import EvidenceStore
from monitor.api.auth import token_ok
from monitor.api.whip import whip_router
from monitor.config import Settings, StreamConfig, host_allowed, url_host
from monitor.errors import ConfigError, MonitorError, ShuttingDown, StreamExists, StreamNotFound, StreamStartFailed
from monitor.metrics import Metrics
from monitor.pipeline.manager import StreamManager
from monitor.pipeline.stream import StreamStatus

logger = logging.getLogger(__name__)

WS_SUBPROTOCOL = "cloudevents.json"
# A browser cannot set headers on a websocket, and a URL gets logged (uvicorn, proxies): it sends
# the token as the subprotocol ``bearer.<base64url(token), unpadded>``, as Kubernetes does.
WS_BEARER_PREFIX = "bearer."
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
WS_CLOSE_TOO_SLOW = 1013
WS_CLOSE_POLICY = 1008
WS_CLOSE_INTERNAL = 1011  # the server failed (the event log could not be read): retry
MAX_EVENT_ID = 2**63 - 1  # SQLite's largest integer
# ``since`` is past the log's last id: the log was reset (or the id is wrong). Resume from 0.
WS_CLOSE_SINCE_AHEAD = 4409
# How long one send (or the 1013 close) to an alert websocket client may wait for room in the
# socket's buffer. A client that stops reading fills it and every send then waits for ever,
# holding its slot (server.max_ws_clients) and its subscription: past this it is evicted.
WS_SEND_TIMEOUT_S = 10.0
# On /api/streams: the newest event offered to live alert clients, and its log's epoch.
LAST_EVENT_ID_HEADER = "X-Last-Event-Id"
LAST_EVENT_EPOCH_HEADER = "X-Last-Event-Epoch"


class BodyLimit:
    """Reject bodies over ``limit`` bytes with 413, by Content-Length or while streaming, and
    bodies not received within ``timeout`` seconds of the request's head with 408 (a client
    trickling a body would otherwise hold its handler, and a WHIP slot, for ever)."""

    def __init__(
        self, app: ASGIApp, limit: int, metrics: Metrics, timeout: float = 10.0, cors_origins: tuple[str, ...] = ()
    ) -> None:
        self.app = app
        self.limit = limit
        self.metrics = metrics
        self.timeout = timeout
        self.cors_origins = frozenset(cors_origins)

    def _cors(self, scope: Scope) -> dict[str, str]:
        """CORS headers for a refusal sent from here, as WHIP's own refusals carry them: without
        them a browser publisher on an allowed origin saw only "Failed to fetch", not the reason."""
        origin = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"origin"), None)
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"} if origin in self.cors_origins else {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = True
                if too_big:
                    await self._reject(scope, send)
                    return
        received = 0
        complete = False
        deadline = asyncio.get_running_loop().time() + self.timeout

        async def limited() -> Message:
            nonlocal received, complete
            if complete:  # after the body, receive() waits for a disconnect: no deadline
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise _TooSlow() from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _TooLarge()
                complete = not message.get("more_body", False)
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._reject(scope, send)
        except _TooSlow:
            self.metrics.http_rejections.labels("timeout").inc()
            response = JSONResponse(
                {"error": f"request body not received within {self.timeout:g} s (server.request_timeout_s)"},
                status_code=408,
                # The rest of the body may still be on its way.
                headers={"Connection": "close", **self._cors(scope)},
            )
            await response({"type": "http"}, _empty_receive, send)

    async def _reject(self, scope: Scope, send: Send) -> None:
        self.metrics.http_rejections.labels("too_large").inc()
        response = JSONResponse({"error": "request body too large", "limit_bytes": self.limit}, status_code=413, headers=self._cors(scope))
        await response({"type": "http"}, _empty_receive, send)


class _TooLarge(Exception):
    pass


class _TooSlow(Exception):
    pass


async def _empty_receive() -> Message:
    return {"type": "http.disconnect"}


def origin_allowed(origin: str | None, host: str | None, allowed: set[str]) -> bool:
    """Non-browser clients send no Origin; a browser page must be same-origin or configured."""
    if origin is None or origin in allowed:
        return True
    return host is not None and origin.split("://", 1)[-1].rstrip("/") == host


def loopback_hosts(bound: str) -> list[str]:
    """Host header names a loopback server answers to: the usual two and the address it is
    bound to (::1, 127.0.0.2...). TrustedHostMiddleware compares the host part of the header,
    which keeps an IPv6 address in brackets (``Host: [::1]:8080``)."""
    hosts = ["127.0.0.1", "localhost"]
    try:
        ip = ipaddress.ip_address(bound)
    except ValueError:
        return hosts  # "localhost"
    name = f"[{ip.compressed}]" if ip.version == 6 else ip.compressed
    return hosts if name in hosts else [*hosts, name]


class _NonFinite(ValueError):
    pass


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e309
        raise _NonFinite(text)
    return value


def _no_constant(name: str) -> Any:
    raise _NonFinite(name)


def parse_json_body(body: bytes) -> Any:
    """``body`` as strict JSON. Python's json accepts NaN, Infinity and -Infinity (and makes
    inf of 1e309), which JSON has not: echoed in an error they made the response itself fail
    (a 500). Refused here with a 400 instead, as are lone surrogates (``"\\ud800"``): valid
    JSON text, but no UTF-8 string, so every later listing of what they named failed."""
    try:
        value = json.loads(body, parse_constant=_no_constant, parse_float=_finite_float)
        json.dumps(value, ensure_ascii=False).encode()  # UnicodeEncodeError on a lone surrogate
        return value
    except UnicodeEncodeError:
        raise HTTPException(400, "body must be JSON: a string holds a lone UTF-16 surrogate") from None
    except _NonFinite as exc:
        raise HTTPException(400, f"body must be JSON: {str(exc)[:20]} is not a finite number") from None
    except ValueError:  # UnicodeDecodeError and JSONDecodeError too
        raise HTTPException(400, "body must be JSON") from None
    except RecursionError:  # json's C parser recurses per nesting level
        raise HTTPException(400, "body must be JSON: nested too deeply") from None


def check_api_file(url: str, roots: tuple[Path, ...]) -> None:
    """A client of the API may open a local file only under ``server.api_file_roots``: it would
    otherwise read any file the service can (video or not), and the answers ("file not found" or
    not) would tell it which files exist. Links and ``..`` are resolved first. 403 otherwise,
    before the file is looked at."""
    path = Path(url[len("file://"):] if url.startswith("file://") else url)
    if roots and path.is_absolute():
        try:
            real = Path(os.path.realpath(path))
        except ValueError:  # an embedded NUL; no file has that name
            real = None
        if real is not None and any(real.is_relative_to(os.path.realpath(root)) for root in roots):
            return
    where = ", ".join(str(r) for r in roots) if roots else "none configured"
    raise HTTPException(
        403, f"files can be added through the API only under server.api_file_roots ({where}), by absolute path"
    )


def check_api_hosts(stream: StreamConfig, patterns: tuple[str, ...]) -> None:
    """A client of the API may have the service connect only to ``server.api_stream_hosts``
    (any host by default): the stream's URL, and the origins a WHEP stream may be redirected to.
    403 otherwise, before anything is contacted."""
    if "*" in patterns:
        return
    urls = [stream.url] if "://" in stream.url and stream.source_name not in ("file", "demo") else []
    redirects = stream.options.get("redirect_origins")
    if isinstance(redirects, (list, tuple)):
        urls += [u for u in redirects if isinstance(u, str)]
    for url in urls:
        host = url_host(url)
        if not host_allowed(host, patterns):
            raise HTTPException(
                403, f"streams added through the API may connect only to server.api_stream_hosts ({', '.join(patterns) or 'none'}); "
                f"not to {host or 'a URL without a host'}"
            )


def validation_errors(errors: Any) -> list[dict[str, Any]]:
    """Validation errors as a 422 shows them: where and why, never the offending value (it
    may be a credential, e.g. a URL with a password, or not serialisable)."""
    return [{k: v for k, v in err.items() if k in ("type", "loc", "msg")} for err in errors]


def status_json(status: StreamStatus) -> dict[str, Any]:
    def conv(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: conv(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tuple):
            return [conv(v) for v in value]
        if isinstance(value, enum.Enum):
            return value.value
        return value

    return conv(status)  # type: ignore[no-any-return]


def create_app(
    settings: Settings, manager: StreamManager, bus: EventBus, metrics: Metrics, evidence: EvidenceStore | None = None
) -> FastAPI:
    expected = settings.server.token

    def require_token(request: Request, access_token: str | None = Query(None, description="Token, if not sent as a bearer header.")) -> None:
        if not token_ok(expected, request.headers.get("authorization"), access_token):
            metrics.http_rejections.labels("unauthorized").inc()
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    public = [] if settings.server.public_metrics else [Depends(require_token)]
    # The thresholds a stream's track states follow: a client (the dashboard) explains a score
    # against the configured ones, not against the defaults.
    policy = {"suspicious_enter": settings.policy.suspicious_enter, "alert_enter": settings.policy.alert_enter}

    def stream_json(status: StreamStatus) -> dict[str, Any]:
        return {**status_json(status), "policy": dict(policy)}

    app = FastAPI(
        title="deepfake-monitor",
        version=__version__,
        description="Watches video streams for deepfaked faces; alerts over a websocket as CloudEvents.",
        # No Swagger UI or ReDoc: both load their code from a CDN (the browser would contact an
        # outside host) and were served without the token. /openapi.json stays.
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(
        BodyLimit, limit=settings.server.max_body_bytes, metrics=metrics, timeout=settings.server.request_timeout_s,
        cors_origins=settings.server.cors_origins,
    )
    if settings.server.is_loopback:
        # DNS rebinding: a page on evil.example resolving to 127.0.0.1 must not read the API.
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=loopback_hosts(settings.server.host))
    app.add_middleware(SecurityHeaders)
    app.add_middleware(KeepServerSend)  # added last: outermost
    allowed_origins = set(settings.server.cors_origins)
    app.state.settings = settings
    app.state.manager = manager
    app.state.bus = bus
    app.state.metrics = metrics
    app.state.require_token = require_token

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes each offending value (`input`): a query's token, say.
        return JSONResponse({"detail": validation_errors(exc.errors())}, status_code=422)

    @app.exception_handler(ConfigError)
    async def _config_error(request: Request, exc: ConfigError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(StreamNotFound)
    async def _not_found(request: Request, exc: StreamNotFound) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=404)

    @app.exception_handler(StreamExists)
    async def _exists(request: Request, exc: StreamExists) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=409)

    @app.exception_handler(ShuttingDown)
    async def _shutting_down(request: Request, exc: ShuttingDown) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(StreamStartFailed)
    async def _start_failed(request: Request, exc: StreamStartFailed) -> JSONResponse:
        # Its detector, face stage or source failed as it was built (memory, a plugin's error):
        # named, not a bare 500. Nothing of it is left running.
        return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": "5"})

    @app.get("/healthz", dependencies=public, tags=["ops"])
    async def healthz() -> dict[str, Any]:
        """Liveness: the process and its event loop answer. Counts streams by state (no ids:
        this route is public by default; ask /api/streams for details)."""
        states = Counter(p.source.status.state.value for p in manager.list())
        return {"status": "ok", "version": __version__, "streams": dict(states)}

    @app.get("/metrics", dependencies=public, tags=["ops"], response_class=Response)
    async def metrics_endpoint() -> Response:
        """Prometheus text exposition."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get(
        "/api/streams", dependencies=[Depends(require_token)], tags=["streams"],
        responses={200: {"headers": {
            LAST_EVENT_ID_HEADER: {"description": "Id of the newest event sent to live alert clients (absent before the first since start).", "schema": {"type": "integer"}},
            LAST_EVENT_EPOCH_HEADER: {"description": "The `logepoch` of that event.", "schema": {"type": "string"}},
        }}},
    )
    async def list_streams(response: Response) -> list[dict[str, Any]]:
        """Every watched stream with its state, rates, drops, latency and face tracks, and the
        `policy` thresholds its tracks' states follow (`suspicious_enter`, `alert_enter`). The
        headers name the newest event live alert clients were sent: a websocket client that
        polls this can tell that its connection died silently (it never got that event)."""
        if bus.last_offered is not None:
            response.headers[LAST_EVENT_ID_HEADER] = str(bus.last_offered[0])
            response.headers[LAST_EVENT_EPOCH_HEADER] = bus.last_offered[1]
        return [stream_json(p.status()) for p in manager.list()]

    @app.post("/api/streams", status_code=201, dependencies=[Depends(require_token)], tags=["streams"])
    async def add_stream(request: Request) -> dict[str, Any]:
        """Start watching a stream. Body: a StreamConfig (`id`, `url`, optional `analysis_fps`, `options`...)."""
        # JSON only: a cross-site form or a no-cors fetch (text/plain) cannot add a stream.
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            raise HTTPException(415, "Content-Type must be application/json")
        body = parse_json_body(await request.body())
        try:
            stream = StreamConfig.model_validate(body)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_context=False, include_input=False)
            raise HTTPException(422, validation_errors(errors)) from None
        check_api_hosts(stream, settings.server.api_stream_hosts)
        ca_file = stream.options.get("ca_file")
        if isinstance(ca_file, str):
            # rtsps:// reads it, and its check answers "no such file": the same rule as a stream's
            # file, or the API would tell which files exist anywhere.
            check_api_file(ca_file, settings.server.api_file_roots)
        if stream.source_name == "file":
            check_api_file(stream.url, settings.server.api_file_roots)
            # Under a root (so the answer tells nothing about other files): refused now, where a
            # configured stream would start and fail.
            path = stream.url.removeprefix("file://")
            if not Path(path).is_file():
                raise HTTPException(400, f"file not found: {path}")
        pipeline = await manager.add(stream)
        return stream_json(pipeline.status())

    @app.get("/api/streams/{stream_id}", dependencies=[Depends(require_token)], tags=["streams"])
    async def get_stream(stream_id: str) -> dict[str, Any]:
        """One stream, as in the list."""
        return stream_json(manager.get(stream_id).status())

    @app.delete("/api/streams/{stream_id}", status_code=204, dependencies=[Depends(require_token)], tags=["streams"])
    async def delete_stream(stream_id: str) -> Response:
        await manager.remove(stream_id)
        return Response(status_code=204)

    @app.get("/api/events", dependencies=[Depends(require_token)], tags=["alerts"])
    async def events(
        since: int = Query(0, ge=0, le=MAX_EVENT_ID, description="Return events with a larger id."),
        limit: int = Query(100, ge=1, le=1000, description="At most this many events."),
        last: int | None = Query(None, ge=1, le=1000, description="Instead of `since`: the newest N events."),
        epoch: str | None = Query(None, max_length=64, description="The `logepoch` of the event `since` names: 409 if the log is another one."),
    ) -> Response:
        """Events after id `since` (or the newest `last`), oldest first, as a JSON array of CloudEvents.
        409 (with the log's `last_id` and `epoch`) when `since` is past the newest id ever
        assigned, or `epoch` is not this log's: the event log was reset, so start again from 0."""
        if last is None and since > 0:
            last_id = await bus.last_id()  # not behind queued writes, as replays are not
            reason = log_mismatch(since, epoch or None, last_id, bus.log.epoch)  # `epoch=`: not given
            if reason:
                return JSONResponse({"error": reason, "last_id": last_id, "epoch": bus.log.epoch}, status_code=409)
        rows = await (bus.replay_last(last) if last is not None else bus.replay_since(since, limit))
        return Response("[" + ",".join(payload for _, payload in rows) + "]", media_type="application/json")

    @app.get("/api/alerts/{alert_id}/evidence", dependencies=[Depends(require_token)], tags=["alerts"])
    async def alert_evidence(alert_id: str) -> Response:
        """What the monitor saw when alert `alert_id` opened (`evidence` in its alert.opened
        event): stream, track, stream time, the alert's scores, signals and reasons, the frame's
        size and the face's box in it, and the files (`frame.jpg`, `face-<k>.jpg`, oldest crop
        first) served at `evidence/{file}`. 404 when none was saved (`alerts.evidence` off, a
        failed write, or pruned with the events)."""
        folder = evidence.folder(alert_id) if evidence is not None else None
        if folder is None:
            raise HTTPException(404, "no evidence saved for this alert")
        try:
            text = await asyncio.to_thread((folder / EVIDENCE_MANIFEST).read_text)
        except OSError:  # pruned meanwhile
            raise HTTPException(404, "no evidence saved for this alert") from None
        return Response(text, media_type="application/json")  # no-store, as every /api/ answer

    @app.get("/api/alerts/{alert_id}/evidence/{name}", dependencies=[Depends(require_token)], tags=["alerts"], response_class=Response)
    async def alert_evidence_file(alert_id: str, name: str) -> Response:
        """One image of an alert's evidence (JPEG): `frame.jpg` or `face-<k>.jpg`."""
        folder = evidence.folder(alert_id) if evidence is not None else None
        if folder is None or not EVIDENCE_FILE.fullmatch(name):
            raise HTTPException(404, "no such evidence file")
        try:
            data = await asyncio.to_thread((folder / name).read_bytes)
        except OSError:
            raise HTTPException(404, "no such evidence file") from None
        return Response(data, media_type="image/jpeg")  # faces: no-store, as every /api/ answer

    ws_clients = [0]  # connected alert websocket clients

    @app.websocket("/ws/alerts")
    async def ws_alerts(
        websocket: WebSocket, since: str | None = None, epoch: str | None = None, access_token: str | None = None
    ) -> None:
        """CloudEvents over a websocket. `?since=ID` replays every event after ID first; with
        `&epoch=` (the `logepoch` of event ID), a log replaced since is noticed (4409). The token
        comes as a bearer header, a `bearer.<base64url>` subprotocol (browsers) or, still
        accepted, `?access_token=`."""
        offered = websocket.scope.get("subprotocols") or []
        in_subprotocol = subprotocol_token(offered)
        # token_ok prefers a bearer header; then the subprotocol's token, then the query's.
        sent = in_subprotocol if in_subprotocol is not None else access_token
        if not token_ok(expected, websocket.headers.get("authorization"), sent):
            metrics.http_rejections.labels("unauthorized").inc()
            await websocket.close(code=WS_CLOSE_POLICY, reason="missing or wrong token")
            return
        if not origin_allowed(websocket.headers.get("origin"), websocket.headers.get("host"), allowed_origins):
            # Browsers always send Origin: another site's page must not read the alerts.
            metrics.http_rejections.labels("forbidden_origin").inc()
            await websocket.close(code=WS_CLOSE_POLICY, reason="origin not allowed")
            return
        if offered and WS_SUBPROTOCOL not in offered:
            await websocket.close(code=WS_CLOSE_POLICY, reason=f"subprotocol must be {WS_SUBPROTOCOL}")
            return
        # Never the bearer one: echoing it would put the token in the response headers.
        await websocket.accept(subprotocol=WS_SUBPROTOCOL if offered else None)
        # Parsed here, not by FastAPI: a `since` that is not an integer was refused before the
        # handshake, as a bare 403 that read like a wrong token.
        since_id = int(since) if since is not None and re.fullmatch(r"[+-]?\d{1,20}", since.strip()) else None
        if since is not None and (since_id is None or not 0 <= since_id <= MAX_EVENT_ID):
            # As /api/events bounds it: below -2^63 the log's query overflowed and the
            # connection dropped with no close code or reason.
            await websocket.close(WS_CLOSE_POLICY, f"since must be an event id from 0 to {MAX_EVENT_ID}")
            return
        if ws_clients[0] >= settings.server.max_ws_clients:
            # Each client holds a queue of up to alerts.queue_size events: bounded in number too.
            metrics.http_rejections.labels("too_many_clients").inc()
            await websocket.close(WS_CLOSE_TOO_SLOW, f"at most {settings.server.max_ws_clients} alert clients; retry later")
            return
        ws_clients[0] += 1
        try:
            await serve_subscriber(websocket, bus, metrics, since_id, epoch or None)  # `epoch=`: not given
        finally:
            ws_clients[0] -= 1

    # webrtc: WHIP ingest routes, then the dashboard's static files at / (after every API route,
    # so the mount never shadows them).
    whip, app.state.whip_sessions = whip_router(settings, manager, metrics)
    app.include_router(whip)
    app.mount("/", StaticFiles(directory=Path(__file__).parent / "static", html=True), name="dashboard")

    return app


def subprotocol_token(offered: list[str]) -> str | None:
    """The token in the first ``bearer.<base64url>`` subprotocol offered, None if there is none.
    Malformed base64 gives "", which no configured token matches: refused, not a crash."""
    for proto in offered:
        if proto.startswith(WS_BEARER_PREFIX):
            encoded = proto[len(WS_BEARER_PREFIX):]
            if not _BASE64URL.fullmatch(encoded):
                return ""
            try:
                return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
            except (binascii.Error, UnicodeDecodeError):
                return ""
    return None


class _Stalled(Exception):
    """A send to an alert websocket client waited past WS_SEND_TIMEOUT_S."""


# Scope key under which KeepServerSend leaves the server's own ``send`` of a websocket.
_SERVER_SEND = "deepfake_monitor.server_send"


# The dashboard loads only its own files; images come as blobs (evidence), media from the
# camera (getUserMedia), data over fetch and the alert websocket to this origin. No other site
# may frame it (a no-token loopback dashboard in a hostile frame is a clickjacking target).
# connect-src 'self' covers the same-origin websocket too (CSP Level 3: ws: for an http: page,
# wss: for https:); the bare schemes `ws: wss:` allowed a websocket to any host.
DASHBOARD_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "media-src 'self' blob: mediastream:; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class SecurityHeaders:
    """On every HTTP response: no MIME sniffing, no framing, no referrer beyond this origin,
    and the dashboard's content security policy; API answers are never cached (they describe
    streams, faces and alerts)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        api = scope.get("path", "").startswith(("/api/", "/whip/"))

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                extra = [
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"same-origin"),
                    (b"content-security-policy", DASHBOARD_CSP.encode()),
                ]
                if api:
                    extra.append((b"cache-control", b"no-store"))
                headers += [(name, value) for name, value in extra if name not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


class KeepServerSend:
    """Notes the ``send`` the server handed a websocket connection in its scope, before
    Starlette wraps it, so that abort_transport can find the connection's transport. Outermost
    of our middleware: Starlette's error middleware passes a websocket's ``send`` on as is."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            scope[_SERVER_SEND] = send
        await self.app(scope, receive, send)


def abort_transport(websocket: WebSocket) -> bool:
    """Drop the connection under ``websocket`` at once, unsent data and all; False if it cannot
    be reached. ASGI gives no handle on the socket: this relies on the server's ``send`` being
    its protocol's bound method (uvicorn's, unless a server-side wrapper such as its trace-level
    message logger replaces it), and checks that the protocol serves this very scope before
    touching its transport. Without the abort, the handler still returns (slot and
    subscription freed), but the stalled socket stays open until the client goes away."""
    protocol = getattr(websocket.scope.get(_SERVER_SEND), "__self__", None)
    transport = getattr(protocol, "transport", None)
    if getattr(protocol, "scope", None) is not websocket.scope or not isinstance(transport, asyncio.WriteTransport):
        return False
    try:
        transport.abort()
    except Exception:  # already closed, or a transport that cannot abort: the handler ends anyway
        logger.debug("could not abort a stalled websocket transport", exc_info=True)
        return False
    return True


def log_mismatch(since: int, epoch: str | None, last_id: int, log_epoch: str) -> str | None:
    """Why a client's ``since`` cannot be resumed from in this log, or None: it is past the
    log's last id, or it came with another log's epoch (the log was replaced and has grown
    past it since: without the epoch, that client skipped the new log's first events). A 409
    error, or a websocket close reason, which must stay under 123 bytes."""
    if since <= 0:
        return None  # from the start: any log will do
    if epoch is not None and epoch != log_epoch:
        # Echoed only as the hex an epoch is: 16 emoji made the close frame longer than the 125
        # bytes a control frame may have, the close failed, and `monitor alerts` retried for ever.
        shown = epoch[:16] if re.fullmatch(r"[0-9a-fA-F]{1,64}", epoch) else "given"
        return f"event log reset: epoch {shown} is not this log's ({log_epoch}); resume with since=0"[:123]
    if since > last_id:
        return f"event log reset: since={since} > last id {last_id}; resume with since=0"[:123]
    return None


async def serve_subscriber(
    websocket: WebSocket, bus: EventBus, metrics: Metrics, since: int | None, epoch: str | None = None
) -> None:
    """Replay from the log, then stream live events; evict (1013) a client that falls behind,
    drop one that stops reading (no send completes within WS_SEND_TIMEOUT_S), and close (4409)
    one resuming from an id this log never had, or from another log (``epoch``)."""
    sub = await bus.subscribe()
    served = False  # from here on the handler's own finally unsubscribes
    try:
        mismatch = None
        if since is not None:
            # Against the newest committed id too: the client may know an event from /api/events that
            # is committed but not offered yet (start_id), and was told its log had been reset.
            try:
                newest = sub.start_id if since <= sub.start_id else max(sub.start_id, await bus.last_id())
            except Exception:
                logger.warning("alert websocket: could not read the event log's last id", exc_info=True)
                await websocket.close(WS_CLOSE_INTERNAL, "event log unavailable; retry with the same since")
                return
            mismatch = log_mismatch(since, epoch, newest, bus.log.epoch)
        if mismatch:
            await websocket.close(WS_CLOSE_SINCE_AHEAD, mismatch)
            return
        served = True
    finally:
        # Every way out before serving (a close, an error, a cancellation at shutdown): a
        # subscription left behind filled up to queue_size events for good, one per retry.
        if not served:
            bus.unsubscribe(sub)
    metrics.ws_clients.inc()
    last_sent = sub.start_id if since is None else since

    async def pump() -> None:
        try:
            await stream_events()
        except _Stalled:
            metrics.ws_evictions.inc()
            logger.info(
                "alert websocket client %s stopped reading (a send waited %g s): evicted after event %d",
                websocket.client, WS_SEND_TIMEOUT_S, last_sent,
            )
            # A plain close waits for the unsent data to drain, i.e. for ever: drop it instead.
            abort_transport(websocket)

    async def send(payload: str) -> None:
        try:
            async with asyncio.timeout(WS_SEND_TIMEOUT_S):
                await websocket.send_text(payload)
        except TimeoutError:
            raise _Stalled() from None

    async def stream_events() -> None:
        nonlocal last_sent
        # Replay everything up to the moment we subscribed; the queue holds what came after.
        while last_sent < sub.start_id and not sub.log_replaced:
            try:
                rows = await bus.replay_since(last_sent, 500)
            except sqlite3.Error:
                # The damaged log was closed under this read: its replacement marks the client
                # (4409 below) within moments; any other failure is raised.
                await asyncio.wait_for(sub.overflowed.wait(), 5)
                if not sub.log_replaced:
                    raise
                break
            for event_id, payload in rows:
                if event_id > sub.start_id or sub.log_replaced:
                    break  # past the handoff; or the log was replaced: its ids are not the client's
                await send(payload)
                last_sent = event_id
            if not rows or rows[-1][0] > sub.start_id:
                # The log has nothing more up to start_id (the ids left below it were pruned);
                # the queue holds everything after it. Without this the loop re-reads forever.
                last_sent = sub.start_id
        while True:
            get = asyncio.ensure_future(sub.queue.get())
            evicted = asyncio.ensure_future(sub.overflowed.wait())
            try:
                done, _ = await asyncio.wait({get, evicted}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                # Cancelled (client gone) or one finished: never leave the other pending.
                for fut in (get, evicted):
                    if not fut.done():
                        fut.cancel()
            if get not in done:
                if sub.log_replaced:
                    code, reason = WS_CLOSE_SINCE_AHEAD, "event log reset: damaged and replaced; resume with since=0"
                else:
                    metrics.ws_evictions.inc()
                    code, reason = WS_CLOSE_TOO_SLOW, f"too slow; resume with ?since={last_sent}"
                try:
                    async with asyncio.timeout(WS_SEND_TIMEOUT_S):  # the close frame waits for room too
                        await websocket.close(code, reason)
                except TimeoutError:
                    abort_transport(websocket)
                return
            event_id, payload = get.result()
            if event_id > last_sent:
                await send(payload)
                last_sent = event_id

    async def drain_client() -> None:
        # Clients send nothing we need, but reading notices a disconnect promptly. receive(), not
        # receive_text(): a binary frame (some clients' and proxies' keep-alives) raised KeyError
        # there and the connection dropped with no close frame.
        while True:
            message = await websocket.receive()
            if message.get("type") == "websocket.disconnect":
                return

    tasks = [asyncio.ensure_future(pump()), asyncio.ensure_future(drain_client())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except (asyncio.CancelledError, WebSocketDisconnect, RuntimeError, MonitorError):
                pass
            except Exception:
                logger.debug("websocket task ended with an error", exc_info=True)
        bus.unsubscribe(sub)
        metrics.ws_clients.dec()

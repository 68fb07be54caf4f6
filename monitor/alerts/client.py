"""A resuming alert-websocket client: ``monitor alerts`` and anything that wants every event."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import TextIO
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidMessage, InvalidStatus

from monitor.config import bearer_token, redact_url
from monitor.errors import MonitorError

logger = logging.getLogger(__name__)

# The server's close code for a ``since`` past its log's last id (the log was reset).
CLOSE_SINCE_AHEAD = 4409
# Policy violation: the request itself is wrong (a ``since`` out of range, a subprotocol), so
# asking again the same way is refused again.
CLOSE_POLICY = 1008


def with_since(url: str, since: int | None, epoch: str | None = None) -> str:
    """``url`` resuming after ``since``; ``epoch`` (the ``logepoch`` of that event) lets the
    server say when its log is another one."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("since", "epoch")]
    if since is not None:
        query.append(("since", str(since)))
        if epoch:
            query.append(("epoch", epoch))
    return urlunsplit(parts._replace(query=urlencode(query)))


def take_token(url: str) -> tuple[str, str | None]:
    """``url`` without its ``access_token`` query parameter, and that token (None if absent).
    The client sends it as a header instead: servers and proxies log URLs."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    tokens = [v for k, v in query if k == "access_token"]
    if not tokens:
        return url, None
    kept = [(k, v) for k, v in query if k != "access_token"]
    return urlunsplit(parts._replace(query=urlencode(kept))), tokens[-1]


def last_event_url(ws_url: str) -> str:
    """``GET /api/events?last=1`` on the server behind ``ws_url``. Keeps what reaching it
    needs: TLS (wss -> https), a reverse proxy's path prefix (``/monitor/ws/alerts`` ->
    ``/monitor/api/events``) and query parameters such as ``access_token``."""
    parts = urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/")
    prefix = path[: -len("/ws/alerts")] if path.endswith("/ws/alerts") else ""
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("since", "last")] + [("last", "1")]
    return urlunsplit((scheme, parts.netloc, prefix + "/api/events", urlencode(query), ""))


async def current_last_id(ws_url: str, headers: dict[str, str] | None) -> tuple[int, str | None]:
    """The id of the newest event in the log (0 if empty) and its log's epoch, asked over HTTP
    on the same port."""
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(last_event_url(ws_url), headers=headers)
    response.raise_for_status()
    events = response.json()
    return (int(events[-1]["id"]), events[-1].get("logepoch")) if events else (0, None)


def check_target(url: str, token: str | None) -> None:
    """Refuse what no retry can fix with a clear error, before connecting: a URL that is not
    ws(s)://host[:port]/... (a port past 65535 raised OverflowError deep in the socket code)
    and a token that cannot be sent in a header (not printable ASCII)."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # "Invalid IPv6 URL": a traceback before
        raise MonitorError(f"--url {redact_url(url)!r}: {exc}") from None
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise MonitorError(f"--url {redact_url(url)!r} is not a ws:// or wss:// URL with a host")
    try:
        parts.port  # noqa: B018 - parsing it is the check
    except ValueError as exc:
        raise MonitorError(f"--url {redact_url(url)!r}: {exc}") from None
    try:
        bearer_token(token)
    except ValueError as exc:
        raise MonitorError(f"the token {exc}, as the service's server.token is") from None


# The largest event the client takes. websockets' default (1 MiB) closed the connection on a
# larger one, and every reconnect met the same event again: no later alert was ever printed.
MAX_EVENT_BYTES = 64 * 1024 * 1024


def transient_status(status: int) -> bool:
    """An HTTP status worth retrying: the server (or the reverse proxy in front of it, while
    the service restarts) is unavailable or busy for now. Anything else (401, 403, 404 ...)
    will not change by itself."""
    return status >= 500 or status in (408, 425, 429)


def _resume_hint(last: int | None, epoch: str | None = None) -> str:
    """How to resume: ``--since`` the last id written, with ``--epoch`` of its log, so that a log
    reset meanwhile is noticed (without it a new log's first ids would be taken as seen)."""
    if last is None:
        return ""
    return f"; resume with --since {last}" + (f" --epoch {epoch}" if epoch else "")


def _emit(out: TextIO, text: str, last: int | None, epoch: str | None = None) -> bool:
    """Write one event line; False once the reader of ``out`` has gone (EPIPE). Any other
    write error (disk full, I/O error) is fatal, not a disconnect: a reconnect cannot fix it,
    and printing on would leave a hole in the output."""
    try:
        out.write(text + "\n")
        out.flush()
    except BrokenPipeError:
        _discard_output(out)
        return False
    except OSError as exc:
        raise MonitorError(f"cannot write the alert output: {exc}{_resume_hint(last, epoch)}") from exc
    return True


def _discard_output(out: TextIO) -> None:
    """Point ``out``'s file descriptor at /dev/null. The line that failed stays in its buffer,
    and Python flushes stdout at exit: without this, a second EPIPE there printed "Exception
    ignored ... BrokenPipeError" and exit code 120 (the recipe in Python's signal docs)."""
    try:
        fd = out.fileno()
    except (OSError, ValueError):  # io.UnsupportedOperation is both: not a file, nothing to flush
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


async def tail(
    url: str, *, since: int | None = None, token: str | None = None, follow: bool = True, out: TextIO,
    epoch: str | None = None,
) -> None:
    """Print each CloudEvent as one JSON line; on disconnect, resume after the last id written.
    If the server's log was reset (it closes with 4409: ``since`` is past its last id), warn
    and start again from the beginning of the new log: every event in it is new to us.
    Returns when ``out``'s reader has gone (EPIPE); raises MonitorError when ``out`` cannot be
    written otherwise, or when the server refuses for good (401, 404 ...). A refusal that
    passes (5xx, 408, 429: a proxy while the service restarts) and a connection closed before
    the handshake are retried with backoff, like a disconnect. Every error names the id to
    resume from."""
    check_target(url, token)  # first: it turns a URL nothing can parse into a clear error
    url, url_token = take_token(url)
    token = token or url_token
    check_target(url, token)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    last = since
    epoch = epoch if since is not None else None  # the logepoch of event ``last``
    delay = 0.5
    while True:
        try:
            if last is None:
                # Start "from now" with a known id, so a reconnect before the first event
                # still resumes from the log instead of silently skipping what happened.
                last, epoch = await current_last_id(url, headers)
            async with websockets.connect(
                with_since(url, last, epoch), subprotocols=["cloudevents.json"], additional_headers=headers,  # type: ignore[list-item]
                max_size=MAX_EVENT_BYTES,
            ) as ws:
                try:
                    async for message in ws:
                        # The backoff resets once the server has sent something, not on the
                        # handshake: a connection closed at once (1013, too many clients) backs off.
                        delay = 0.5
                        text = message if isinstance(message, str) else message.decode()
                        event = json.loads(text)
                        if not _emit(out, text, last, epoch):
                            ws.transport.abort()  # as below
                            return  # whoever reads our output is gone (`monitor alerts | head -1`)
                        # Only now: a resume after a disconnect must not skip an event not written.
                        last, epoch = int(event["id"]), event.get("logepoch") or epoch
                except MonitorError:
                    # Our output failed: leave at once. A graceful close waits for the server's
                    # answer, which a server in the middle of a replay gave only after the 10 s
                    # close timeout.
                    ws.transport.abort()
                    raise
        except ConnectionClosed as exc:
            if exc.rcvd is not None and exc.rcvd.code == CLOSE_SINCE_AHEAD:
                logger.warning(
                    "alert websocket refused since=%s (%s): restarting from the start of the log", last, exc.rcvd.reason
                )
                last, epoch = 0, None
                continue
            if exc.rcvd is not None and exc.rcvd.code == CLOSE_POLICY:
                # Retried for ever before (`--since -1`), a warning each time.
                raise MonitorError(f"alert websocket refused the request: {exc.rcvd.reason or 'policy violation'}") from exc
            if not follow:
                raise MonitorError(f"alert websocket closed: {exc}{_resume_hint(last, epoch)}") from exc
            logger.warning("alert websocket: %s; reconnecting in %.1fs", exc, delay)
        except (InvalidStatus, httpx.HTTPStatusError) as exc:
            what = "alert websocket" if isinstance(exc, InvalidStatus) else "alert API"
            status = exc.response.status_code
            if not follow or not transient_status(status):
                raise MonitorError(f"{what} refused: HTTP {status}{_resume_hint(last, epoch)}") from exc
            logger.warning("%s: HTTP %s; reconnecting in %.1fs", what, status, delay)
        except (OSError, httpx.TransportError, InvalidMessage) as exc:
            # InvalidMessage: the connection closed before a handshake response, as a port
            # that accepts while the service behind it is still starting does.
            if not follow:
                raise MonitorError(f"alert websocket closed: {exc}{_resume_hint(last, epoch)}") from exc
            logger.warning("alert websocket: %s; reconnecting in %.1fs", exc, delay)
        except InvalidHandshake as exc:  # a bad upgrade response, subprotocol or header: not transient
            raise MonitorError(f"alert websocket handshake failed: {exc}{_resume_hint(last, epoch)}") from exc
        if not follow:
            # Closed normally (1000 or 1001, as a proxy going away may; the service itself says
            # 1012 when it stops, an error above): not an error, but where to resume is said too.
            logger.warning("alert websocket closed by the server%s", _resume_hint(last, epoch))
            return
        await asyncio.sleep(delay)
        delay = min(delay * 2, 10.0)

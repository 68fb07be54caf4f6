"""A resuming alert-websocket client: ``monitor alerts`` and anything that wants every event."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TextIO
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from monitor.errors import MonitorError

logger = logging.getLogger(__name__)


def with_since(url: str, since: int | None) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "since"]
    if since is not None:
        query.append(("since", str(since)))
    return urlunsplit(parts._replace(query=urlencode(query)))


async def tail(
    url: str, *, since: int | None = None, token: str | None = None, follow: bool = True, out: TextIO
) -> None:
    """Print each CloudEvent as one JSON line; on disconnect, resume after the last id seen."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    last = since
    delay = 0.5
    while True:
        try:
            async with websockets.connect(
                with_since(url, last), subprotocols=["cloudevents.json"], additional_headers=headers  # type: ignore[list-item]
            ) as ws:
                delay = 0.5
                async for message in ws:
                    text = message if isinstance(message, str) else message.decode()
                    event = json.loads(text)
                    last = int(event["id"])
                    out.write(text + "\n")
                    out.flush()
        except InvalidStatus as exc:
            raise MonitorError(f"alert websocket refused: HTTP {exc.response.status_code}") from exc
        except (OSError, ConnectionClosed) as exc:
            if not follow:
                raise MonitorError(f"alert websocket closed: {exc}") from exc
            logger.warning("alert websocket: %s; reconnecting in %.1fs", exc, delay)
        if not follow:
            return
        await asyncio.sleep(delay)
        delay = min(delay * 2, 10.0)

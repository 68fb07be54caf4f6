"""Webhook alert sink: POST each CloudEvent, HMAC-SHA256 signed; the monitor retries failures."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from typing import ClassVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, HttpUrl

SIGNATURE_HEADER = "X-Monitor-Signature"
TIMESTAMP_HEADER = "X-Monitor-Timestamp"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={mac}"


def verify(secret: str, timestamp: str, body: bytes, signature: str, *, now: float | None = None, tolerance_s: float = 300) -> bool:
    """Check a signature as a receiver would: constant-time compare and a fresh timestamp."""
    try:
        age = abs((now if now is not None else time.time()) - float(timestamp))
    except ValueError:
        return False
    return age <= tolerance_s and hmac.compare_digest(sign(secret, timestamp, body), signature)


class DeliveryError(Exception):
    """The receiver did not accept the event; the monitor retries it."""


class WebhookSink:
    name: ClassVar[str] = "webhook"

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        url: HttpUrl = Field(description="Where to POST events.")
        secret: str | None = Field(None, min_length=16, description="Shared secret for HMAC-SHA256 signatures.")
        timeout_s: float = Field(5.0, gt=0, le=60, description="Per-request timeout.")
        headers: dict[str, str] = Field(default_factory=dict, description="Extra headers, e.g. an Authorization for the receiver.")

    def __init__(self, config: Config, clock: Callable[[], float] = time.time, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self._clock = clock
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=self.config.timeout_s, transport=self._transport, follow_redirects=False)

    async def send(self, event_id: int, cloudevent_json: str) -> None:
        assert self._client is not None, "start() first"
        body = cloudevent_json.encode()
        headers = {"Content-Type": "application/cloudevents+json", **self.config.headers}
        if self.config.secret:
            ts = str(int(self._clock()))
            headers[TIMESTAMP_HEADER] = ts
            headers[SIGNATURE_HEADER] = sign(self.config.secret, ts, body)
        try:
            response = await self._client.post(str(self.config.url), content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise DeliveryError(f"event {event_id}: {exc}") from exc
        if not response.is_success:
            raise DeliveryError(f"event {event_id}: HTTP {response.status_code}")

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

"""Webhook alert sink: POST each CloudEvent, HMAC-SHA256 signed; the monitor retries failures.

A 2xx is a delivery. 400, 413, 415 and 422 say the receiver refuses this particular event, so
they raise ``RejectedEvent`` (retried a few times, then skipped and logged by the monitor).
Everything else raises ``DeliveryError`` and is retried until delivered: auth (401, 403, 407),
a wrong URL (404, 405), redirects (not followed: a config error), 408, 409, 429, 5xx, network
errors and timeouts all apply to every event, and skipping on them would skip every alert.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import email.utils
import hashlib
import hmac
import logging
import re
import ssl
import time
from collections.abc import Callable
from typing import ClassVar
from urllib.parse import unquote, urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, FilePath, HttpUrl, field_validator

from monitor.config import is_loopback_host
from monitor.errors import RejectedEvent

SIGNATURE_HEADER = "X-Monitor-Signature"
TIMESTAMP_HEADER = "X-Monitor-Timestamp"
# Refusals of the payload itself; any other status could apply to every event.
REJECTED_STATUSES = frozenset({400, 413, 415, 422})
# Headers the sink sets itself: a user's copy would be sent as well (names compare without case).
RESERVED_HEADERS = frozenset({"content-type", "content-length", "host", "transfer-encoding", "accept-encoding",
                              SIGNATURE_HEADER.lower(), TIMESTAMP_HEADER.lower()})
# The most of a refusal's body read, for the log; the rest, and every accepted answer's body,
# is never read: reading (and unpacking) whole bodies let one reply of 1,830 gzip-bombed bytes
# take the service to 2 GiB.
EXCERPT_BYTES = 4096
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 field name
_VALUE = re.compile(r"[\x20-\x7e]*")  # visible ASCII and spaces: no CR, LF or other controls

logger = logging.getLogger(__name__)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={mac}"


def verify(secret: str, timestamp: str, body: bytes, signature: str, *, now: float | None = None, tolerance_s: float = 300) -> bool:
    """Check a signature as a receiver would: constant-time compare and a fresh timestamp."""
    try:
        age = abs((now if now is not None else time.time()) - float(timestamp))
    except ValueError:
        return False
    if not signature.isascii():  # compare_digest raises on non-ASCII text: a 500 for the receiver
        return False
    return age <= tolerance_s and hmac.compare_digest(sign(secret, timestamp, body), signature)


class DeliveryError(Exception):
    """The receiver did not accept the event; the monitor retries it, not before
    ``retry_after_s`` when the receiver said when (429, 503 with Retry-After)."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or an HTTP date), None if unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²".isdigit() is true too, and float() refused it
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(when.timestamp() - now, 0.0)


class WebhookSink:
    name: ClassVar[str] = "webhook"

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
        url: HttpUrl = Field(description="Where to POST events.")
        secret: str | None = Field(None, min_length=16, description="Shared secret for HMAC-SHA256 signatures.")
        timeout_s: float = Field(
            5.0, gt=0, le=60,
            description="Total time allowed for one delivery (connect, send, whole response), in seconds.",
        )
        headers: dict[str, str] = Field(default_factory=dict, description="Extra headers, e.g. an Authorization for the receiver.")
        ca_file: FilePath | None = Field(
            None, description="A PEM file of the CA (or self-signed certificate) an https receiver's certificate must chain to, instead of the public CAs (an internal CA)."
        )

        @field_validator("headers")
        @classmethod
        def _headers(cls, headers: dict[str, str]) -> dict[str, str]:
            # Checked now, not at the first delivery: h11 refused a value with a newline (a
            # token read from a file) on every retry for ever, quoting it in the log.
            for name, value in headers.items():
                if not _TOKEN.fullmatch(name):
                    raise ValueError(f"header name {name!r} is not a valid HTTP field name")
                if name.lower() in RESERVED_HEADERS:
                    raise ValueError(f"header {name!r} is set by the sink itself")
                if not _VALUE.fullmatch(value):
                    # Never the value: it is often a credential.
                    raise ValueError(f"header {name!r}: its value must be printable ASCII, without line breaks")
            return headers

    def __init__(self, config: Config, clock: Callable[[], float] = time.time, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self._clock = clock
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        verify: ssl.SSLContext | bool = True
        if self.config.ca_file is not None:
            verify = ssl.create_default_context(cafile=str(self.config.ca_file))
        # trust_env=False: no proxy from HTTP(S)_PROXY/ALL_PROXY (it would get the events and the
        # headers, and a socks5 one failed the start), no .netrc; only the URL configured is contacted.
        self._client = httpx.AsyncClient(
            timeout=self.config.timeout_s, transport=self._transport, follow_redirects=False, trust_env=False, verify=verify
        )
        url = self.config.url
        if url.scheme == "http" and not is_loopback_host(url.host or ""):
            logger.warning(
                "webhook %s is plain http to another host: events%s travel unencrypted; use https",
                url.host, " and the headers (an Authorization?)" if self.config.headers else "",
            )

    async def send(self, event_id: int, cloudevent_json: str) -> None:
        assert self._client is not None, "start() first"
        body = cloudevent_json.encode()
        headers = {"Content-Type": "application/cloudevents+json", "Accept-Encoding": "identity", **self.config.headers}
        if self.config.secret:
            ts = str(int(self._clock()))
            headers[TIMESTAMP_HEADER] = ts
            headers[SIGNATURE_HEADER] = sign(self.config.secret, ts, body)
        request = self._client.build_request("POST", str(self.config.url), content=body, headers=headers)
        excerpt = ""
        try:
            # httpx's timeout bounds each read, not the whole exchange: a receiver trickling
            # bytes could hold a delivery (and every later alert) open for ever without this.
            async with asyncio.timeout(self.config.timeout_s):
                response = await self._client.send(request, stream=True)  # the status decides
                try:
                    if response.status_code in REJECTED_STATUSES:
                        excerpt = await _excerpt(response, scrub=self._scrubbed, margin=max(map(len, self._secrets_sent()), default=0))
                finally:
                    await response.aclose()  # an unread body: the connection is not reused
        except TimeoutError as exc:
            raise DeliveryError(f"event {event_id}: no complete response within {self.config.timeout_s:g}s") from exc
        except httpx.HTTPError as exc:
            # The class only for a protocol error: h11's message quotes the header it refused.
            shown = type(exc).__name__ if isinstance(exc, httpx.ProtocolError) else repr(exc)
            raise DeliveryError(f"event {event_id}: {shown}") from exc
        if response.is_success:
            return  # delivered, whatever its body (or a broken one) says
        if response.status_code in REJECTED_STATUSES:
            raise RejectedEvent(f"event {event_id}: HTTP {response.status_code} {excerpt}")
        if response.is_redirect:
            raise DeliveryError(
                f"event {event_id}: HTTP {response.status_code} redirect not followed; "
                "set the sink's url to the final address"
            )
        asked = retry_after(response.headers.get("retry-after"), self._clock()) if response.status_code in (429, 503) else None
        raise DeliveryError(f"event {event_id}: HTTP {response.status_code}", retry_after_s=asked)

    def _secrets_sent(self) -> list[str]:
        """What a request carries that the log must not: header values, the HMAC secret, the
        URL's password (and the Basic header httpx makes of it) and its path (where Slack and
        Discord webhooks keep their token), each also as JSON escapes a "/" in it."""
        url = urlsplit(str(self.config.url))
        password = unquote(url.password or "")
        basic = base64.b64encode(f"{unquote(url.username or '')}:{password}".encode()).decode() if url.username else ""
        sent = [*self.config.headers.values(), self.config.secret or "", password, basic, url.path if len(url.path) > 1 else ""]
        values = {form for v in sent if len(v) >= 4 for form in (v, v.replace("/", "\\/"))}
        return sorted(values, key=len, reverse=True)

    def _scrubbed(self, text: str) -> str:
        """``text`` (what the receiver answered) without anything secret we sent it: receivers and
        gateways that echo the request's headers in an error put the configured Authorization
        token in the service's log."""
        for value in self._secrets_sent():
            text = text.replace(value, "***")
        return text

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()


async def _excerpt(response: httpx.Response, limit: int = 200, scrub: Callable[[str], str] = str, margin: int = 0) -> str:
    """The start of the receiver's reason, for the log: at most EXCERPT_BYTES read, as sent
    (a compressed one is not unpacked), passed through ``scrub`` before it is cut or quoted.
    Where the read stopped short of the body's end, its last ``margin`` characters go too: a
    secret cut in two there would not be recognised."""
    if response.headers.get("content-encoding", "identity").strip().lower() not in ("", "identity"):
        return "(a compressed body, not shown)"
    data = b""
    try:
        async for chunk in response.aiter_raw():
            data += chunk
            if len(data) >= EXCERPT_BYTES:
                break
    except httpx.StreamConsumed:  # a transport that read it already (httpx.MockTransport)
        data = response.content[:EXCERPT_BYTES]
    decoded = scrub(data[:EXCERPT_BYTES].decode("utf-8", "replace"))
    if len(data) >= EXCERPT_BYTES and margin:
        decoded = decoded[:-margin]
    text = " ".join(decoded.split())
    return repr(text[:limit] + ("..." if len(text) > limit else ""))

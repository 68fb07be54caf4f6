"""Redis Streams alert sink: append each CloudEvent to a stream, once, in id order.

Security teams already run Redis; a stream is a durable, replayable log that any number of
consumers (a SIEM forwarder, a dashboard, other monitor instances' operators) read with
``XREAD`` or consumer groups (``XREADGROUP``), each at its own pace.

Exactly once per event: a Lua script appends the entry and records the event's id for its
event log (the ``source`` up to ``/streams/``) in one atomic step, and appends nothing for an id it has
already recorded. So a delivery retried after a timeout whose first attempt did land, or a
monitor restarted before it saved its cursor, adds no duplicate. Every failure (Redis down, a
timeout, authentication, a key of the wrong type) raises ``DeliveryError`` and the monitor
retries from its cursor until delivered: none of them is about one event in particular.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field, field_validator
from redis.exceptions import RedisError

from monitor.config import is_loopback_host
from monitor.sources.base import redact_text

logger = logging.getLogger(__name__)

# KEYS: the stream, the hash of the last event id appended per source.
# ARGV: source, event id, maxlen (0: no cap), then the entry's field/value pairs.
APPEND_ONCE = """
local last = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if tonumber(ARGV[2]) <= last then
  return false
end
local cmd = {'XADD', KEYS[1]}
if tonumber(ARGV[3]) > 0 then
  table.insert(cmd, 'MAXLEN')
  table.insert(cmd, '~')
  table.insert(cmd, ARGV[3])
end
table.insert(cmd, '*')
for i = 4, #ARGV do
  table.insert(cmd, ARGV[i])
end
local id = redis.call(unpack(cmd))
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return id
"""

# CloudEvent attributes copied into the entry's own fields, so consumers can filter without
# parsing JSON; ``event`` holds the whole CloudEvent.
ENTRY_FIELDS = ("id", "source", "type", "subject", "time")


# The query options a URL may set: redis-py's, less those that weaken TLS (ssl_cert_reqs,
# ssl_check_hostname, ssl_exclude_verify_flags...). ssl_ca_certs names a CA file to trust.
URL_OPTIONS = frozenset({
    "db", "socket_timeout", "socket_connect_timeout", "socket_keepalive", "health_check_interval",
    "client_name", "protocol", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile",
})


def _option_problem(scheme: str, path: str, pairs: list[tuple[str, str]]) -> str | None:
    """What redis-py would take from the URL and then fail every delivery with, or silently
    read otherwise (values are not quoted: the query may hold a file path, not a secret, but
    the URL may): a db that is not a number (redis-py used db 0 for `/1O`), a timeout of 0
    or less, a negative health-check interval, a client name Redis refuses, a TLS file that
    is not there."""
    if scheme != "unix" and path not in ("", "/") and not re.fullmatch(r"/\d+", path):
        return "the database (the path after the host) must be a number, e.g. redis://host:6379/0"
    for key, value in pairs:
        if key == "db" and not value.isdigit():
            return "db must be a number"
        if key in ("socket_timeout", "socket_connect_timeout"):
            try:
                ok = float(value) > 0 and math.isfinite(float(value))
            except ValueError:
                ok = False
            if not ok:
                return f"{key} must be a number of seconds above 0 (timeout_s already bounds each delivery)"
        if key == "health_check_interval" and not value.isdigit():
            return "health_check_interval must be a whole number of seconds, 0 or more"
        if key == "client_name" and not re.fullmatch(r"[!-~]+", value):
            return "client_name may hold only printable ASCII characters, no spaces (Redis refuses others)"
        if key in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile") and not os.path.isfile(value):
            return f"{key} names no file"
    return None


_ENTRY_ID = re.compile(r"\d+-\d+")  # what XADD answers: <milliseconds>-<sequence>


def log_of(source: str) -> str:
    """The event log a CloudEvent ``source`` names (``/<instance>/logs/<epoch>``): ids increase
    across all its streams, so one mark per log is enough. Keyed by the whole source (one per
    stream), the hash gained a field for every stream id ever seen and never lost one."""
    return source.rsplit("/streams/", 1)[0]  # rsplit: an instance may be named "streams"


class DeliveryError(Exception):
    """The event is not in the stream yet; the monitor retries it."""


class RedisStreamSink:
    name: ClassVar[str] = "redis"

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
        url: str = Field(
            description="redis://[user:password@]host[:port][/db], rediss:// for TLS, or unix:///path/redis.sock?db=N."
        )
        stream: str = Field("deepfake-monitor:events", min_length=1, max_length=512, description="The stream key events are appended to.")
        maxlen: int = Field(
            100_000, ge=0, le=2**63 - 1,  # Redis's integers: a larger one failed every XADD
            description="Keep about this many newest entries (XADD MAXLEN ~; 0 keeps every entry). The monitor's own log keeps its history anyway.",
        )
        timeout_s: float = Field(5.0, gt=0, le=60, description="Total time allowed for one delivery, connecting included, in seconds.")

        @field_validator("url")
        @classmethod
        def _url(cls, url: str) -> str:
            try:
                parts = urlsplit(url)
                parts.port  # noqa: B018 (raises on a bad port)
            except ValueError:
                # Not Python's message: it quotes the "port", which is part of the password when
                # the password holds a raw / ? or # (rediss://user:q8/Zk3@host showed 'q8').
                raise ValueError(
                    "not a Redis URL: its port is not a number (a /, ? or # in the password must be percent-encoded)"
                ) from None
            if parts.scheme not in ("redis", "rediss", "unix"):
                raise ValueError("not a Redis URL: use redis://host:port, rediss://host:port (TLS) or unix:///path/redis.sock")
            if parts.scheme != "unix" and not parts.hostname:
                raise ValueError("not a Redis URL: it names no host")
            pairs = parse_qsl(parts.query, keep_blank_values=True)
            query = {k for k, _ in pairs}
            refused = sorted(query - URL_OPTIONS)
            if refused:
                # ssl_cert_reqs=none or ssl_check_hostname=false silently turned the server's
                # certificate check off; an unknown option failed every delivery.
                raise ValueError(
                    f"not a Redis URL: option {', '.join(refused)} is not accepted (the server's certificate is always "
                    f"checked); the URL may set {', '.join(sorted(URL_OPTIONS))}"
                )
            problem = _option_problem(parts.scheme, parts.path, pairs)
            if problem:
                raise ValueError(f"not a Redis URL: {problem}")
            try:
                # Building a connection (without connecting) checks the query's options as redis-py
                # reads them: ?foo=bar loaded, then failed every delivery with a TypeError.
                aioredis.ConnectionPool.from_url(url).make_connection()
            except (TypeError, ValueError) as exc:
                raise ValueError(f"not a Redis URL: an option in its query is not one redis-py takes ({type(exc).__name__})") from None
            return url

        @property
        def delivered_key(self) -> str:
            """The hash of the last event id appended per source, beside the stream."""
            return f"{self.stream}:delivered"

    def __init__(self, config: Config) -> None:
        self.config = config
        self._client: aioredis.Redis | None = None
        self._append: Any = None

    async def start(self) -> None:
        # No round trip here: a Redis that is down at start-up must not keep the service (and
        # its other sinks and streams) from starting. Deliveries retry until it is up.
        c = self.config
        self._client = aioredis.Redis.from_url(c.url, socket_timeout=c.timeout_s, socket_connect_timeout=c.timeout_s)
        self._append = self._client.register_script(APPEND_ONCE)
        parts = urlsplit(c.url)
        if parts.scheme == "redis" and not is_loopback_host(parts.hostname or ""):
            logger.warning("redis sink: plain redis:// to %s: events (and the password, if any) travel unencrypted; use rediss://", parts.hostname)

    async def send(self, event_id: int, cloudevent_json: str) -> None:
        assert self._append is not None, "start() first"
        event = json.loads(cloudevent_json)
        fields: list[str] = []
        for name in ENTRY_FIELDS:
            if event.get(name) is not None:
                fields += [name, str(event[name])]
        fields += ["event", cloudevent_json]
        c = self.config
        try:
            async with asyncio.timeout(c.timeout_s):
                added = await self._append(keys=[c.stream, c.delivered_key], args=[log_of(str(event["source"])), event_id, c.maxlen, *fields])
        except TimeoutError as exc:
            raise DeliveryError(f"event {event_id}: Redis did not answer within {c.timeout_s:g}s") from exc
        except (RedisError, OSError) as exc:
            # WRONGTYPE (the key holds something else), NOAUTH, a refused connection: every
            # event would fail alike, so it is retried, never skipped.
            raise DeliveryError(f"event {event_id}: {type(exc).__name__}: {redact_text(str(exc), c.url)}") from exc
        except Exception as exc:  # redis-py tripping over an answer no Redis gives (AttributeError...)
            raise DeliveryError(f"event {event_id}: not a Redis server? its answer broke the client ({type(exc).__name__})") from exc
        if added is not None and not _ENTRY_ID.fullmatch(added.decode("ascii", "replace") if isinstance(added, bytes) else str(added)):
            # Any other answer is not Redis appending: a peer that echoes (a misrouted port) made
            # every event count as delivered, and the cursor moved past events Redis never had.
            raise DeliveryError(f"event {event_id}: not a Redis server? the append answered {type(added).__name__}, not a stream entry id")
        if added is None:
            # Not appended: the stream already has this id of this log. Right after a retry whose
            # first attempt landed; otherwise the log's ids went back under the same epoch (a
            # whole data_dir restored from a snapshot, mark and all) and this is a new event lost.
            logger.warning(
                "redis sink: event %d of %s is already recorded in %s, so it was not appended again (a retry "
                "whose first attempt landed; another sink of this service writing to the same stream, which appends "
                "each event once for both; or a data_dir restored with its mark: then a new event is skipped)",
                event_id, event["source"], c.delivered_key,
            )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()


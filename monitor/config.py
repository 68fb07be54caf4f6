"""All configuration in one place: strict pydantic models, a YAML file and MONITOR_* env vars.

Every knob has a description, so ``monitor config schema`` documents them all. Unknown keys
are errors (``extra="forbid"``), at every level.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import types
import typing
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from monitor.errors import ConfigError

# Use only through ``is_stream_id`` (``fullmatch``): ``match`` with a ``$`` anchor accepts a
# trailing newline, which then reaches Location headers, logs and metric labels.
STREAM_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
STREAM_ID_RULE = "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
DEMO_URL = "demo://astronaut"
# The logging level names that both the logging module and uvicorn accept.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# The configuration file's contents, parsed once by load_settings (a second read of a pipe,
# `-c <(sops -d ...)`, found it empty and silently ran on the defaults).
_yaml_data: ContextVar[dict[str, Any] | None] = ContextVar("monitor_yaml_data", default=None)


def is_stream_id(value: str) -> bool:
    """Whether ``value`` is a valid stream id, all of it (no trailing newline)."""
    return STREAM_ID_RE.fullmatch(value) is not None


def bearer_token(token: str | None) -> str | None:
    """``token`` if it can travel as "Authorization: Bearer <token>"; ValueError otherwise
    (never echoing it: it is a secret). A space, a newline (a YAML block, a file read with its
    line end) or a character outside printable ASCII fails in the header (clients refuse it;
    servers read headers as latin-1 and compare UTF-8), and could at best match in a URL's
    ?access_token=, which proxies log."""
    if token is not None and not re.fullmatch(r"[\x21-\x7e]+", token):
        raise ValueError("must be printable ASCII without spaces or line breaks (e.g. `openssl rand -hex 32`)")
    return token


def is_number_type(annotation: Any) -> bool:
    """Whether a field holds a number: int or float, optionally in a union with None, or
    ``Annotated`` around one (not a list, tuple or dict of numbers)."""
    annotation = unwrap_annotated(annotation)
    if annotation in (int, float):
        return True
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return False
    args = [unwrap_annotated(a) for a in typing.get_args(annotation)]
    return all(a in (int, float, type(None)) for a in args) and any(a in (int, float) for a in args)


def unwrap_annotated(annotation: Any) -> Any:
    """``Annotated[T, ...]`` -> ``T``; anything else as it is."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


class Strict(BaseModel):
    # allow_inf_nan=False: `.inf` (or 1e400 from an environment variable) passed every bound and
    # silently switched things off (min_alert_s: no alert ever; min_face_px: every face too small).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic reads `fps: true` as 1 and `max_faces: false` as 0; YAML's yes/no/on/off are
        # booleans too, so a slip there would silently become a number.
        if isinstance(value, bool) and info.field_name is not None and is_number_type(cls.model_fields[info.field_name].annotation):
            raise ValueError(f"must be a number, not the boolean {str(value).lower()}")
        return value


def normalise_origin(origin: str) -> str:
    """``scheme://host[:port]`` as a browser's ``Origin`` header spells it: lower case, no
    default port, no trailing slash; ValueError (naming the origin without its password) for
    anything else: another scheme, a path, a query, ``*``, credentials."""
    try:
        url = urlsplit(origin.strip())
        port = url.port
    except ValueError as exc:
        raise ValueError(f"{redact_url(origin)!r} is not an origin: {exc}") from None
    scheme = url.scheme.lower()
    if scheme not in ("http", "https") or not url.hostname or url.path not in ("", "/") or url.query or url.fragment or url.username:
        raise ValueError(f"{redact_url(origin)!r} is not an origin: give scheme://host[:port] (http or https), nothing after it; '*' is not supported")
    host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
    return f"{scheme}://{host.lower()}" + (f":{port}" if port not in (None, {"http": 80, "https": 443}[scheme]) else "")


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a name, an address, or an IPv6 address in brackets) is this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


_HOST_NAME = re.compile(r"(?=.{1,253}$)[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*")


def normalise_host_pattern(pattern: str) -> str:
    """One entry of ``server.api_stream_hosts``: ``*``, an IP network (an address is a network of
    one), or a host name, lower-case without a final dot; anything else is refused at load."""
    text = pattern.strip().lower()
    if text == "*":
        return text
    try:
        return str(ipaddress.ip_network(text.removeprefix("[").removesuffix("]"), strict=False))
    except ValueError:
        pass
    name = text.removesuffix(".")
    if not _HOST_NAME.fullmatch(name):
        raise ValueError(f"{pattern!r} is not a host name, an IP address or a network (10.0.5.0/24), nor *")
    return name


def host_allowed(host: str | None, patterns: tuple[str, ...]) -> bool:
    """Whether a URL's host (as ``urlsplit(...).hostname`` gives it) matches one of the normalised
    ``patterns``. Names are not resolved: ``127.1`` or ``2130706433`` match no listed address."""
    if "*" in patterns:
        return True
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])  # an IPv6 zone is not part of the address
    except ValueError:
        return host.lower().removesuffix(".") in patterns
    for pattern in patterns:
        try:
            if address in ipaddress.ip_network(pattern):
                return True
        except ValueError:  # a name
            continue
    return False


class ServerConfig(Strict):
    host: str = Field("127.0.0.1", description="Address to bind. Loopback by default; any other address requires `token`.")
    port: int = Field(8080, ge=0, le=65535, description="HTTP port for the API, websockets, metrics and dashboard (0 picks a free port).")
    token: str | None = Field(None, min_length=16, description="Bearer token required for the API, WHIP ingest and alerts. Required when `host` is not loopback.")
    public_metrics: bool = Field(True, description="Serve /metrics and /healthz without the token (for Prometheus scrapers on a trusted network). The metrics name every stream id and show its face count and alerts.")
    max_body_bytes: int = Field(64 * 1024, ge=1024, description="Largest request body accepted, in bytes; larger requests get 413.")
    request_timeout_s: float = Field(10.0, gt=0, le=300, description="Time a client has to send a request's head (from connecting, or from the first byte of a later request on a kept-alive connection) and, separately, its body. A head still unfinished is dropped with the connection; a body still unfinished gets 408. Stops slow clients from holding connections open for ever.")
    cors_origins: tuple[str, ...] = Field((), description="Browser origins (e.g. https://dash.example) allowed besides same-origin: they may publish over WHIP and read the alert websocket.")
    max_connections: int = Field(
        1000, ge=1, le=1_000_000,
        description="HTTP and websocket connections open at once; a connection past it is dropped as it is accepted "
        "(http_rejected_total{reason=\"too_many_connections\"}). With the open-file limit, which the service raises to its hard "
        "limit at start, it keeps a flood of idle connections from leaving streams, WHIP and the event log without file descriptors.",
    )
    max_ws_clients: int = Field(64, ge=1, le=10_000, description="Alert websocket clients connected at once; more are closed with 1013 (try again later).")
    api_file_roots: tuple[Path, ...] = Field((), description="Folders under which POST /api/streams may open local files (recordings to scan, say). Empty: no file streams through the API; files named in this configuration are not affected.")
    api_stream_hosts: tuple[str, ...] = Field(("*",), description="Hosts that network streams added through POST /api/streams may connect to (the host of an rtsp://, rtsps:// or WHEP URL, and of a WHEP stream's redirect_origins): host names, matched as the URL writes them (not resolved, case and a final dot aside), IP addresses, or networks such as 10.0.5.0/24. `*` (the default) allows any host. Streams in this configuration are not affected.")

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)

    @field_validator("token")
    @classmethod
    def _token_fits_a_header(cls, token: str | None) -> str | None:
        return bearer_token(token)

    @field_validator("host")
    @classmethod
    def _host_unbracketed(cls, host: str) -> str:
        # `[::1]` as a URL writes it: passed on as it is, the bind failed ("Name or service not known").
        return host[1:-1] if host.startswith("[") and host.endswith("]") else host

    @field_validator("cors_origins")
    @classmethod
    def _origins_as_browsers_send_them(cls, origins: tuple[str, ...]) -> tuple[str, ...]:
        # Compared exactly with a browser's Origin header: a path, `*` or another scheme could
        # never match, and the dashboard would be refused with nothing pointing here.
        return tuple(dict.fromkeys(normalise_origin(o) for o in origins))

    @field_validator("api_stream_hosts")
    @classmethod
    def _stream_hosts(cls, hosts: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(normalise_host_pattern(h) for h in hosts))

    @model_validator(mode="after")
    def _token_when_exposed(self) -> ServerConfig:
        if not self.is_loopback and not self.token:
            raise ValueError(
                f"server.host={self.host!r} is not loopback: set server.token (or MONITOR_SERVER__TOKEN) "
                "so ingest and alerts are not open to the network, or bind a loopback address"
            )
        return self


def too_slow_to_track(name: str, fps: float, analysis: AnalysisConfig) -> str | None:
    """Why analysing at ``fps`` cannot work, or None. A frame analysed every ``track_lost_s`` or
    less often ends every face's track before the next frame: each face got a new track on each
    frame, no track ever had a window to score, and the stream showed ``running`` while blind."""
    if 1.0 / fps >= analysis.track_lost_s:
        return (
            f"{name}={fps:g} analyses a frame every {1.0 / fps:g} s, which is not less than analysis.track_lost_s "
            f"({analysis.track_lost_s:g} s): every face would start a new track on every frame and could never be "
            "judged; raise the rate, or analysis.track_lost_s with policy.inconclusive_after_s"
        )
    return None


class AnalysisConfig(Strict):
    fps: float = Field(10.0, gt=0, le=60, description="Frames analysed per second per stream; newer frames replace older ones that were not analysed yet (a file with realtime: false is sampled at this rate by its own timestamps, losing none).")
    max_faces: int = Field(4, ge=1, le=16, description="Most faces tracked per frame.")
    max_frame_pixels: int = Field(
        4096 * 4096, ge=64 * 64, le=1 << 30,
        description="A stream (file, RTSP, WHIP or WHEP) whose frames have more pixels fails (a WHIP session then ends) with a clear error instead of taking gigabytes of memory (an 8000x8000 video took about 3 GB). The default, 16.8 million, admits 4K (8.3 million).",
    )
    ffmpeg_max_alloc_mib: int = Field(
        128, ge=16, le=2048,
        description="Largest single allocation FFmpeg may make, in MiB (process-wide, set by the service and by `monitor scan`; at least 4 bytes per pixel of max_frame_pixels is always allowed). An RTSP server announcing a 1 GB reply made FFmpeg allocate 1 GB per connection attempt; now that open fails at once (as invalid data). Raise it only if a legitimate file fails with 'Cannot allocate memory' (a recording of more than about a day indexes that much).",
    )
    crop_size: int = Field(112, ge=32, le=512, description="Side of the aligned face crop handed to the detector, in pixels.")
    min_face_px: float = Field(48.0, ge=8, description="Faces narrower than this are `low_resolution`.")
    min_blur: float = Field(15.0, ge=0, description="Crops whose Laplacian variance (measured at 112 px whatever crop_size is) is below this are `blurred`.")
    max_frame_age_s: float = Field(0.5, gt=0, description="A frame older than this when analysis could start is skipped (`stale`); never for a file with realtime: false.")
    budget_s: float | None = Field(None, gt=0, description="Per-frame analysis budget; default 1/fps. Over budget, the detector skips work on the next frame rather than queue it (a file with realtime: false has none).")
    track_lost_s: float = Field(1.0, gt=0, description="A face unseen for longer than this ends its track; a face that returns within it keeps its id.")

    @model_validator(mode="before")
    @classmethod
    def _retired_keys(cls, data: Any) -> Any:
        # `detector_threads` sized a thread pool that analysed one frame at a time anyway: it
        # changed nothing (and let a stream's end race a frame still in analysis). Accepted, with
        # a warning, so that existing configuration files still load.
        if isinstance(data, dict) and "detector_threads" in data:
            logging.getLogger(__name__).warning(
                "analysis.detector_threads is retired and ignored: each stream is analysed on one thread"
            )
            data = {k: v for k, v in data.items() if k != "detector_threads"}
        return data


class IceServer(Strict):
    urls: tuple[str, ...] = Field(description="stun: or turn: URLs of one ICE server.")
    username: str | None = Field(None, description="TURN username.")
    credential: str | None = Field(None, description="TURN credential.")


class WebRTCConfig(Strict):
    ice_servers: tuple[IceServer, ...] = Field((), description="STUN/TURN servers: at most one `stun:` and one TURN server (`turn:` over udp or tcp, `turns:` over tcp, with `username` and `credential`), which is all aiortc uses; checked at load. Empty by default: the monitor never contacts a public STUN server unless one is configured here.")
    host_addresses: tuple[str, ...] = Field((), description="Local IP addresses offered as ICE host candidates in addition to the ones aioice finds; include 127.0.0.1 for loopback-only peers.")
    include_loopback: bool = Field(True, description="Offer 127.0.0.1 as a host candidate when the server binds to loopback (aioice never offers it by itself).")
    only_host_addresses: bool = Field(False, description="Bind WebRTC media sockets and offer host candidates on host_addresses (and 127.0.0.1 as include_loopback says) only, not on every address of the machine's interfaces, which a publisher would otherwise learn from the answer.")
    max_sessions: int = Field(16, ge=1, le=256, description="Most concurrent WHIP sessions; more get 503.")
    max_sdp_bytes: int = Field(32 * 1024, ge=1024, description="Largest SDP offer or trickle fragment accepted (WHIP), and largest answer read from a WHEP endpoint.")
    session_idle_s: float = Field(30.0, gt=0, description="A WHIP session not connected this long after it was created is cleaned up; a failed or closed connection ends its session at once.")
    no_video_s: float = Field(5.0, gt=0, description="A connected WHIP session ends, as a DELETE would end it, when one of its video tracks has delivered no frame for this long (counted from `connected` until the first frame). Catches a publisher that vanished (ICE consent alone notices only after about 30 s) or stopped sending video while the connection stays up.")
    max_video_tracks: int = Field(4, ge=1, le=64, description="Most video tracks one WHIP session may publish (each becomes a stream with its own analysis pipeline); an offer with more is refused with 422 before anything is built.")
    resolve_mdns: bool = Field(False, description="Resolve `<name>.local` ICE candidates (browsers hide local addresses behind them) by multicast DNS. Off by default: resolving binds UDP port 5353 and sends multicast queries to the local network, and the monitor contacts no host unless configured to; such candidates (in WHIP offers, trickle PATCHes and WHEP answers) are dropped instead.")

    @model_validator(mode="after")
    def _ice_as_aiortc_reads_it(self) -> WebRTCConfig:
        # aiortc reads these only when a session builds its ICE transport: a typo used to pass
        # here and then fail every WHIP offer as the publisher's "malformed SDP", and servers
        # it does not use were dropped without a word. Checked with aiortc's own parser.
        if self.ice_servers:
            from aiortc.rtcicetransport import parse_stun_turn_uri  # only then: aiortc loads slowly

        used: dict[str, list[str]] = {"STUN": [], "TURN": []}
        for i, server in enumerate(self.ice_servers):
            for url in server.urls:
                where = f"ice_servers[{i}]: {redact_url(url)!r}"  # turn:user:password@host is seen too
                try:
                    parsed = parse_stun_turn_uri(url)
                except ValueError as exc:
                    raise ValueError(f"{where} is not a stun: or turn: URL ({exc})") from None
                scheme, transport = parsed["scheme"], parsed.get("transport")
                if scheme == "stuns":
                    raise ValueError(f"{where}: aiortc does not use stuns: servers (use stun: or turns:)")
                if scheme == "stun":
                    used["STUN"].append(url)
                    continue
                if (scheme, transport) not in (("turn", "udp"), ("turn", "tcp"), ("turns", "tcp")):
                    raise ValueError(f"{where}: aiortc supports TURN over udp or tcp, and turns: over tcp only")
                if not server.username or not server.credential:
                    raise ValueError(f"{where}: a TURN server needs `username` and `credential`")
                used["TURN"].append(url)
        for kind, urls in used.items():
            if len(urls) > 1:
                raise ValueError(f"aiortc uses one {kind} server and would ignore {[redact_url(u) for u in urls[1:]]}: list only one")
        for address in self.host_addresses:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ValueError(f"host_addresses: {address!r} is not an IP address") from None
        return self


class DetectorConfig(Strict):
    name: str = Field("temporal-v1", description="Detector plugin (entry point in `deepfake_monitor.detectors`): `temporal-v1` (trained, see models/temporal-v1.md) or `baseline-landmarks`.")
    options: dict[str, Any] = Field(default_factory=dict, description="Options for the detector plugin; validated by the plugin's own model.")


class PolicyConfig(Strict):
    suspicious_enter: float = Field(0.5, gt=0, le=1, description="Smoothed score at or above which a track becomes `suspicious`.")
    alert_enter: float = Field(0.7, ge=0, le=1, description="Smoothed score at or above which a track raises an alert.")
    hysteresis: float = Field(0.1, ge=0, le=0.5, description="A state is left only when the score falls this far below its entry threshold.")
    min_alert_s: float = Field(1.0, ge=0, description="The smoothed score must stay above `alert_enter`, with this much time of the detector's own scores above it, before an alert opens.")
    min_state_s: float = Field(1.0, ge=0, description="Minimum time in a state before any downgrade.")
    ema_halflife_s: float = Field(1.0, gt=0, description="Half-life of the exponential smoothing of detector scores.")
    inconclusive_after_s: float = Field(2.0, gt=0, description="A track without a usable score for this long becomes `inconclusive`.")

    @model_validator(mode="after")
    def _ordered(self) -> PolicyConfig:
        if self.alert_enter < self.suspicious_enter:
            raise ValueError("policy.alert_enter must be >= policy.suspicious_enter")
        if self.hysteresis >= self.suspicious_enter:
            # The exit thresholds would be 0 or below: an alert would never close.
            raise ValueError(
                f"policy.hysteresis ({self.hysteresis:g}) must be below policy.suspicious_enter ({self.suspicious_enter:g}), "
                "or no score could ever end a state"
            )
        return self


class AlertsConfig(Strict):
    queue_size: int = Field(1000, ge=1, description="Events buffered per websocket client; a client that falls further behind is closed with 1013 and resumes with ?since=.")
    retention_days: float = Field(30.0, gt=0, description="Events older than this are removed from the event log at start-up and then once a day, and so is the evidence of alerts older than this.")
    evidence: bool = Field(True, description="Save what each alert was raised on (the frame, scaled to 640 px with the face boxed, the face's last aligned crops, the scores and reasons) to data_dir/evidence/<alert_id>/, served at /api/alerts/<alert_id>/evidence. Nothing leaves the machine; false saves no images of faces.")
    evidence_max_mib: int = Field(2048, ge=1, le=1 << 20, description="Most disk space evidence may take, in MiB: past it the oldest bundles are removed (their alerts stay in the event log). Evidence was removed by age alone, and a stream alerting on and off could fill the disk the event log shares.")
    evidence_min_free_mib: int = Field(512, ge=0, description="No evidence is saved while the data_dir's disk has less free space than this, in MiB (counted as failed and logged): the event log, which alerts need, gets that space.")


class SinkConfig(Strict):
    name: str = Field(description="Alert sink plugin (entry point in `deepfake_monitor.sinks`), e.g. `webhook`.")
    id: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]{1,64}$", description="Unique id of this sink (its delivery cursor and metric label); defaults to `name`. Required when one plugin is used twice.")
    options: dict[str, Any] = Field(default_factory=dict, description="Options for the sink plugin.")

    @property
    def key(self) -> str:
        return self.id or self.name


class StreamConfig(Strict):
    id: str = Field(description="Stream id: letters, digits, `.`, `_`, `-`; at most 64 characters.")
    url: str = Field(description="rtsp://, rtsps://, a file path or file:// URL, demo://astronaut, or (with source: whep) a WHEP endpoint URL.")
    source: str | None = Field(None, description="Source plugin; inferred from the URL scheme when omitted.")
    analysis_fps: float | None = Field(None, gt=0, le=60, description="Overrides analysis.fps for this stream.")
    loop: bool = Field(False, description="Files only: start again at the end (for demos).")
    realtime: bool = Field(True, description="Files only: pace frames at their timestamps, as a live stream would. false: read as fast as analysis goes, sampled by the file's own timestamps at analysis.fps (as `monitor scan` does).")
    options: dict[str, Any] = Field(default_factory=dict, description="Options for the source plugin.")

    @field_validator("url")
    @classmethod
    def _url_authority(cls, value: str) -> str:
        # A line break in a URL reached the RTSP request line: a token holder could send any
        # lines (Redis commands, a whole HTTP request) to any host the service can reach.
        if re.search(r"[\x00-\x1f\x7f]", value):
            raise ValueError("must not contain control characters (line breaks, tabs, NUL)")
        if "://" in value and not value.startswith("file://") and " " in value:
            raise ValueError("a network URL must not contain spaces: percent-encode them (%20)")
        check_authority(value)
        return value

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not is_stream_id(value):
            raise ValueError(f"stream id must be {STREAM_ID_RULE}")
        return value

    @property
    def source_name(self) -> str:
        return self.source or infer_source(self.url)


def check_authority(url: str) -> None:
    """Refuse a URL whose host part is no ``host[:port]`` because a raw "/", "?" or "#" in its
    password ended it (``rtsp://admin:pa/ss@cam``: the host would read ``admin:pa``), naming
    neither the password nor the URL. Such a URL could never connect, and it would have been
    stored and shown as given."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return
    authority = _authority(rest)
    if "@" in authority or authority.startswith("["):
        return
    _, colon, port = authority.rpartition(":")
    if colon and port and not port.isdigit():
        raise ValueError(
            f"the {scheme}:// URL's host part is not host[:port]: a raw '/', '?' or '#' in a user name or "
            "password ends it. Percent-encode them (%2F, %3F, %23)"
        )


def _authority(after_scheme: str) -> str:
    """The authority of a URL (what follows ``scheme://``): up to its first "/", "?" or "#"."""
    return re.split(r"[/?#]", after_scheme, maxsplit=1)[0]


def url_host(url: str) -> str | None:
    """The host a URL names (lower case, IPv6 without brackets), None if it names none. Read
    after the authority's last "@": a password may hold a raw "[" (legal there), which makes
    urlsplit fail on the whole URL."""
    scheme, _, rest = url.partition("://")
    try:
        return urlsplit(f"{scheme}://{_authority(rest).rpartition('@')[2]}").hostname
    except ValueError:  # a malformed IPv6 literal
        return None


def infer_source(url: str) -> str:
    scheme = url.split("://", 1)[0].lower() if "://" in url else "file"
    if scheme in ("rtsp", "rtsps"):
        return "rtsp"
    if scheme == "demo":
        return "demo"
    if scheme == "file":
        return "file"
    raise ConfigError(f"cannot infer a source for {redact_url(url)!r}: use rtsp://, a file path or demo://, or set `source`")


class Settings(BaseSettings):
    """The whole service configuration."""

    model_config = SettingsConfigDict(
        env_prefix="MONITOR_", env_nested_delimiter="__", extra="forbid", frozen=True, allow_inf_nan=False
    )

    data_dir: Path = Field(Path("monitor-data"), description="Where the event log and state live; relative to the working directory.")
    instance: str = Field(
        "monitor", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description=f"Name of this instance, used in the CloudEvents `source` (/<instance>/logs/<logepoch>/streams/<id>): {STREAM_ID_RULE}.",
    )
    log_level: str = Field("INFO", description="Logging level: DEBUG, INFO, WARNING, ERROR or CRITICAL (any case).")
    demo: bool = Field(True, description="Watch the built-in demo stream when no streams are configured.")
    server: ServerConfig = Field(default_factory=ServerConfig)
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)
    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    webrtc: WebRTCConfig = Field(default_factory=WebRTCConfig)
    sinks: tuple[SinkConfig, ...] = Field((), description="Extra alert sinks fed from the event log.")
    streams: tuple[StreamConfig, ...] = Field((), description="Streams watched from start-up; more can be added through the API.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Command-line overrides beat MONITOR_* variables, which beat the YAML file.
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        data = _yaml_data.get()
        if data is not None:
            sources.append(InitSettingsSource(settings_cls, init_kwargs=data))
        return tuple(sources)

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        # Checked here: a bad level would otherwise pass and crash start-up with a traceback.
        if value.upper() not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return value.upper()

    @model_validator(mode="after")
    def _slow_analysis(self) -> Settings:
        # Allowed (it carries more streams per core), but the detector then misses its promise:
        # a verdict at least every 0.5 s, and the first score within 2 s of a face appearing
        # (temporal-v1 needs 5 observations: 4 / fps seconds).
        rates = {"analysis.fps": self.analysis.fps} | {
            f"streams[{s.id}].analysis_fps": s.analysis_fps for s in self.streams if s.analysis_fps is not None
        }
        slow = [f"{k}={v:g}" for k, v in rates.items() if v < 2]
        if slow:
            logging.getLogger(__name__).warning(
                "%s: below 2 frames a second, verdicts come less often than every 0.5 s and a new "
                "face's first score takes more than 2 s", ", ".join(slow)
            )
        return self

    @model_validator(mode="after")
    def _some_media_address(self) -> Settings:
        w = self.webrtc
        if w.only_host_addresses and not w.host_addresses and not (w.include_loopback and self.server.is_loopback):
            raise ValueError(
                "webrtc.only_host_addresses leaves no address for WebRTC media: list webrtc.host_addresses "
                "(or bind the server to loopback with webrtc.include_loopback)"
            )
        return self

    @model_validator(mode="after")
    def _rates_keep_tracks(self) -> Settings:
        rates = {"analysis.fps": self.analysis.fps} | {
            f"streams[{s.id}].analysis_fps": s.analysis_fps for s in self.streams if s.analysis_fps is not None
        }
        for name, fps in rates.items():
            why = too_slow_to_track(name, fps, self.analysis)
            if why:
                raise ValueError(why)
        return self

    @model_validator(mode="after")
    def _lost_faces_go_inconclusive(self) -> Settings:
        # A face that left gets no verdict until its track ends (track_lost_s): were that later
        # than inconclusive_after_s, its track would show its last state, and keep an alert
        # open, for that long after the face was gone.
        lost, after = self.analysis.track_lost_s, self.policy.inconclusive_after_s
        if lost > after:
            raise ValueError(
                f"analysis.track_lost_s ({lost:g}) must not exceed policy.inconclusive_after_s ({after:g}): "
                "a face that left would keep its track's last state, an open alert included, until its track ends"
            )
        return self

    @model_validator(mode="after")
    def _unique_ids(self) -> Settings:
        for what, ids in (("stream", [s.id for s in self.streams]), ("sink", [s.key for s in self.sinks])):
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            if dupes:
                hint = "give each sink its own `id`" if what == "sink" else "each stream needs its own `id`"
                raise ValueError(f"duplicate {what} ids: {dupes} ({hint})")
        return self


# Keys whose values are credentials. By name, not by type: plugin options are plain dicts
# checked by each plugin's own model (the webhook's `secret`, `headers`), and SecretStr
# would change what `settings.server.token` is for every caller.
_SECRET_KEY = re.compile(r"token|secret|credential|password|passwd|api_?key", re.IGNORECASE)
# Whole words of a name that mark a credential too: Azure Functions' `?code=`, Google's `?key=`,
# SAS `sig`, AWS `X-Amz-Signature`, cameras' `pwd`, option keys such as `signing_key` or
# `passphrase`. As words, so that `codec` or `keyframe_interval` stay readable.
_SECRET_WORDS = frozenset(
    {"key", "sig", "signature", "code", "pwd", "pass", "passphrase", "auth", "authorization", "private", "jwt", "bearer", "cookie"}
)
_NAME_WORDS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
REDACTED = "***"


def is_secret_name(name: str) -> bool:
    """Whether a key or query parameter called ``name`` holds a credential."""
    return bool(_SECRET_KEY.search(name)) or any(w.lower() in _SECRET_WORDS for w in _NAME_WORDS.findall(name))
# rtsp://user:pass@host, up to the *last* "@" of the URL: a password with a raw "@" is hidden
# whole, and so is one with a raw "/", "?" or "#" (which end the authority, so such a URL
# cannot work, but its error message must not echo the password). An "@" in a path hides the
# host too: over-hiding is the safe side. Also in URLs mistyped with one slash or none.
URL_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*:/*)\S*@")
_URL_QUERY_VALUE = re.compile(r"([?&])([^=&#]+)=([^&#]*)")  # ?access_token=..., &token=...


def redact_url(url: str) -> str:
    """``url`` with its credentials hidden: the user:password before the host, and the value of
    every query parameter named like a credential (``access_token``, ``token``, ``api_key``...)."""
    url = URL_USERINFO.sub(rf"\1{REDACTED}@", url)
    if "?" not in url:
        return url
    return _URL_QUERY_VALUE.sub(lambda m: f"{m[1]}{m[2]}={REDACTED}" if is_secret_name(unquote(m[2])) else m[0], url)


def is_secret(path: tuple[Any, ...]) -> bool:
    """Whether the value at ``path`` (keys from the root) is a credential: a secret-named key,
    or any HTTP header value (an Authorization header is one)."""
    for i, part in enumerate(path):
        if isinstance(part, str) and (is_secret_name(part) or (part.lower() == "headers" and i + 1 < len(path))):
            return True
    return False


def redact(data: Any, path: tuple[Any, ...] = ()) -> Any:
    """A copy of ``data`` (e.g. ``model_dump(mode="json")``) with every credential that is set
    replaced by ``***``, and the credentials in URLs hidden (``redact_url``); unset credentials stay null, so
    the output still says whether they are set."""
    if isinstance(data, dict):
        return {k: redact(v, (*path, k)) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [redact(v, (*path, i)) for i, v in enumerate(data)]
    if data is not None and is_secret(path):
        return REDACTED
    if isinstance(data, str) and len(path) == 4 and path[0] == "sinks" and path[2:] == ("options", "url"):
        # A sink's URL: Slack, Discord and Teams webhooks carry their secret in the path.
        parts = urlsplit(redact_url(data))
        if parts.path not in ("", "/") or parts.query:
            return urlunsplit((parts.scheme, parts.netloc, "/" + REDACTED, "", ""))
    return redact_url(data) if isinstance(data, str) else data


_UP_TO_LAST_AT = re.compile(r"^.*@", re.DOTALL)
_URL_PATH = re.compile(r"^([^/]*//[^/?#]*)[/?#].*$", re.DOTALL)


def _shown(path: tuple[Any, ...], value: Any, url_path_secret: bool = False) -> str:
    """The offending value as an error message may quote it: a credential only by its size.
    A string with an "@" the URL rule did not hide (a scheme mistyped as ``redis//`` or
    ``https//``, or none) is hidden up to its last "@", where a password would be; with
    ``url_path_secret``, a ``url`` is shown without its path and query (a sink's: Slack,
    Discord and Teams webhooks carry their token there), however malformed."""
    if is_secret(path):
        return f"{len(value)} characters" if isinstance(value, str) else f"a {type(value).__name__}"
    if not isinstance(value, str):
        return repr(value)
    shown = redact_url(value)  # a URL's credentials
    if "@" in shown and f"{REDACTED}@" not in shown:  # a scheme mistyped ("redis//", "redis_tls://") or missing
        shown = _UP_TO_LAST_AT.sub(f"{REDACTED}@", shown)
    if url_path_secret and path and path[-1] == "url":
        shown = _URL_PATH.sub(rf"\1/{REDACTED}", shown) if "//" in shown else REDACTED
    return repr(shown)


def describe_errors(exc: ValidationError, url_path_secret: bool = False) -> list[str]:
    """One line per problem, each naming the offending key as a dotted path; the offending
    value is quoted, unless it is a credential (then only its length). ``url_path_secret``:
    see ``_shown``."""
    lines = []
    for err in exc.errors(include_url=False):
        key = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in err["loc"]).lstrip(".")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (`monitor config schema` lists the valid ones; a plugin's under x-plugin-options)"
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if not isinstance(err.get("input"), (dict, list, tuple)) and err["type"] != "missing":
                msg += f" (got {_shown(tuple(err['loc']), err['input'], url_path_secret)})"
        # Model-level checks already name their keys ("server.host=... needs server.token").
        lines.append(msg if not key or msg.startswith(key + ".") else f"{key}: {msg}")
    return lines


# MONITOR_* variables that are not settings: read by the command-line tools themselves.
CLIENT_ENV_VARS = frozenset({"MONITOR_TOKEN", "MONITOR_PROGRESS"})
# Variables a platform sets for a service or container named "monitor" (the name compose.yaml
# uses): Kubernetes service links (MONITOR_SERVICE_HOST, MONITOR_PORT_8080_TCP_ADDR...) and
# Docker's legacy links (MONITOR_NAME, MONITOR_ENV_*). They are not settings, and failing on
# them would crash-loop the pod.
_PLATFORM_ENV_VAR = re.compile(r"MONITOR_(SERVICE_\w+|PORT|PORT_\d+_(TCP|UDP|SCTP)(_\w+)?|NAME|ENV_\w+)")
# What Kubernetes puts in MONITOR_PORT (tcp://10.0.0.7:8080): any other value, such as 9090,
# is someone setting the port with the wrong name.
_PLATFORM_PORT_VALUE = re.compile(r"(tcp|udp|sctp)://\S+", re.IGNORECASE)


def _is_platform_var(upper: str, value: str) -> bool:
    if not _PLATFORM_ENV_VAR.fullmatch(upper):
        return False
    return upper != "MONITOR_PORT" or bool(_PLATFORM_PORT_VALUE.fullmatch(value.strip()))


def unknown_env_vars(environ: Mapping[str, str] | None = None) -> list[str]:
    """MONITOR_* variables naming no setting. pydantic-settings silently skips a variable whose
    first part is no field (``MONITOR_SERVR__PORT``), so a typo would leave its setting at the
    default: a token never set, a port never changed."""
    environ = os.environ if environ is None else environ
    fields = Settings.model_fields
    bad = []
    for name, value in environ.items():
        upper = name.upper()
        if not upper.startswith("MONITOR_") or upper in CLIENT_ENV_VARS or _is_platform_var(upper, value):
            continue
        first, nested, _ = upper[len("MONITOR_"):].partition("__")
        field = fields.get(first.lower())
        # MONITOR_DATA_DIR__PATH: a nested key under a plain value is dropped just as silently.
        if field is None or (nested and not _has_model(field.annotation)):
            bad.append(name)
    return sorted(bad)


def _has_model(annotation: Any) -> bool:
    """Whether a field's type (or a type in its union or list) is a model with keys of its own."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    return any(_has_model(arg) for arg in getattr(annotation, "__args__", ()))


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping. YAML would keep the
    last: a second `server:` or `streams:` block would drop the first, token and all."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`: its keys may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if not isinstance(key, str):
                # `on:`, `yes:`, `1:`, `~:` or `? [a, b]`: every key of ours is a name. Such a key
                # ended in a traceback (and `monitor scan` then exited 1, "alert").
                shown = repr(key) if isinstance(key, (int, float)) or key is None else "a " + type(key).__name__
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found the key {shown}: keys must be names (YAML reads on/off/yes/no as booleans: quote them)",
                    key_node.start_mark,
                )
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {key!r} (first at line {seen[key].line + 1})", key_node.start_mark,
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Read ``path`` (YAML), apply MONITOR_* env vars and ``overrides`` (nested dicts merge
    key by key), then validate the result once; errors are ConfigError naming each bad key."""
    bad_env = unknown_env_vars()
    if bad_env:
        raise ConfigError(
            f"unknown environment variable(s) {', '.join(bad_env)}: MONITOR_* variables name settings "
            f"(MONITOR_<KEY> or MONITOR_<SECTION>__<KEY>, e.g. MONITOR_SERVER__TOKEN; "
            f"`monitor config schema` lists the keys)"
        )
    if path is not None:
        try:
            loaded = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)  # noqa: S506 (safe: SafeLoader's subclass)
        except UnicodeDecodeError as exc:  # a ValueError, not an OSError: it ended in a traceback
            raise ConfigError(f"cannot read config {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config {path} must be a mapping at the top level")
        loaded = loaded or {}
    else:
        loaded = None
    token = _yaml_data.set(loaded)
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        where = f" ({path} with MONITOR_* env vars and options applied)" if path is not None else ""
        raise ConfigError(f"invalid configuration{where}:\n  " + "\n  ".join(describe_errors(exc))) from exc
    except ValueError as exc:  # e.g. a MONITOR_* variable that is not valid JSON
        raise ConfigError(str(exc)) from exc
    finally:
        _yaml_data.reset(token)

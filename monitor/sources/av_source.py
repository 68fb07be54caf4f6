"""File and RTSP sources on PyAV (FFmpeg): any container/codec FFmpeg reads, low-latency RTSP."""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import ssl
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import av
import av.error
from av.stream import Disposition
from pydantic import BaseModel, ConfigDict, Field, field_validator

from monitor.clock import Clock
from monitor.config import Settings, StreamConfig, redact_url
from monitor.errors import ConfigError, SourceError
from monitor.metrics import Metrics
from monitor.plugins import plugin_config
from monitor.sources.base import ThreadedSource, redact_text
from monitor.types import Frame

logger = logging.getLogger(__name__)

# Low-latency FFmpeg options for RTSP (DESIGN.md): TCP, low-delay decoding, tiny probe.
# "timeout" is the socket read timeout in microseconds ("stimeout" before FFmpeg 5).
# No "fflags=nobuffer": it discards the packets read while probing, first keyframe included,
# so the first frame waited a whole GOP (measured 1.06-1.11 s vs 0.17-0.18 s without it).
RTSP_OPTIONS = {
    "rtsp_transport": "tcp",
    "flags": "low_delay",
    "max_delay": "0",
    "probesize": "32768",
    "analyzeduration": "0",
    "timeout": "2000000",
}

# Decoder options for network streams. "chunks" lets the H.264 decoder assemble a frame from
# several packets. FFmpeg's parser starts a new frame at every SPS/PPS, so a server that repeats
# them before each slice of a keyframe delivers one packet per slice: GStreamer's
# `rtph264pay config-interval=-1` after a multi-slice x264 (zerolatency on a multi-core machine,
# a common camera pipeline). Without this option each slice decoded as a frame of its own, and
# 28 of 30 frames came out with a grey top slice until the next keyframe. With it the frame is
# output when its last slice arrives, with no added latency for well-formed streams.
STREAM_DECODER_OPTIONS = {"flags2": "+chunks"}


def video_tracks(container: Any) -> list[Any]:
    """``container``'s video streams that are video: not cover art (an MP3's or M4A's picture,
    listed by FFmpeg as a one-frame video stream with the ``attached_pic`` disposition), those
    FFmpeg can decode first."""
    tracks = [s for s in container.streams.video if not s.disposition & Disposition.attached_pic]
    return sorted(tracks, key=lambda s: s.codec_context is None)


def _timed_out(exc: BaseException, elapsed: float, limit_s: float | None) -> bool:
    """Whether ``exc`` ended a wait of ``elapsed`` s because a timeout of ``limit_s`` fired:
    PyAV's interrupt reads as ExitError ("Immediate exit requested"), FFmpeg's socket timeout
    as TimeoutError, or, during the RTSP handshake, as InvalidDataError. Only the elapsed time
    tells those apart from a server that sends garbage or closes at once."""
    timeout_errors = (av.error.ExitError, av.error.InvalidDataError, TimeoutError)
    return bool(limit_s) and isinstance(exc, timeout_errors) and elapsed >= 0.95 * limit_s


def _timeout_error(message: str, limit_s: float, name: str | None) -> SourceError:
    err = SourceError(f"{message} {limit_s:g} s" + (f" ({name})" if name else ""), retryable=True)
    err.kind = "TimeoutError"  # as FFmpeg's own socket timeout is counted: one label for all
    return err


def decode_frames(
    container: Any,
    on_decode_error: Callable[[BaseException], None],
    max_consecutive_errors: int | None = 50,
    max_video_gap_s: float | None = None,
    consecutive_errors: int = 0,
    read_timeout_s: float | None = None,
    read_timeout_name: str | None = None,
    stop: threading.Event | None = None,
    max_frame_gap_s: float | None = None,
    frame_gap_name: str | None = None,
) -> Iterator[Any]:
    """Decode the first video stream, skipping corrupt packets (each reported) instead of
    giving up on the whole stream. Raises SourceError after ``max_consecutive_errors`` in a row
    (live streams; None: never, for files, which are finite: the good video after a corrupt
    stretch is still played); ``consecutive_errors`` is how many came in a row before this call
    (a looped file's previous pass), so that seeking back to the start does not reset the count.

    With ``max_video_gap_s`` (live streams), every stream's packets are read and a video
    stream silent that long while others still flow raises SourceError too. The socket's read
    timeout cannot see that: a camera whose video encoder hangs while its audio goes on kept
    the source "running" with no frame, for ever.

    A read that fails after ``read_timeout_s`` (the container's read timeout) is reported as
    "no data from the server for N s (``read_timeout_name``)", not as FFmpeg's "Immediate exit
    requested", which reads like a shutdown.

    ``stop`` is checked at every packet: a caller that only looked between frames never got
    to look while packets decoded to nothing, and a removed stream's thread ran on for good.

    With ``max_frame_gap_s`` (live streams), video packets that have decoded to no frame for
    that long (since the call, or since the last frame) raise SourceError: a camera whose
    parameter sets never arrive, or whose encoder hung while its packetizer still sends
    filler, kept a stream "starting" or "running" with no frame and no reconnect, for ever."""
    tracks = video_tracks(container)
    if not tracks:
        raise SourceError("no video stream" + (" (only cover art)" if container.streams.video else ""), retryable=False)
    stream = tracks[0]
    consecutive = consecutive_errors
    packets = container.demux() if max_video_gap_s is not None else container.demux(stream)
    last_video = last_frame = time.monotonic()
    while True:
        if stop is not None and stop.is_set():
            return
        waited = time.monotonic()
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.error.EOFError:
            return
        except (av.error.FFmpegError, OSError) as exc:
            # PyAV's read interrupt (ExitError) is its timeout; its clock runs from FFmpeg's last
            # network read, not from this call: after packets FFmpeg had buffered, a stall
            # fired well before read_timeout_s had passed here, and read "Immediate exit requested".
            stalled = bool(read_timeout_s) and isinstance(exc, av.error.ExitError)
            if stalled or _timed_out(exc, time.monotonic() - waited, read_timeout_s):
                assert read_timeout_s is not None
                raise _timeout_error("no data from the server for", read_timeout_s, read_timeout_name) from exc
            raise SourceError(f"read failed: {exc}", retryable=True) from exc
        if stop is not None and stop.is_set():
            return
        blind = time.monotonic() - last_frame
        if max_frame_gap_s is not None and blind > max_frame_gap_s:
            where = f" ({frame_gap_name})" if frame_gap_name else ""
            raise SourceError(f"no decodable video frame for {blind:.1f} s while packets still arrive{where}", retryable=True)
        if packet.stream.index != stream.index:
            silent = time.monotonic() - last_video
            if max_video_gap_s is not None and silent > max_video_gap_s:
                raise SourceError(f"no video for {silent:.1f} s while other streams still play", retryable=True)
            continue
        last_video = time.monotonic()
        try:
            frames = packet.decode()
        except (av.error.InvalidDataError, av.error.FFmpegError) as exc:
            consecutive += 1
            on_decode_error(exc)
            if max_consecutive_errors is not None and consecutive >= max_consecutive_errors:
                raise SourceError(f"{consecutive} corrupt packets in a row: {exc}", retryable=True) from exc
            continue
        if frames:
            consecutive = 0
            yield from frames
            # After the caller has had them: its own work (a scan's first model load, analysis
            # on a loaded machine) is no time the camera went without a decodable frame.
            last_frame = time.monotonic()


class Timeline:
    """Stream time of each decoded frame: seconds since the video started playing.

    Files count from the container's start time, as a player does: MPEG-TS recordings start at
    1.4 s or more and HLS segments anywhere, and taking those timestamps as they are made a live
    file source sleep that long before its first frame and an offline scan with a duration limit
    read nothing. A live stream counts from its first frame (``start_s`` None). A timestamp that
    goes backwards or jumps more than ``MAX_JUMP_S`` ahead (concatenated MPEG-TS files, a 33-bit
    wrap) is a discontinuity: the frame follows the previous one by one frame interval."""

    MAX_JUMP_S = 60.0  # longer real gaps in a recording are rare; a wrap is 26.5 hours

    def __init__(self, start_s: float | None = None, step: float = 1.0 / 30) -> None:
        self.start_s = start_s
        self.t = 0.0  # the last frame's stream time
        self.step = step  # the last regular frame interval seen (at first: the stream's nominal one)
        self._raw: float | None = None

    @classmethod
    def of(cls, container: Any, live: bool = False) -> Timeline:
        """The timeline of ``container``'s video: from its start time (a file) or its first frame
        (``live``), stepping by its frame rate where frames carry no timestamp (a raw .h264
        dump at 10 fps played three times too fast at an assumed 30)."""
        step = 1.0 / 30
        tracks = video_tracks(container)
        video = tracks[0] if tracks else None
        if video is not None:
            # FFmpeg's guess from the stream's timing; average_rate of a raw stream is its
            # default 25, and the codec's own framerate comes last.
            codec = video.codec_context
            for rate in (video.guessed_rate, codec.framerate if codec is not None else None):
                if rate and 1 <= float(rate) <= 240:
                    step = 1.0 / float(rate)
                    break
        if live:
            return cls(None, step)
        start = getattr(container, "start_time", None)  # microseconds (AV_TIME_BASE)
        return cls(start / 1_000_000 if start is not None else 0.0, step)

    def __call__(self, raw: float | None) -> float:
        if self._raw is None:
            if raw is None:
                raw = self.start_s or 0.0
            if self.start_s is None or raw - self.start_s > self.MAX_JUMP_S:
                # Video that starts long after the container (audio from 0 s, video from
                # 100 s; a 33-bit wrap) would make the player wait that long: count from it.
                self.start_s = raw
            t = max(raw - self.start_s, 0.0)
        elif raw is None:
            raw, t = self._raw + self.step, self.t + self.step
        else:
            delta = raw - self._raw
            # A repeated timestamp (delta 0) counts as a missing one: stream time that stood
            # still froze track expiry and a file's pacing (it was read at full speed).
            if 0.0 < delta <= self.MAX_JUMP_S:
                t = self.t + delta
                if 0.0 < delta < 1.0:
                    self.step = delta
            else:
                t = self.t + self.step
        self._raw, self.t = raw, t
        return t


# What FFmpeg would follow to other files: HLS playlists (#EXTM3U), concat lists (ffconcat),
# DASH manifests (<MPD). A file stream plays the one file it names: `server.api_file_roots`
# confines the API to files under its folders, and a playlist there could name any file.
_PLAYLIST_HEADS = (b"#EXTM3U", b"ffconcat", b"<MPD")


def refuse_playlist(path: str) -> None:
    """SourceError (not retryable) when ``path`` is a playlist or manifest: checked before FFmpeg
    opens it, as its demuxers read the files a playlist lists while probing. Not a regular file
    either: reading a FIFO with no writer (or a terminal, a device) blocked the source's thread
    where no stop or timeout reaches it, and reading one with a writer ate the head of its video."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return  # open_video reports it (missing, unreadable)
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise SourceError(f"{path} is not a regular file (a FIFO, socket or device): file streams play files", retryable=False)
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return  # open_video reports it (a folder, unreadable)
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(_PLAYLIST_HEADS) or (text.startswith(b"<?xml") and b"<MPD" in head):
        raise SourceError(f"{path} is a playlist or manifest, not a video file: file streams play one file", retryable=False)


def _loaded_libavutils() -> list[str]:
    """Paths of every libavutil mapped into this process (Linux), in no particular order."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            # address perms offset dev inode path: the path is the rest of the line (it may hold spaces)
            paths = [parts[5] for line in f if len(parts := line.rstrip("\n").split(maxsplit=5)) == 6]
    except OSError:  # not Linux
        return []
    return list(dict.fromkeys(p for p in paths if Path(p).name.startswith("libavutil")))


@functools.cache
def _libavutil() -> Any:
    """PyAV's libavutil (ctypes), or None where it cannot be told apart. Other copies of FFmpeg
    are often loaded too (OpenCV's wheel bundles its own): the cap must land on PyAV's. A
    wheel's private copy sits in PyAV's own library folder; a PyAV built against the system's
    FFmpeg uses a shared one, recognised by its version being PyAV's and it lying outside any
    other wheel's private folder."""
    here = Path(av.__file__).resolve().parent
    private = [str(p) for d in (here.parent / "av.libs", here / ".dylibs") for p in sorted(d.glob("libavutil*"))]
    want = av.library_versions.get("libavutil")
    shared = [p for p in _loaded_libavutils() if not any(part.endswith(".libs") or part == ".dylibs" for part in Path(p).parts)]
    for path in private or shared:
        try:
            lib = ctypes.CDLL(path)  # the loaded library again: dlopen returns the same handle
            lib.av_max_alloc.argtypes = [ctypes.c_size_t]
            lib.av_max_alloc.restype = None
            lib.av_malloc.argtypes = [ctypes.c_size_t]
            lib.av_malloc.restype = ctypes.c_void_p
            lib.av_free.argtypes = [ctypes.c_void_p]
            lib.av_free.restype = None
            version = lib.avutil_version()
        except (OSError, AttributeError):
            continue
        if private or want is None or (version >> 16, (version >> 8) & 0xFF, version & 0xFF) == tuple(want):
            return lib
    return None


def limit_ffmpeg_allocations(max_bytes: int) -> bool:
    """Cap every single allocation PyAV's FFmpeg makes in this process at ``max_bytes``
    (av_max_alloc; FFmpeg's own default is INT_MAX). An RTSP server that announced a 1 GB reply
    made FFmpeg allocate and fill 1 GB on every connection attempt; now FFmpeg refuses the
    allocation and the open fails at once (FFmpeg reports the missing SDP as invalid data).
    Process-wide, the last call wins: it covers RTSP, files and WebRTC decoding alike. Checked
    by asking for one byte more than the cap; False (with a warning) where that still succeeds
    or PyAV's libavutil cannot be found."""
    if not 0 < max_bytes < 1 << 62:
        # ctypes passes a size_t modulo 2**64: a huge cap wrapped to 0 and FFmpeg crashed.
        raise ValueError(f"FFmpeg allocation cap out of range: {max_bytes}")
    lib = _libavutil()
    if lib is not None:
        lib.av_max_alloc(int(max_bytes))
        over = lib.av_malloc(int(max_bytes) + 1)  # refused without allocating when the cap holds
        if not over:
            return True
        lib.av_free(over)
    logger.warning("FFmpeg's allocation limit could not be set (PyAV's libavutil not found): a hostile stream can make it allocate up to 2 GB")
    return False


def limit_ffmpeg_allocations_for(analysis: Any) -> bool:
    """The cap ``analysis`` (an AnalysisConfig) asks for: ``ffmpeg_max_alloc_mib``, and never
    less than 4 bytes per pixel of ``max_frame_pixels``, so that any frame it admits decodes."""
    return limit_ffmpeg_allocations(max(analysis.ffmpeg_max_alloc_mib << 20, 4 * analysis.max_frame_pixels))


def open_video(
    url: str,
    options: dict[str, str] | None = None,
    timeout: tuple[float, float] | None = None,
    decoder_options: dict[str, str] | None = None,
    timeout_names: tuple[str, str] | None = None,
) -> Any:
    """Open ``url`` and check that it has a video stream FFmpeg can decode; closed again on
    every failure (an RTSP session left open per retry exhausts a camera's session limit).
    ``timeout_names`` name the settings behind ``timeout`` and behind the socket timeout in
    ``options["timeout"]``, for the message of an open that timed out."""
    # Error messages reach the event log, clients and logs: never with the URL's credentials,
    # neither in the URL we name nor in FFmpeg's message, which repeats it.
    shown = redact_text(url, url)
    started = time.monotonic()
    try:
        container = av.open(url, "r", options=options or {}, timeout=timeout)
    except FileNotFoundError:
        missing = SourceError(f"no such file: {shown}", retryable=False)
        missing.kind = "FileNotFoundError"
        raise missing from None
    except (av.error.FFmpegError, OSError) as exc:
        # "from None": the chained exception would print the URL in a traceback. Its class is
        # kept as the error's kind, for the source_errors metric. A timeout reads as one: a
        # server that never answers (or sends no valid reply) failed with "Invalid data found".
        elapsed = time.monotonic() - started
        socket_s = int((options or {}).get("timeout", 0)) / 1_000_000 or None
        open_name, read_name = timeout_names or (None, None)
        if timeout is not None and _timed_out(exc, elapsed, timeout[0]):
            raise _timeout_error(f"cannot open {shown}: no valid answer from the server within", timeout[0], open_name) from None
        if _timed_out(exc, elapsed, socket_s):
            assert socket_s is not None
            raise _timeout_error(f"cannot open {shown}: no valid answer from the server for", socket_s, read_name) from None
        failed = SourceError(f"cannot open {shown}: {redact_text(str(exc), url)}", retryable=True)
        failed.kind = type(exc).__name__
        raise failed from None
    try:
        tracks = video_tracks(container)
        if not tracks:
            only_art = " (only cover art)" if container.streams.video else ""
            raise SourceError(f"{shown} has no video stream{only_art}", retryable=False)
        video = tracks[0]
        if video.codec_context is None:
            # No decoder in this FFmpeg build, or a codec FFmpeg does not know at all. PyAV
            # names a codec only through its decoder, so the name is not known here either.
            # Retrying cannot help (it left one RTSP session open per retry).
            raise SourceError(f"{shown}: unsupported video codec (no decoder in this FFmpeg build)", retryable=False)
        # FRAME threading doubles latency over RTSP (DESIGN.md); it can only be set before decoding.
        video.thread_type = "SLICE"
        if decoder_options:
            video.codec_context.options = dict(decoder_options)
    except BaseException:
        container.close()
        raise
    return container


class FileSource(ThreadedSource):
    """A video file, paced at its timestamps like a live stream, optionally looped."""

    kind: ClassVar[str] = "file"

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    def __init__(
        self,
        stream_id: str,
        path: str,
        *,
        metrics: Metrics,
        clock: Clock | None = None,
        loop: bool = False,
        realtime: bool = True,
    ) -> None:
        super().__init__(stream_id, metrics=metrics, clock=clock)
        self.path = path[len("file://") :] if path.startswith("file://") else path
        self.loop = loop
        self.realtime = realtime
        self.lossless = not realtime  # read as fast as analysis goes: every frame, sampled by its time
        self.reconnect = False
        self._container: Any = None
        self._offset = 0.0  # stream-time offset accumulated over loops

    @classmethod
    def from_stream(
        cls, stream: StreamConfig, *, settings: Settings, metrics: Metrics, clock: Clock | None = None
    ) -> FileSource:
        plugin_config(cls, stream.options)
        cls.validate_url(stream.url)
        return cls(stream.id, stream.url, metrics=metrics, clock=clock, loop=stream.loop, realtime=stream.realtime)

    @classmethod
    def validate_url(cls, url: str) -> None:
        """Only the form: whether the file is there is the source's first open to find out, as
        a camera's reachability is. A file missing when the service starts (a share not mounted
        yet) fails its own stream, with "no such file", and the other streams run on."""
        path = url[len("file://") :] if url.startswith("file://") else url
        if not path or "\0" in path:
            raise ConfigError(f"not a file path: {path!r}")

    def _open(self) -> None:
        refuse_playlist(self.path)
        self._container = open_video(self.path)

    def _close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def _read(self) -> Iterator[Frame]:
        started = self.clock.monotonic()
        errors_in_a_row = 0  # since the last frame, across passes of a looped file

        def decode_error(exc: BaseException) -> None:
            nonlocal errors_in_a_row
            errors_in_a_row += 1
            self.count_decode_error(exc)

        passes = 0
        while True:
            timeline = Timeline.of(self._container)
            got_frame = False
            # No limit on corrupt packets in a row: a file is finite, and the good video after a
            # corrupt stretch is played; a file with no decodable frame fails below.
            frames = decode_frames(
                self._container, decode_error, max_consecutive_errors=None, consecutive_errors=errors_in_a_row, stop=self._stop
            )
            for vf in frames:
                got_frame, errors_in_a_row = True, 0
                t = self._offset + timeline(None if vf.time is None else float(vf.time))
                if self.realtime:
                    wait = started + t - self.clock.monotonic()
                    if wait > 0 and not self._sleep(wait):
                        return
                if self._stop.is_set():
                    return
                yield Frame.from_decoded(self.stream_id, self.next_seq(), t, self.clock.monotonic(), vf)
            if self._stop.is_set():
                return
            if not got_frame:
                # A video stream in the program table with no decodable frame (an audio-only
                # MPEG-TS, every packet corrupt): looping would re-read it at full speed for ever.
                where = "after seeking back to the start" if passes else f"in {self.path}"
                corrupt = f" ({errors_in_a_row} corrupt packets)" if errors_in_a_row else ""
                raise SourceError(f"no decodable video frame {where}{corrupt}", retryable=False)
            if not self.loop:
                return
            passes += 1
            self._offset += timeline.t + timeline.step
            try:
                self._container.seek(0)
            except (av.error.FFmpegError, OSError):
                # A raw H.264/HEVC elementary stream (.h264, a common camera dump) cannot seek
                # (av.error.PermissionError): start it again from a fresh open instead.
                logger.debug("cannot seek %s; reopening it to loop", self.path, exc_info=True)
                self._close()
                self._open()


class RtspSource(ThreadedSource):
    """RTSP over TCP with FFmpeg's low-latency options; a stalled server is caught by the
    read timeout, and every failure reconnects with jittered backoff."""

    kind: ClassVar[str] = "rtsp"

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
        transport: str = Field("tcp", pattern="^(tcp|udp)$", description="RTSP transport; UDP had a 284 ms p99 here.")
        # At most 300 s: FFmpeg takes them in microseconds as an int (2148 s overflowed,
        # and the stream could never open), and a source blocked that long cannot be stopped.
        open_timeout_s: float = Field(
            5.0, gt=0, le=300,
            description="Connection and handshake timeout (at most 300 s). Each read of the handshake is also bounded by read_timeout_s, "
            "so a camera slow to answer DESCRIBE needs read_timeout_s raised too. The handshake and the probe of the stream after it "
            "each get this long, so an open can take up to twice as long.",
        )
        read_timeout_s: float = Field(
            2.0, gt=0, le=300, description="A server silent this long counts as stalled; the source reconnects (at most 300 s)."
        )
        # Packets that decode to nothing pass the read timeout: parameter sets that never come,
        # an encoder hung behind a packetizer that still sends filler. Long enough for the first
        # keyframe of a camera with a long GOP (H.264+/"smart codec" modes go past 10 s).
        frame_timeout_s: float = Field(
            20.0, gt=0, le=300,
            description="A stream whose video packets have decoded to no frame this long (since the open or the last frame) reconnects "
            "(at most 300 s). It must exceed the camera's keyframe interval.",
        )
        # FFmpeg accepts any certificate unless told otherwise: an rtsps:// camera's password went
        # to whoever answered on the path, self-signed certificate and wrong name included.
        tls_verify: bool = Field(
            True,
            description="rtsps:// only: check the server's certificate (against ca_file, or the system's trusted CAs) and its host name. "
            "false accepts any certificate: whoever intercepts the connection gets the camera's password and video.",
        )
        ca_file: str | None = Field(None, description="rtsps:// only: a PEM file of the CA (or self-signed certificate) the camera's certificate must chain to.")

        @field_validator("ca_file")
        @classmethod
        def _ca_file_exists(cls, value: str | None) -> str | None:
            if value is not None and not Path(value).is_file():
                raise ValueError(f"no such file: {value}")
            return value

    def __init__(
        self, stream_id: str, url: str, *, metrics: Metrics, clock: Clock | None = None, config: Config | None = None
    ) -> None:
        super().__init__(stream_id, metrics=metrics, clock=clock)
        self.url = url
        self.config = config or self.Config()
        self._container: Any = None
        self._t0: float | None = None

    @classmethod
    def from_stream(
        cls, stream: StreamConfig, *, settings: Settings, metrics: Metrics, clock: Clock | None = None
    ) -> RtspSource:
        config = plugin_config(cls, stream.options)
        assert isinstance(config, cls.Config)
        cls.validate_url(stream.url)
        return cls(stream.id, stream.url, metrics=metrics, clock=clock, config=config)

    @classmethod
    def validate_url(cls, url: str) -> None:
        if not url.lower().startswith(("rtsp://", "rtsps://")) or len(url) < 10:
            raise ConfigError(f"not an rtsp:// URL: {redact_url(url)!r}")

    def _open(self) -> None:
        c = self.config
        options = dict(RTSP_OPTIONS)
        options["rtsp_transport"] = c.transport
        options["timeout"] = str(int(c.read_timeout_s * 1_000_000))
        tls = self.url.lower().startswith("rtsps://")
        options.update(tls_options(self.url, c.tls_verify, c.ca_file))
        try:
            self._container = open_video(
                self.url,
                options,
                timeout=(c.open_timeout_s, c.read_timeout_s),
                decoder_options=STREAM_DECODER_OPTIONS,
                timeout_names=("open_timeout_s", "read_timeout_s"),
            )
        except SourceError as exc:
            if tls and c.tls_verify:
                raise with_tls_hint(exc, "Set options.ca_file to its CA or certificate; tls_verify: false accepts any") from None
            raise

    def _close(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # closing a broken connection may itself fail
                logger.debug("closing stream %s failed", self.stream_id)  # not the URL: it may hold a password
            self._container = None

    def _read(self) -> Iterator[Frame]:
        frames = decode_frames(
            self._container,
            self.count_decode_error,
            max_video_gap_s=self.config.read_timeout_s,
            read_timeout_s=self.config.read_timeout_s,
            read_timeout_name="read_timeout_s",
            stop=self._stop,
            max_frame_gap_s=self.config.frame_timeout_s,
            frame_gap_name="frame_timeout_s",
        )
        for vf in frames:
            now = self.clock.monotonic()
            if self._t0 is None:
                self._t0 = now
            # Stream time is the monitor's clock since the first frame: it keeps running
            # across reconnects, so policy durations stay in real seconds.
            yield Frame.from_decoded(self.stream_id, self.next_seq(), now - self._t0, now, vf)
            if self._stop.is_set():
                return


# Where Debian, Red Hat and Alpine keep the system's trusted CAs, should Python's ssl module name none.
_CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem")


def system_ca_file() -> str | None:
    """The system's bundle of trusted CAs (``SSL_CERT_FILE`` if set), or None.

    The GnuTLS inside PyAV's wheel looks for the system's CAs at a Red Hat path only and loaded
    none on Debian, so a camera or server with a certificate from a public CA was refused
    unless given ``ca_file``: FFmpeg is always given this file instead."""
    found = ssl.get_default_verify_paths().cafile
    if found:
        return found
    return next((path for path in _CA_BUNDLES if os.path.isfile(path)), None)


def tls_options(url: str, verify: bool = True, ca_file: str | None = None) -> dict[str, str]:
    """FFmpeg options that make an rtsps:// or https:// connection check the server's
    certificate and host name (FFmpeg accepts any certificate unless told), against ``ca_file``
    or the system's trusted CAs."""
    if not url.lower().startswith(("rtsps://", "https://")):
        return {}
    options = {"tls_verify": "1" if verify else "0"}
    trusted = ca_file or (system_ca_file() if verify else None)
    if trusted:
        options["ca_file"] = trusted
    return options


def with_tls_hint(exc: SourceError, fix: str) -> SourceError:
    """GnuTLS's refusal of a certificate reaches us as a bare "Input/output error": say what to check."""
    if "Input/output error" not in str(exc):
        return exc
    hint = SourceError(
        f"{exc} (TLS: is the server's certificate trusted and issued for this host name? {fix})", retryable=exc.retryable
    )
    hint.kind = exc.kind
    return hint


def sample_video(
    url: str,
    fps: float,
    *,
    max_duration_s: float | None = None,
    on_decode_error: Callable[[BaseException], None] | None = None,
    tls_verify: bool = True,
    ca_file: str | None = None,
) -> Iterator[Frame]:
    """Decode a file (as fast as possible) or a live URL and yield frames sampled at ``fps``
    by timestamp, for offline scans. ``received_at`` is the monotonic time after decoding.
    An rtsps:// or https:// server's certificate is checked as the service checks a camera's
    (against ``ca_file`` or the system's CAs) unless ``tls_verify`` is false."""
    errors: list[BaseException] = []
    live = url.lower().startswith(("rtsp://", "rtsps://"))
    remote = "://" in url and not url.startswith("file://")
    read_timeout_s: float | None = None
    tls = tls_options(url, tls_verify, ca_file)
    try:
        if live:
            container = open_video(url, {**RTSP_OPTIONS, **tls}, timeout=(5.0, 5.0), decoder_options=STREAM_DECODER_OPTIONS)
            read_timeout_s = int(RTSP_OPTIONS["timeout"]) / 1_000_000  # the socket's, which fires first
        elif remote:
            # http(s), HLS...: a server that accepts and never answers held a scan for ever.
            container = open_video(url, tls or None, timeout=(5.0, 5.0))
            read_timeout_s = 5.0
    except SourceError as exc:
        if tls and tls_verify:
            raise with_tls_hint(exc, "Pass --ca-file with its CA or certificate; --insecure accepts any") from None
        raise
    if not remote:
        # Absolute: a relative path FFmpeg would read as a protocol ("pipe:0", "http:x" under a
        # root of ".") names a file here, as a manifest's path always does.
        container = open_video(os.path.abspath(url[len("file://") :] if url.startswith("file://") else url))
    corrupt = 0

    def on_error(exc: BaseException) -> None:
        nonlocal corrupt
        corrupt += 1
        (on_decode_error or errors.append)(exc)

    try:
        interval = 1.0 / fps
        next_t = 0.0
        timeline = Timeline.of(container, live=live)
        seq = decoded = 0
        # A file's corrupt stretch is skipped however long it is (the video after it is
        # scanned), as a file stream skips it; a URL that sends 50 corrupt packets in a row fails.
        frames = decode_frames(
            container,
            on_error,
            max_consecutive_errors=50 if remote else None,
            max_video_gap_s=5.0 if live else None,
            read_timeout_s=read_timeout_s,
            max_frame_gap_s=RtspSource.Config().frame_timeout_s if live else None,
        )
        for vf in frames:
            decoded += 1
            t = timeline(None if vf.time is None else float(vf.time))
            if max_duration_s is not None and t > max_duration_s:
                return
            if t + 1e-6 < next_t:
                continue
            # A fixed grid keeps timelines aligned with stream time even after gaps.
            while next_t <= t + 1e-6:
                next_t += interval
            seq += 1
            yield Frame.from_decoded("scan", seq, t, time.monotonic(), vf)
        if not decoded:
            # As a file stream of the service fails on it: not "no frames, no alert" (a short
            # file of corrupt packets passed as genuine, a longer one failed at 50 in a row).
            detail = f" ({corrupt} corrupt packets)" if corrupt else ""
            raise SourceError(f"no decodable video frame in {redact_text(url, url)}{detail}", retryable=False)
    finally:
        container.close()

"""Sources under bad conditions: credentials never leak into errors, a flapping or dead camera
neither retries at full speed nor floods the event log, files that cannot seek or whose
timestamps stand still still play."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from monitor.alerts.bus import EventBus
from monitor.alerts.eventlog import EventLog
from monitor.clock import FakeClock, SystemClock
from monitor.config import StreamConfig, load_settings
from monitor.errors import SourceEnded, SourceError
from monitor.metrics import Metrics
from monitor.pipeline.manager import StreamManager
from monitor.sources.av_source import FileSource, RtspSource, sample_video
from monitor.sources.base import ThreadedSource, redact_text
from monitor.sources.demo_media import write_clip
from monitor.types import Frame, StreamState
from tests.support.fake_time import FakeTimeFile
from tests.support.media import frozen_timestamps_mkv
from tests.support.rtsp_server import GarbageRtspServer
from tests.unit.test_stream_teardown import Constant, NoFaces

DEADLINE_S = 20.0  # generous for a busy machine; a missing fix never meets the condition


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(condition: Any, what: str, timeout_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


# --- credentials ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("userinfo", "secrets"),
    [
        ("admin:s3cret", ("s3cret",)),
        ("admin:p%40ss%3Aw0rd", ("p%40ss", "p@ss:w0rd", "w0rd")),  # percent-encoded "p@ss:w0rd"
    ],
)
async def test_rtsp_credentials_reach_no_error_event_or_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, userinfo: str, secrets: tuple[str, ...]
) -> None:
    # A real RtspSource and FFmpeg against a port with nothing listening: FFmpeg's own message
    # repeats the URL. Before, last_error, every stored "reconnecting" event and the warning
    # log line held the password (twice).
    caplog.set_level(logging.DEBUG)
    log = EventLog(tmp_path / "events.sqlite3")
    metrics = Metrics()
    bus = EventBus(log, metrics)
    settings = load_settings(None, data_dir=tmp_path, demo=False)
    m = StreamManager(settings, bus, metrics, SystemClock(), Constant, lambda stream_id: NoFaces())
    try:
        url = f"rtsp://{userinfo}@127.0.0.1:{free_port()}/live"
        pipeline = await m.add(StreamConfig(id="cam", url=url))
        await until(lambda: pipeline.source.status.reconnects >= 2 and log.last_id(), "two reconnects")
        last_error = pipeline.status().last_error or ""
        # The metric names what failed underneath (it said SourceError for every error).
        kinds = {
            sample.labels["kind"]
            for family in metrics.registry.collect() if family.name == "deepfake_monitor_source_errors"
            for sample in family.samples if sample.name.endswith("_total")
        }
        assert kinds == {"ConnectionRefusedError"}, kinds
    finally:
        await m.aclose()
        await bus.aclose()
    stored = " ".join(payload for _, payload in log.read_since(0, 1000))
    log.close()
    assert "rtsp://***@127.0.0.1" in last_error and "refused" in last_error.lower()  # still says what failed
    assert "rtsp://***@127.0.0.1" in stored
    for text in (last_error, stored, caplog.text):
        assert "admin" not in text
        for secret in secrets:
            assert secret not in text


def test_redact_text_hides_every_form_of_the_credentials() -> None:
    url = "rtsp://admin:p%40ss%3Aw0rd@cam.local:554/live?token=abc123"
    text = (
        f"cannot open {url}: Connection refused: '{url}'; as decoded admin:p@ss:w0rd; "
        "another rtsp://u:raw@at@host/x"
    )
    out = redact_text(text, url)
    for secret in ("p%40ss", "p@ss", "w0rd", "abc123", "raw@at", "u:raw"):
        assert secret not in out
    assert "rtsp://***@cam.local:554/live?token=***" in out and "rtsp://***@host/x" in out
    assert redact_text("read failed: Connection timed out") == "read failed: Connection timed out"
    # user:password is hidden wherever it appears, a scheme or not.
    assert redact_text("tried //cam:s3cret@10.0.0.1", "rtsp://cam:s3cret@10.0.0.1/live") == "tried //***@10.0.0.1"
    # A user name alone is hidden as a word, not inside other words.
    named = "rtsp://cam@cam.local/live"
    assert redact_text(f"camera offline: user cam refused at {named}", named) == (
        "camera offline: user *** refused at rtsp://***@cam.local/live"
    )


def test_the_source_errors_kind_is_what_failed_underneath() -> None:
    from monitor.sources.base import error_kind

    def raised(make: Any) -> BaseException:
        try:
            make()
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            return exc
        raise AssertionError("nothing raised")

    def chained() -> None:
        try:
            raise ConnectionRefusedError(111, "refused")
        except OSError as exc:
            raise SourceError("cannot open") from exc

    def suppressed() -> None:
        try:
            raise TimeoutError
        except TimeoutError:
            raise SourceError("no video for 3.0 s") from None

    def named() -> None:
        err = SourceError("cannot open rtsp://***@cam/live")
        err.kind = "InvalidDataError"
        raise err from None

    assert error_kind(raised(chained)) == "ConnectionRefusedError"
    assert error_kind(raised(suppressed)) == "SourceError"  # the source's own finding
    assert error_kind(raised(named)) == "InvalidDataError"


class LeakyPlugin(ThreadedSource):
    """A source plugin that puts its URL into its errors: an unexpected exception first (logged
    with its traceback), then a fatal SourceError."""

    def __init__(self, url: str) -> None:
        super().__init__("cam", metrics=Metrics())
        self.url = url
        self.details: list[str] = []
        self.on_state(lambda state, detail: self.details.append(detail))
        self._tries = 0

    def _open(self) -> None:
        self._tries += 1
        if self._tries == 1:
            raise RuntimeError(f"cannot reach {self.url}")
        raise SourceError(f"401 from {self.url} (user {self.url.split('//')[1].split(':')[0]})", retryable=False)

    def _read(self) -> Iterator[Frame]:
        yield from ()

    def _sleep(self, seconds: float) -> bool:
        return not self._stop.is_set()


async def test_any_source_plugin_errors_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    # The shared machinery redacts what any plugin reports: last_error, state details, the
    # error that ends the stream, and the log lines (a traceback included).
    caplog.set_level(logging.DEBUG)
    source = LeakyPlugin("https://whepuser:t0pS3cret@media.example/whep/cam?token=abc123")
    await source.start()
    with pytest.raises(SourceError) as ended:
        await asyncio.wait_for(source.recv(), DEADLINE_S)
    await source.aclose()
    assert source.status.state == StreamState.FAILED
    shown = [str(ended.value), source.status.last_error or "", *source.details, caplog.text]
    assert "https://***@media.example/whep/cam?token=***" in shown[0]
    assert "RuntimeError: cannot reach https://***@media.example" in caplog.text  # the traceback is kept
    assert not [text for text in shown if "t0pS3cret" in text or "abc123" in text]


# --- backoff and reconnect events -------------------------------------------------------------


class Scripted(ThreadedSource):
    """Connection n delivers ``frames[n]`` frames (with ``gap_s`` of clock time between them),
    then fails with ``errors[n]``. Backoff sleeps are recorded, not slept."""

    def __init__(self, errors: list[str], frames: list[int], clock: FakeClock, gap_s: float = 0.0) -> None:
        super().__init__("cam", metrics=Metrics(), clock=clock)
        self.errors, self.frames, self.gap_s = errors, frames, gap_s
        self.fake_clock = clock
        self.delays: list[float] = []
        self.states: list[tuple[StreamState, str]] = []
        self.on_state(lambda state, detail: self.states.append((state, detail)))
        self._n = 0

    def _open(self) -> None:
        if self._n >= len(self.errors):
            self._stop.wait()  # script done: a camera that hangs until removed
            raise SourceError("stopped", retryable=True)
        if not self.frames[self._n]:
            n, self._n = self._n, self._n + 1
            raise SourceError(self.errors[n], retryable=True)

    def _read(self) -> Iterator[Frame]:
        n, self._n = self._n, self._n + 1
        for i in range(self.frames[n]):
            if i:
                self.fake_clock.advance(self.gap_s)
            now = time.monotonic()
            yield Frame(self.stream_id, self.next_seq(), now, now, 4, 4, np.zeros((4, 4, 3), np.uint8))
        raise SourceError(self.errors[n], retryable=True)

    def _sleep(self, seconds: float) -> bool:
        self.delays.append(seconds)
        return not self._stop.is_set()


async def run_script(source: Scripted) -> None:
    await source.start()
    try:
        await until(lambda: len(source.delays) >= len(source.errors), "the script to run")
    finally:
        await source.aclose()


async def test_one_frame_per_connection_does_not_reset_the_backoff() -> None:
    # A camera whose keyframe decodes and whose next packets are corrupt: before, its first
    # frame reset the backoff each time, and it reconnected about 5 times a second for ever.
    source = Scripted(["50 corrupt packets in a row"] * 8, [1] * 8, FakeClock())
    await run_script(source)
    assert max(source.delays) >= 2.0, source.delays  # grew towards the 5 s cap (each >= half nominal)


async def test_a_connection_healthy_for_a_while_resets_the_backoff() -> None:
    gap = ThreadedSource.HEALTHY_S / 2 + 0.5  # three frames span more than HEALTHY_S
    source = Scripted(["read failed"] * 6, [1, 1, 1, 1, 3, 1], FakeClock(), gap_s=gap)
    await run_script(source)
    assert source.delays[3] >= 1.0  # the fourth retry in a row: nominal 2 s
    assert source.delays[4] <= 0.25  # after a healthy connection: from the shortest again


async def test_a_camera_down_for_hours_keeps_being_retried() -> None:
    # Before: the 1024th try computed 0.25 * 2**1024, which overflows a float. The source thread
    # died of it and the stream ended as if cleanly, its status still "reconnecting", and
    # nothing retried when the camera came back (about an hour of a refused camera at 5 s).
    tries = 1100
    source = Scripted(["connection refused"] * tries + ["read failed"], [0] * tries + [2], FakeClock())
    await source.start()
    try:
        frame = await asyncio.wait_for(source.recv(), DEADLINE_S)  # the camera is back: frames again
        assert frame.stream_id == "cam" and source.status.reconnects >= tries
        assert max(source.delays) <= 5.0 and min(source.delays[-50:]) >= 2.5
    finally:
        await source.aclose()


async def test_a_failure_of_the_retry_loop_itself_ends_the_stream_as_failed() -> None:
    source = Scripted(["connection refused"] * 3, [0] * 3, FakeClock())

    def broken() -> float:
        raise RuntimeError("bookkeeping bug")

    source._backoff.next_delay = broken  # type: ignore[method-assign]  # noqa: SLF001
    await source.start()
    try:
        with pytest.raises(SourceError, match="RuntimeError: bookkeeping bug") as err:
            await asyncio.wait_for(source.recv(), DEADLINE_S)
        assert not isinstance(err.value, SourceEnded)  # not a clean end: the pipeline reports it
        assert source.status.state == StreamState.FAILED
    finally:
        await source.aclose()


async def test_a_dead_camera_writes_one_reconnecting_event_per_cause() -> None:
    # Before, each retry's "retrying in X s" made a new stream.status event: one every <= 5 s
    # per dead camera in the durable log.
    refused = "cannot open rtsp://cam/live: [Errno 111] Connection refused"
    errors = [refused] * 4 + ["no video for 2.1 s while other streams still play", "no video for 2.4 s while other streams still play"]
    source = Scripted(errors, [0] * 6, FakeClock())
    await run_script(source)
    reconnecting = [detail for state, detail in source.states if state == StreamState.RECONNECTING]
    assert len(reconnecting) == 2, reconnecting  # the cause changed once; numbers are not a cause
    assert reconnecting[0].startswith(refused + "; retrying in") and reconnecting[1].startswith("no video for 2.1 s")
    assert source.status.last_error == errors[-1]  # the current error is still shown


class HiccupOnce(ThreadedSource):
    """Its first open fails with an exception no source anticipates (a decoder or plugin bug);
    every later one delivers frames."""

    def __init__(self) -> None:
        super().__init__("cam", metrics=Metrics(), clock=FakeClock())
        self.states: list[StreamState] = []
        self.on_state(lambda state, detail: self.states.append(state))
        self._tries = 0

    def _open(self) -> None:
        self._tries += 1
        if self._tries == 1:
            raise RuntimeError("decoder hiccup")

    def _read(self) -> Iterator[Frame]:
        while not self._stop.is_set():
            now = time.monotonic()
            yield Frame(self.stream_id, self.next_seq(), now, now, 4, 4, np.zeros((4, 4, 3), np.uint8))
            self._stop.wait(0.01)

    def _sleep(self, seconds: float) -> bool:
        return not self._stop.is_set()


async def test_an_unexpected_error_reconnects_the_camera_instead_of_ending_it() -> None:
    # The service must not die of it, and the camera must stay watched: the stream reconnects
    # as for any retryable error, and the error is counted by its kind.
    source = HiccupOnce()
    await source.start()
    try:
        frame = await asyncio.wait_for(source.recv(), DEADLINE_S)
        assert frame.stream_id == "cam"
        assert source.status.reconnects == 1 and source.status.last_error == "RuntimeError: decoder hiccup"
        assert StreamState.RECONNECTING in source.states and StreamState.FAILED not in source.states
        count = source.metrics.registry.get_sample_value
        assert count("deepfake_monitor_source_errors_total", {"stream": "cam", "kind": "RuntimeError"}) == 1
        assert count("deepfake_monitor_frames_received_total", {"stream": "cam"}) >= 1
        assert count("deepfake_monitor_source_reconnects_total", {"stream": "cam"}) == 1
    finally:
        await source.aclose()


def test_the_rtsp_options_reach_ffmpeg(monkeypatch: pytest.MonkeyPatch) -> None:
    # `transport: udp` (a camera that only streams over UDP) and the read timeout, as FFmpeg's options.
    import monitor.sources.av_source as av_source

    seen: dict[str, str] = {}

    def fake_open(url: str, options: dict[str, str], **kwargs: object) -> None:
        seen.update(options)
        raise SourceError("stop here", retryable=True)

    monkeypatch.setattr(av_source, "open_video", fake_open)
    source = RtspSource("cam", "rtsp://127.0.0.1:8554/x", metrics=Metrics(), config=RtspSource.Config(transport="udp", read_timeout_s=3))
    with pytest.raises(SourceError, match="stop here"):
        source._open()
    assert seen["rtsp_transport"] == "udp" and seen["timeout"] == "3000000"


def test_ffmpegs_own_message_is_redacted_where_it_is_raised() -> None:
    # `monitor scan` prints this error as it is: FFmpeg's text quotes the URL, password and all.
    from monitor.sources.av_source import open_video

    with pytest.raises(SourceError) as failed:
        open_video(f"rtsp://admin:s3cret@127.0.0.1:{free_port()}/live", {"rtsp_transport": "tcp"}, timeout=(2.0, 2.0))
    assert "s3cret" not in str(failed.value) and "admin" not in str(failed.value)


def test_corrupt_packets_count_only_in_a_row() -> None:
    # A live camera losing every other packet still plays: the count starts again at each good one.
    import av.error

    from monitor.sources.av_source import decode_frames

    class Packet:
        def __init__(self, bad: bool) -> None:
            self.bad, self.stream = bad, video

        def decode(self) -> list[str]:
            if self.bad:
                raise av.error.InvalidDataError(1094995529, "Invalid data")
            return ["frame"]

    class Container:
        class streams:  # noqa: N801
            video: list[Any] = []

        def demux(self, *args: object) -> Iterator[Packet]:
            return iter([Packet(i % 2 == 0) for i in range(200)])

    video = type("Stream", (), {"index": 0, "disposition": 0, "codec_context": object()})()
    Container.streams.video = [video]
    errors: list[BaseException] = []
    assert len(list(decode_frames(Container(), errors.append, max_consecutive_errors=50))) == 100
    assert len(errors) == 100


# --- files ------------------------------------------------------------------------------------


async def test_a_raw_h264_file_loops_by_reopening_it(tmp_path: Path) -> None:
    # A raw H.264 elementary stream (a camera dump) cannot seek: before, looping it failed the
    # stream with "PermissionError: [Errno 1] Operation not permitted" after one pass.
    clip = write_clip(tmp_path / "dump.h264", 1.0, fps=10, width=160, height=120)
    source = FileSource("f", str(clip), metrics=Metrics(), loop=True, realtime=False)
    await source.start()
    try:
        frames = [await asyncio.wait_for(source.recv(), DEADLINE_S) for _ in range(25)]
    finally:
        await source.aclose()
    times = [f.pts_s for f in frames]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert source.status.state != StreamState.FAILED


def test_a_file_whose_timestamps_stand_still_is_sampled_by_frame_steps(tmp_path: Path) -> None:
    # Every frame at t = 0: before, sampling at 10 fps kept only the first frame, a live source
    # read the file at full speed, and tracks never expired (their time never moved).
    clip = frozen_timestamps_mkv(tmp_path / "frozen.mkv", frames=30)
    times = [f.pts_s for f in sample_video(str(clip), 10.0)]
    assert len(times) == 30, times  # three seconds: each frame one step of the stream's 10 fps on
    assert times == sorted(times) and len(set(times)) == len(times)


async def test_a_file_whose_timestamps_stand_still_plays_at_a_frame_step(tmp_path: Path) -> None:
    # Every frame at t = 0: before, a realtime file source decoded it as fast as it could, with
    # no pacing at all. On a fake clock the source must wait one frame step (10 fps) per frame,
    # so the last frame leaves 0.9 s of stream time, and of its clock, after the first.
    clip = frozen_timestamps_mkv(tmp_path / "frozen.mkv", frames=10)
    clock = FakeClock()
    started = clock.monotonic()
    source = FakeTimeFile("f", str(clip), metrics=Metrics(), clock=clock, realtime=True)
    await source.start()
    frames: list[Frame] = []
    try:
        while True:  # a slow reader may miss frames, never the last one
            frames.append(await asyncio.wait_for(source.recv(), DEADLINE_S))
    except SourceEnded:
        pass
    finally:
        await source.aclose()
    times = [f.pts_s for f in frames]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert times[-1] == pytest.approx(9 / 10)  # the stream's 10 fps
    # Paced: nine waits of one frame step each, and every frame delivered at its stream time.
    assert source.slept == pytest.approx([0.1] * 9), source.slept
    steps = [i / 10 for i in range(10)]
    assert [f.pts_s for f in source.delivered] == pytest.approx(steps)
    assert [f.received_at - started for f in source.delivered] == pytest.approx(steps)


# --- video FFmpeg cannot play, cover art, corrupt stretches, timeouts ------------------------------


def unknown_codec_mkv(path: Path) -> Path:
    """An mkv whose one video track names a codec FFmpeg does not know: PyAV lists the track,
    with no decoder (``codec_context`` None)."""
    clip = write_clip(path, 1.0, fps=10, width=160, height=120)
    data = clip.read_bytes()
    assert data.count(b"V_MPEG4/ISO/AVC") == 1
    clip.write_bytes(data.replace(b"V_MPEG4/ISO/AVC", b"V_XXXXX/ISO/AVC"))
    return clip


def song_with_cover(path: Path, seconds: float = 2.0) -> Path:
    """An MP3 with an embedded JPEG cover: FFmpeg lists the picture as a video stream with the
    ``attached_pic`` disposition, one frame long."""
    import av
    from av.stream import Disposition

    from monitor.sources.demo_media import render_frame

    with av.open(str(path), "w", format="mp3") as c:
        audio = c.add_stream("mp3", rate=44100)
        audio.layout = "mono"
        cover = c.add_stream("mjpeg", rate=1)
        cover.width, cover.height, cover.pix_fmt = 160, 120, "yuvj420p"
        cover.disposition = Disposition.attached_pic
        image = av.VideoFrame.from_ndarray(render_frame(0, 160, 120), format="rgb24")
        image.pts = 0
        for packet in [*cover.encode(image), *cover.encode(None)]:
            packet.pts = packet.dts = 0
            c.mux(packet)
        for i in range(0, int(44100 * seconds), 1152):
            samples = av.AudioFrame.from_ndarray(np.zeros((1, 1152), np.float32), format="fltp", layout="mono")
            samples.sample_rate, samples.pts = 44100, i
            c.mux(audio.encode(samples))
        c.mux(audio.encode(None))
    return path


async def run_to_the_end(source: FileSource) -> list[Frame]:
    frames: list[Frame] = []
    await source.start()
    try:
        while True:
            frames.append(await asyncio.wait_for(source.recv(), DEADLINE_S))
    except (SourceEnded, SourceError):
        pass
    finally:
        await source.aclose()
    return frames


@pytest.mark.parametrize(("make", "expected"), [
    # Before: "AttributeError: 'NoneType' object has no attribute 'framerate'" (file streams, with
    # a traceback logged as "failed unexpectedly"), and a rich traceback from `monitor scan`.
    (lambda d: unknown_codec_mkv(d / "unknown.mkv"), r"unknown\.mkv: unsupported video codec \(no decoder in this FFmpeg build\)"),
    # Before: the cover picture played as a one-frame video, then "end of stream", no error.
    (lambda d: song_with_cover(d / "song.mp3"), r"song\.mp3 has no video stream \(only cover art\)"),
], ids=["undecodable codec", "cover art only"])
async def test_a_file_without_video_ffmpeg_can_play_fails_clearly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, make: Callable[[Path], Path], expected: str
) -> None:
    from monitor.sources.av_source import open_video

    clip = make(tmp_path)
    with pytest.raises(SourceError, match=expected) as opened:
        open_video(str(clip))
    assert opened.value.retryable is False
    with pytest.raises(SourceError, match=expected):
        list(sample_video(str(clip), 10.0))
    caplog.set_level(logging.DEBUG)
    source = FileSource("f", str(clip), metrics=Metrics(), realtime=False)
    assert await run_to_the_end(source) == []
    assert source.status.state == StreamState.FAILED
    assert re.search(expected, source.status.last_error or "")
    assert "AttributeError" not in caplog.text and "unexpectedly" not in caplog.text


class ScriptedRtsp(GarbageRtspServer):
    """An RTSP server that gets as far as PLAY. ``unknown_codec``: the SDP's only track is video
    in a codec FFmpeg has no depacketizer or decoder for, and RTP flows after PLAY;
    ``silent_after_play``: a valid H.264 SDP, then not one byte; ``filler_only``: the same SDP,
    then H.264 packets that never decode to a frame (access unit delimiters and SEI, as an encoder
    hung behind a live packetizer sends). ``open_connections`` counts the clients still connected."""

    SDP_HEAD = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=x\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=video 0 RTP/AVP 96\r\n"
    SDP = {
        "unknown_codec": SDP_HEAD + "a=rtpmap:96 FOOCODEC/90000\r\na=control:track0\r\n",
        "silent_after_play": SDP_HEAD + "a=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1;"
        "sprop-parameter-sets=Z0LAHtkDxWhAAAADAEAAAAwDxYuS,aMuMsg==\r\na=control:track0\r\n",
    }
    SDP["filler_only"] = SDP["silent_after_play"]
    FILLER = (b"\x09\xf0", b"\x06\x05\x10" + b"\x11" * 16 + b"\x80")  # an AUD, an SEI (user data)

    def __init__(self, script: str) -> None:
        super().__init__("silent")
        self.script = script
        self.open_connections = 0

    def _serve(self, sock: socket.socket) -> None:
        import re
        import struct

        with self._lock:
            self.open_connections += 1
        sock.settimeout(0.05)
        buffer, playing, seq = b"", False, 0
        try:
            while not self._stopping.is_set():
                if playing and self.script == "unknown_codec":
                    seq += 1
                    rtp = struct.pack("!BBHII", 0x80, 96 | 0x80, seq & 0xFFFF, seq * 9000, 1234) + bytes(200)
                    sock.sendall(b"$\x00" + struct.pack("!H", len(rtp)) + rtp)
                if playing and self.script == "filler_only":
                    seq += 1
                    for nal in self.FILLER:  # one access unit of filler every 50 ms (the recv timeout)
                        rtp = struct.pack("!BBHII", 0x80, 96 | 0x80, seq & 0xFFFF, seq * 4500, 1234) + nal
                        sock.sendall(b"$\x00" + struct.pack("!H", len(rtp)) + rtp)
                try:
                    chunk = sock.recv(4096)
                except TimeoutError:
                    continue
                if not chunk:
                    return  # the client closed the connection
                buffer += chunk
                while b"\r\n\r\n" in buffer:
                    request, _, buffer = buffer.partition(b"\r\n\r\n")
                    text = request.decode("latin1")
                    method = text.split(" ", 1)[0]
                    cseq = (re.search(r"CSeq:\s*(\d+)", text, re.IGNORECASE) or [None, "1"])[1]
                    head = f"RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\nSession: 12345678\r\n"
                    if method == "DESCRIBE":
                        sdp = self.SDP[self.script]
                        head += f"Content-Base: {self.url}/\r\nContent-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}"
                    elif method == "SETUP":
                        head += "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n"
                    else:
                        playing = playing or method == "PLAY"
                        head += "Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN\r\n\r\n"
                    sock.sendall(head.encode())
        except OSError:
            return
        finally:
            with self._lock:
                self.open_connections -= 1


async def test_an_rtsp_video_codec_ffmpeg_cannot_decode_fails_once_and_closes_its_session() -> None:
    # Before: "AttributeError: 'NoneType' object has no attribute 'options'", retried for ever,
    # and every try left its RTSP session (a TCP connection) open: a camera with a session
    # limit ran out of sessions.
    from monitor.sources.av_source import RTSP_OPTIONS, STREAM_DECODER_OPTIONS, open_video

    with ScriptedRtsp("unknown_codec") as server:
        for _ in range(3):
            with pytest.raises(SourceError, match="unsupported video codec") as opened:
                open_video(server.url, dict(RTSP_OPTIONS), timeout=(5.0, 2.0), decoder_options=STREAM_DECODER_OPTIONS)
            assert opened.value.retryable is False
        await until(lambda: server.open_connections == 0, "the sessions to be closed", timeout_s=5.0)
        assert server.connections == 3

        metrics = Metrics()
        source = RtspSource("cam", server.url, metrics=metrics)
        await source.start()
        try:
            with pytest.raises(SourceError, match="unsupported video codec"):
                await asyncio.wait_for(source.recv(), DEADLINE_S)
        finally:
            await source.aclose()
        assert source.status.state == StreamState.FAILED and source.status.reconnects == 0
        assert metrics.registry.get_sample_value(
            "deepfake_monitor_source_errors_total", {"stream": "cam", "kind": "SourceError"}
        ) == 1


async def test_a_file_plays_on_past_a_long_corrupt_stretch(tmp_path: Path) -> None:
    # 10 s at 30 fps with 30-60 % of its bytes random: more than 50 corrupt packets in a row.
    # Before, the file stream and the scan failed there ("50 corrupt packets in a row", at
    # about 2.8 s) and the 4 s of good video after the stretch were never analysed.
    import av

    from monitor.sources.av_source import decode_frames
    from tests.support.media import corrupt_clip

    clip = corrupt_clip(tmp_path / "span.mp4", seconds=10.0, fps=30, span=(0.3, 0.6))
    with av.open(str(clip)) as container, pytest.raises(SourceError, match="corrupt packets in a row"):
        list(decode_frames(container, lambda exc: None))  # the live streams' limit: the stretch is that long

    errors: list[BaseException] = []
    scanned = list(sample_video(str(clip), 30.0, on_decode_error=errors.append))
    assert scanned[-1].pts_s > 9.5 and len(errors) >= 50

    source = FileSource("f", str(clip), metrics=Metrics(), realtime=False)
    frames = await run_to_the_end(source)
    assert source.status.state == StreamState.ENDED, source.status.last_error
    assert frames[-1].pts_s > 9.5 and len(frames) == len(scanned)
    assert source.status.decode_errors == len(errors)  # each corrupt packet still counted


@pytest.mark.parametrize("option", ["open_timeout_s", "read_timeout_s"])
def test_rtsp_timeouts_are_bounded(option: str) -> None:
    # Before: 3600 s was accepted (201) and FFmpeg, which takes microseconds as an int, refused
    # it at every open: "[Errno 34] Numerical result out of range", retried for ever.
    from monitor.errors import ConfigError

    assert getattr(RtspSource.Config.model_validate({option: 300}), option) == 300
    for too_long in (301, 2148, 3600):
        with pytest.raises(ConfigError, match=option):
            RtspSource.from_stream(
                StreamConfig(id="cam", url="rtsp://127.0.0.1:8554/live", options={option: too_long}),
                settings=load_settings(None, demo=False),
                metrics=Metrics(),
            )


@pytest.mark.parametrize(
    ("open_s", "read_s", "expected"),
    [
        (0.5, 2.0, "no valid answer from the server within 0.5 s (open_timeout_s)"),
        (2.0, 0.5, "no valid answer from the server for 0.5 s (read_timeout_s)"),  # the socket's timeout fires first
    ],
)
def test_an_rtsp_server_that_never_answers_times_out_as_such(open_s: float, read_s: float, expected: str) -> None:
    # Before: "cannot open rtsp://…: Invalid data found when processing input", kind InvalidDataError.
    from monitor.sources.base import error_kind

    with GarbageRtspServer("silent") as server:
        source = RtspSource("cam", server.url, metrics=Metrics(), config=RtspSource.Config(open_timeout_s=open_s, read_timeout_s=read_s))
        with pytest.raises(SourceError) as failed:
            source._open()  # noqa: SLF001
    assert str(failed.value) == f"cannot open {server.url}: {expected}"
    assert failed.value.retryable and error_kind(failed.value) == "TimeoutError"


def test_an_rtsp_server_that_fails_at_once_keeps_ffmpegs_message() -> None:
    # Only a failure after the timeout is called one: a server that closes the connection
    # fails at once, with "Invalid data", however long the timeouts are.
    from monitor.sources.base import error_kind

    with GarbageRtspServer("close") as server:
        source = RtspSource("cam", server.url, metrics=Metrics(), config=RtspSource.Config(open_timeout_s=0.5, read_timeout_s=0.5))
        with pytest.raises(SourceError) as failed:
            source._open()  # noqa: SLF001
    assert "Invalid data found" in str(failed.value) and error_kind(failed.value) == "InvalidDataError"


def test_an_rtsp_server_that_goes_silent_after_play_times_out_as_such() -> None:
    # Before: "read failed: [Errno 1414092869] Immediate exit requested", kind ExitError: it
    # read like a shutdown, not a stalled camera.
    from monitor.sources.base import error_kind

    with ScriptedRtsp("silent_after_play") as server:
        source = RtspSource("cam", server.url, metrics=Metrics(), config=RtspSource.Config(open_timeout_s=2.0, read_timeout_s=0.5))
        source._open()  # noqa: SLF001
        try:
            with pytest.raises(SourceError) as failed:
                list(source._read())  # noqa: SLF001
        finally:
            source._close()  # noqa: SLF001
    assert str(failed.value) == "no data from the server for 0.5 s (read_timeout_s)"
    assert failed.value.retryable and error_kind(failed.value) == "TimeoutError"


def test_a_camera_silent_after_play_is_given_up_on_after_read_timeout_s_not_open_timeout_s() -> None:
    # PyAV probes the stream under a fresh open timeout; FFmpeg's socket timeout (read_timeout_s)
    # is what ends that probe when nothing comes after PLAY. A change that raised it to
    # open_timeout_s (to let slow handshakes through) made each attempt take open_timeout_s +
    # read_timeout_s (8.5 s here, against about 1 s), and the other tests did not notice.
    with ScriptedRtsp("silent_after_play") as server:
        source = RtspSource("cam", server.url, metrics=Metrics(), config=RtspSource.Config(open_timeout_s=8.0, read_timeout_s=0.5))
        started = time.monotonic()
        with pytest.raises(SourceError, match="read_timeout_s"):
            source._open()  # noqa: SLF001
            try:
                list(source._read())  # noqa: SLF001
            finally:
                source._close()  # noqa: SLF001
    assert time.monotonic() - started < 4.0


async def test_a_camera_whose_packets_never_decode_reconnects_after_frame_timeout_s() -> None:
    # Before: packets kept the read timeout quiet and none was a frame, so the stream stayed
    # "starting" with no error, no reconnect and no stream_up series, for ever.
    with ScriptedRtsp("filler_only") as server:
        metrics = Metrics()
        config = RtspSource.Config(frame_timeout_s=1.0, read_timeout_s=0.5)
        source = RtspSource("cam", server.url, metrics=metrics, config=config)
        await source.start()
        try:
            await until(lambda: source.status.state == StreamState.RECONNECTING, "the blind stream to reconnect")
            await until(lambda: server.connections >= 2, "a second connection")
        finally:
            await source.aclose()
        assert source.status.frames_received == 0
        assert re.fullmatch(r"no decodable video frame for \d+\.\d s while packets still arrive \(frame_timeout_s\)", source.status.last_error or "")
        assert metrics.registry.get_sample_value("deepfake_monitor_source_errors_total", {"stream": "cam", "kind": "SourceError"}) >= 1
        assert not source.left_behind()


async def test_removing_a_stream_whose_packets_never_decode_stops_its_thread() -> None:
    # Before: the stop flag was looked at only between frames, so the thread of a stream whose
    # packets decoded to nothing never saw it: removal waited JOIN_S, then left the thread, its
    # connection and its place under max_streams behind until the camera stopped sending.
    with ScriptedRtsp("filler_only") as server:
        source = RtspSource("cam", server.url, metrics=Metrics(), config=RtspSource.Config(frame_timeout_s=300.0))
        source.JOIN_S = 5.0  # left behind after 5 s instead of 10: the fix stops it within a packet
        await source.start()
        try:
            await until(lambda: server.open_connections == 1, "the connection")
            await asyncio.sleep(1.0)  # well into PLAY: packets flow, none decodes
            assert source.status.state == StreamState.STARTING
        finally:
            await source.aclose()
        assert not source.left_behind()
        assert source._thread is not None and not source._thread.is_alive()  # noqa: SLF001
        await until(lambda: server.open_connections == 0, "the connection to be closed", timeout_s=5.0)


@pytest.mark.parametrize("entry", ["serve", "scan"])
def test_a_huge_rtsp_reply_is_refused_without_allocating_it(entry: str) -> None:
    """A server announcing a 1 GB DESCRIBE reply made FFmpeg allocate (and fill) 1 GB on every
    connection attempt. Under the allocation limit the service and `monitor scan` set, the open
    fails at once. In a child process, so that its peak memory is its own; av is imported
    before cv2, whose wheel bundles another libavutil (the order that once put the cap on it)."""
    import json
    import subprocess
    import sys

    code = (
        "import asyncio, json, resource, sys, tempfile\n"
        "import av, cv2\n"
        "from pathlib import Path\n"
        "from monitor.config import load_settings\n"
        "from monitor.errors import SourceError\n"
        "from monitor.metrics import Metrics\n"
        "from monitor.sources.av_source import RtspSource\n"
        "settings = load_settings(None, data_dir=tempfile.mkdtemp(), demo=False)\n"
        "if sys.argv[2] == 'serve':\n"
        "    from monitor.alerts.bus import EventBus\n"
        "    from monitor.alerts.eventlog import EventLog\n"
        "    from monitor.clock import SystemClock\n"
        "    from monitor.pipeline.manager import StreamManager\n"
        "    log = EventLog(Path(settings.data_dir) / 'e.sqlite3')\n"
        "    StreamManager(settings, EventBus(log, Metrics()), Metrics(), SystemClock(), None, None)\n"
        "    log.close()\n"
        "    source = RtspSource('cam', sys.argv[1], metrics=Metrics(), config=RtspSource.Config(open_timeout_s=20, read_timeout_s=20))\n"
        "    run = source._open\n"
        "else:\n"
        "    from monitor.pipeline.offline import scan\n"
        "    run = lambda: scan(sys.argv[1], settings, detector=object(), faces=object())\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    run()\n"
        "    error = None\n"
        "except SourceError as exc:\n"
        "    error = str(exc)\n"
        "grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024\n"
        "print(json.dumps({'error': error, 'grew_mib': grew}))\n"
    )
    with GarbageRtspServer("huge_reply") as server:
        done = subprocess.run([sys.executable, "-c", code, server.url, entry], capture_output=True, text=True, timeout=120)
        assert server.connections >= 1
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # FFmpeg refuses the allocation and reports the missing SDP; before, it read for 20 s (the
    # open timeout) into 1 GB.
    assert "Invalid data found" in result["error"] and "no valid answer" not in result["error"], result
    assert result["grew_mib"] < 150, result  # without the limit: about 1,000


@pytest.mark.parametrize(("mib", "pixels", "expected"), [(128, 4096 * 4096, 128 << 20), (16, 8192 * 8192, 4 * 8192 * 8192)])
def test_the_allocation_limit_admits_every_frame_the_settings_admit(monkeypatch: pytest.MonkeyPatch, mib: int, pixels: int, expected: int) -> None:
    from monitor.config import AnalysisConfig
    from monitor.sources import av_source

    got: list[int] = []
    monkeypatch.setattr(av_source, "limit_ffmpeg_allocations", got.append)
    av_source.limit_ffmpeg_allocations_for(AnalysisConfig(ffmpeg_max_alloc_mib=mib, max_frame_pixels=pixels))
    assert got == [expected]


# --- found by a mutation audit -------------------------------------------------------------


async def test_stream_up_drops_to_0_when_a_running_source_reconnects() -> None:
    # Two frames, then the read fails; the next connection hangs until the source is removed.
    source = Scripted(["read failed"], [2], FakeClock())
    metrics = source.metrics
    seen: list[tuple[StreamState, float | None]] = []
    source.on_state(
        lambda state, detail: seen.append((state, metrics.registry.get_sample_value("deepfake_monitor_stream_up", {"stream": "cam"})))
    )
    await source.start()
    try:
        deadline = time.monotonic() + 10
        while not any(state == StreamState.RECONNECTING for state, _ in seen):
            assert time.monotonic() < deadline, seen
            await asyncio.sleep(0.02)
    finally:
        await source.aclose()
    assert (StreamState.RUNNING, 1.0) in seen
    assert (StreamState.RECONNECTING, 0.0) in seen, seen  # "1 while the stream delivers frames, else 0"


async def test_backoff_resets_only_after_10_seconds_of_frames() -> None:
    # Four failing one-frame connections grow the backoff; then a connection with 9 s of frames
    # (not healthy yet) must not reset it, and one with 10.5 s of frames must.
    short = Scripted(["read failed"] * 6, [1, 1, 1, 1, 4, 1], FakeClock(), gap_s=3.0)  # 9 s of frames
    await run_script(short)
    assert short.delays[4] >= 1.0, short.delays  # nominal 4 s: not reset
    long = Scripted(["read failed"] * 6, [1, 1, 1, 1, 4, 1], FakeClock(), gap_s=3.5)  # 10.5 s of frames
    await run_script(long)
    assert long.delays[4] <= 0.25, long.delays  # reset: from the shortest delay again

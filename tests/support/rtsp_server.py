"""RTSP servers for tests: a real gst-rtsp-server child process and a garbage-speaking fake."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import socketserver
import tempfile
import threading
from pathlib import Path
from types import TracebackType
from typing import Literal

from monitor.sources.av_source import RTSP_OPTIONS
from tests.support.media import write_raw_rgb
from tests.support.procs import LOOPBACK, ManagedProcess, port_open, wait_until

# Debian's interpreter: python3-gi and the GStreamer typelibs live there, not in the venv.
SYSTEM_PYTHON = "/usr/bin/python3"
GST_SCRIPT = Path(__file__).with_name("gst_rtsp_server.py")

# The service's own low-latency PyAV options, for tests that read the servers below.
PYAV_RTSP_OPTIONS = dict(RTSP_OPTIONS)

_READY = re.compile(r"READY port=(\d+)")


class RtspServer:
    """``rtsp://127.0.0.1:PORT/MOUNT`` served by gst-rtsp-server under Debian's python3.

    ``source="face"`` streams the demo face (pre-rendered here, since Debian's python has no
    numpy), ``"testsrc"`` GStreamer's bouncing ball. The port is kept across ``restart()``,
    so a client can reconnect to the same URL. Interleaved TCP only. ``audio`` adds a PCMU
    tone (with ``source="testsrc"``); ``video_seconds`` stops each client's video after that
    long while audio goes on.
    """

    def __init__(
        self,
        *,
        width: int = 640,
        height: int = 480,
        fps: int = 30,
        mount: str = "/stream",
        source: Literal["face", "testsrc"] = "face",
        faces: int = 1,
        loop_frames: int | None = None,
        key_int: int | None = None,
        x264_threads: int = 1,
        garbage: float = 0.0,
        audio: bool = False,
        video_seconds: float = 0.0,
        port: int = 0,
    ) -> None:
        self.width, self.height, self.fps = width, height, fps
        self.mount = mount if mount.startswith("/") else "/" + mount
        self.port = port  # 0 until the first start picks one
        self._workdir = Path(tempfile.mkdtemp(prefix="rtsp-server-"))
        self._args = [
            f"--mount={self.mount}",
            f"--width={width}",
            f"--height={height}",
            f"--fps={fps}",
            f"--key-int={key_int or 0}",
            f"--x264-threads={x264_threads}",
            f"--garbage={garbage}",
            f"--video-seconds={video_seconds}",
        ]
        if audio:
            self._args.append("--audio")
        if source == "face":
            # One second played forwards then backwards: smooth motion, 27 MB at 480p.
            raw = self._workdir / "frames.rgb"
            write_raw_rgb(raw, loop_frames or fps, fps, width, height, faces)
            self._args.append(f"--raw={raw}")
        self._proc: ManagedProcess | None = None
        self._log_path = self._workdir / "server.log"
        self._log_offset = 0

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("start() the server first: its port is not known yet")
        return f"rtsp://{LOOPBACK}:{self.port}{self.mount}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.running

    def log(self) -> str:
        """Everything the server printed (GStreamer warnings included), across restarts."""
        try:
            return self._log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self, timeout: float = 15.0) -> RtspServer:
        if self.running:
            raise RuntimeError("RTSP server already running")
        env = dict(os.environ, GST_DEBUG=os.environ.get("GST_DEBUG", "2"))
        env.pop("PYTHONPATH", None)  # the venv's packages must not shadow Debian's gi
        self._proc = ManagedProcess(
            [SYSTEM_PYTHON, str(GST_SCRIPT), f"--port={self.port}", *self._args],
            name="gst-rtsp-server",
            env=env,
            log_path=self._log_path,
        )
        self._log_offset = self._log_path.stat().st_size if self._log_path.exists() else 0
        self._proc.start()
        proc = self._proc

        def ready() -> bool:
            match = _READY.search(self.log()[self._log_offset :])
            if match is None:
                return False
            self.port = int(match.group(1))
            return port_open(self.port)

        wait_until(ready, timeout, "gst-rtsp-server", alive=lambda: proc.running, detail=self.log)
        return self

    def stop(self, *, graceful: bool = True) -> None:
        """Stop the server; ``graceful=False`` is kill -9, a crash as clients see it."""
        if self._proc is not None:
            self._proc.stop(graceful=graceful)
            self._proc = None

    def kill(self) -> None:
        self.stop(graceful=False)

    def pause(self) -> None:
        """SIGSTOP: the server hangs with its sockets open, as a frozen camera does."""
        if self._proc is not None:
            self._proc.signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            self._proc.signal(signal.SIGCONT)

    def restart(self, *, graceful: bool = True, timeout: float = 15.0) -> RtspServer:
        """Stop, then start again on the same port."""
        self.stop(graceful=graceful)
        return self.start(timeout)

    def close(self) -> None:
        """Stop for good and delete the pre-rendered frames."""
        self.stop(graceful=False)
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> RtspServer:
        try:
            return self.start() if not self.running else self
        except BaseException:
            self.close()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


GarbageMode = Literal["random", "nonsense", "bad_sdp", "error", "close", "silent", "huge_reply"]


class GarbageRtspServer:
    """A loopback TCP server that answers RTSP clients wrongly, to prove a source fails fast.

    Modes: ``random`` replies with random bytes; ``nonsense`` with a text line that is not
    RTSP; ``bad_sdp`` with a well-formed 200 OK whose SDP is garbage; ``error`` with
    ``RTSP/1.0 500``; ``close`` closes the connection mid-handshake; ``silent`` accepts and
    never answers (only the client's timeout ends it); ``huge_reply`` answers DESCRIBE with a
    1 GB reply, sending bytes until the client hangs up. ``connections`` counts accepted
    connections, so tests can see a client retrying.
    """

    def __init__(self, mode: GarbageMode = "random", *, seed: int = 0) -> None:
        self.mode = mode
        self.connections = 0
        self._rng = random.Random(seed)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with outer._lock:
                    outer.connections += 1
                outer._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server((LOOPBACK, 0), Handler)
        self.port = int(self._server.server_address[1])
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"rtsp://{LOOPBACK}:{self.port}/stream"

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(0.2)  # wake up to notice stop()
        buffer = b""
        while not self._stopping.is_set():
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            if b"\r\n\r\n" not in buffer:
                continue
            request, _, buffer = buffer.partition(b"\r\n\r\n")
            cseq = re.search(rb"CSeq:\s*(\d+)", request, re.IGNORECASE)
            if self.mode == "huge_reply" and request.startswith(b"DESCRIBE"):
                self._send_huge(sock, cseq.group(1).decode() if cseq else "1")
                return
            reply = self._reply(cseq.group(1).decode() if cseq else "1")
            if reply is None:
                if self.mode == "close":
                    return
                continue  # silent
            try:
                sock.sendall(reply)
            except OSError:
                return

    def _send_huge(self, sock: socket.socket, cseq: str) -> None:
        head = f"RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\nContent-Type: application/sdp\r\nContent-Length: 1000000000\r\n\r\n"
        chunk = b"v" * (1 << 20)
        sock.settimeout(5.0)
        try:
            sock.sendall(head.encode())
            for _ in range(1000):  # 1 GB at most, as announced
                if self._stopping.is_set():
                    return
                sock.sendall(chunk)
        except OSError:
            return  # the client hung up

    def _reply(self, cseq: str) -> bytes | None:
        if self.mode == "random":
            with self._lock:
                return self._rng.randbytes(1024)
        if self.mode == "nonsense":
            return b"HELLO THIS IS NOT RTSP \xff\xfe\r\n\r\n"
        if self.mode == "bad_sdp":
            sdp = b"v=banana\r\nm=video zero RTP/AVP x\r\na=rtpmap:x H264/oops\r\n"
            return (
                f"RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\nContent-Type: application/sdp\r\n"
                f"Content-Length: {len(sdp)}\r\n\r\n"
            ).encode() + sdp
        if self.mode == "huge_reply":  # OPTIONS: the DESCRIBE that follows gets the huge reply
            return f"RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\nPublic: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN\r\n\r\n".encode()
        if self.mode == "error":
            return f"RTSP/1.0 500 Internal Server Error\r\nCSeq: {cseq}\r\n\r\n".encode()
        return None  # close, silent

    def start(self) -> GarbageRtspServer:
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> GarbageRtspServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


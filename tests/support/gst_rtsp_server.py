"""A loopback RTSP test server on gst-rtsp-server; runs under Debian's /usr/bin/python3, not the venv.

Needs only python3-gi and GStreamer (no numpy there): the face video comes from a raw RGB
file that the venv side pre-renders (``--raw``), or from ``videotestsrc``.
Prints ``READY port=N`` once clients can connect; SIGTERM or SIGINT stops it cleanly.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
gi.require_version("GstVideo", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer, GstVideo  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one")
    p.add_argument("--mount", default="/stream", help="path, e.g. /stream")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument(
        "--raw",
        help="file of concatenated WxHx3 RGB frames, played forwards then backwards so the "
        "motion has no jump where it loops; without it, videotestsrc",
    )
    p.add_argument("--key-int", type=int, default=0, help="keyframe interval; 0 means fps")
    p.add_argument(
        "--x264-threads",
        type=int,
        default=1,
        help="x264 threads; >1 with tune=zerolatency gives multi-slice frames (a regression)",
    )
    p.add_argument("--audio", action="store_true", help="also stream a PCMU test tone (pay1)")
    p.add_argument(
        "--video-seconds",
        type=float,
        default=0.0,
        help="stop each client's video after this long (0: never), as a camera whose video "
        "encoder hangs; audio goes on",
    )
    p.add_argument(
        "--garbage",
        type=float,
        default=0.0,
        help="probability per byte of corrupting the encoded H.264 (breakmydata): a valid "
        "RTSP session whose payload decodes with errors",
    )
    return p.parse_args(argv)


class RawFrames:
    """Frames from a raw RGB file, read on demand: a 720p loop is too big to keep in memory."""

    def __init__(self, path: str, width: int, height: int) -> None:
        self.frame_bytes = width * height * 3
        size = os.path.getsize(path)
        if size < self.frame_bytes or size % self.frame_bytes:
            raise SystemExit(f"{path}: {size} bytes is not a whole number of {width}x{height} RGB frames")
        self.count = size // self.frame_bytes
        self.path = path
        self.lock = threading.Lock()
        self.file = open(path, "rb")  # noqa: SIM115 - lives as long as the process

    def read(self, n: int) -> bytes:
        # Forwards then backwards, so a smoothly moving face never jumps at the loop point.
        period = max(1, 2 * self.count - 2)
        k = n % period
        index = k if k < self.count else period - k
        with self.lock:  # one file handle, shared by the pipelines of concurrent clients
            self.file.seek(index * self.frame_bytes)
            return self.file.read(self.frame_bytes)


class Pacer:
    """Feeds one client's appsrc at the frame rate, from need-data in the streaming thread."""

    def __init__(self, frames: RawFrames, fps: int) -> None:
        self.frames = frames
        self.interval = 1.0 / fps
        self.n = 0
        self.next_at = 0.0

    def on_need_data(self, src: Gst.Element, _length: int) -> None:
        now = time.monotonic()
        if self.n == 0 or now - self.next_at > 1.0:  # first frame, or we were paused: resync
            self.next_at = now
        elif self.next_at > now:
            # Sleeping here paces the live source; do-timestamp stamps the buffer on push.
            time.sleep(self.next_at - now)
        data = self.frames.read(self.n)
        # new_allocate + fill: a buffer wrapping Python bytes (new_wrapped) corrupted frames.
        buf = Gst.Buffer.new_allocate(None, len(data), None)
        buf.fill(0, data)
        buf.duration = int(self.interval * Gst.SECOND)
        self.n += 1
        self.next_at += self.interval
        src.emit("push-buffer", buf)


def launch_line(args: argparse.Namespace) -> str:
    fps, w, h = args.fps, args.width, args.height
    if args.raw:
        source = (
            "appsrc name=src is-live=true do-timestamp=true format=time block=false "
            f"caps=video/x-raw,format=RGB,width={w},height={h},framerate={fps}/1 "
            "! videoconvert"
        )
    else:
        source = (
            "videotestsrc is-live=true pattern=ball "
            f"! video/x-raw,width={w},height={h},framerate={fps}/1 ! videoconvert"
        )
    key_int = args.key_int or fps
    encoder = (
        "video/x-raw,format=I420 ! x264enc tune=zerolatency speed-preset=ultrafast bframes=0 "
        f"threads={args.x264_threads} key-int-max={key_int}"
    )
    garbage = ""
    if args.garbage > 0:
        # skip keeps the first keyframe intact so clients get SPS/PPS and start decoding.
        garbage = f" ! breakmydata probability={args.garbage} skip=20000 seed=1"
    if args.video_seconds:
        source += " ! valve name=gate drop=false"
    audio = ""
    if args.audio:
        # audiotestsrc next to the appsrc made PLAY fail (the server's seek): use it with testsrc.
        audio = (
            " audiotestsrc is-live=true wave=sine ! audio/x-raw,rate=8000,channels=1 ! mulawenc "
            "! rtppcmupay name=pay1 pt=0"
        )
    return f"( {source} ! {encoder}{garbage} ! rtph264pay name=pay0 pt=96 config-interval=-1{audio} )"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    Gst.init(None)
    frames = RawFrames(args.raw, args.width, args.height) if args.raw else None

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")  # loopback only: tests must never listen outside
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch_line(args))
    factory.set_shared(False)  # each client gets its own pipeline, starting on a keyframe
    # Interleaved TCP only: UDP transport would bind ports on every interface.
    factory.set_protocols(GstRtsp.RTSPLowerTrans.TCP)

    def on_configure(_factory: GstRtspServer.RTSPMediaFactory, media: GstRtspServer.RTSPMedia) -> None:
        if frames is not None:
            src = media.get_element().get_child_by_name("src")
            src.connect("need-data", Pacer(frames, args.fps).on_need_data)
        if args.video_seconds:
            gate = media.get_element().get_child_by_name("gate")

            def close_gate() -> bool:
                gate.set_property("drop", True)
                return False  # once

            GLib.timeout_add(int(args.video_seconds * 1000), close_gate)

    factory.connect("media-configure", on_configure)

    def on_play_request(_client: GstRtspServer.RTSPClient, ctx: GstRtspServer.RTSPContext) -> None:
        # Frames encoded while the media prerolled never reach the client, so without a fresh
        # keyframe it would wait a whole GOP (1 s) before it could decode anything.
        pay = ctx.media.get_element().get_child_by_name("pay0")
        pay.send_event(GstVideo.video_event_new_upstream_force_key_unit(Gst.CLOCK_TIME_NONE, True, 0))

    server.connect("client-connected", lambda _server, client: client.connect("play-request", on_play_request))

    mount = args.mount if args.mount.startswith("/") else "/" + args.mount
    server.get_mount_points().add_factory(mount, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
        return 2

    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print(f"READY port={server.get_bound_port()} mount={mount}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

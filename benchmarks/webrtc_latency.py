"""WHIP ingest latency on this machine, written to benchmarks/results/webrtc_latency.json (+ .md; or --out).

For 1 and 4 concurrent 640x480@30 publishers (aiortc, VP8, in a separate process) sending
generated face video over WHIP on loopback to the service running in this process:

- frame age: publisher capture (before encoding) -> the frame leaves aiortc's decoder in the
  service. Each frame carries its capture time (CLOCK_MONOTONIC, shared by both processes) as
  a 32-block barcode in its top rows, read back from the decoded Y plane;
- frame->verdict: the frame leaves the decoder -> its verdict is ready (the pipeline's own
  measure), and capture->verdict (both added up, per analysed frame);
- CPU: this process's CPU time over the window, per stream (reception, decode, analysis at
  10 fps), and the publisher process's CPU (render + encode) for reference.

Run (once; the machine is shared): .venv/bin/python benchmarks/webrtc_latency.py [--seconds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("GLOG_minloglevel", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BITS, BLOCK = 32, 16  # 32 blocks of 16x16 pixels in the top-left rows
WIDTH, HEIGHT, FPS = 640, 480, 30


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(np.array(values), q)), 2) if values else None


def summary_ms(values_s: list[float]) -> dict[str, Any]:
    ms = [v * 1000 for v in values_s]
    return {"p50": pct(ms, 50), "p90": pct(ms, 90), "p99": pct(ms, 99), "max": pct(ms, 100), "n": len(ms)}


def stamp(image: np.ndarray, now_ms: int) -> None:
    for bit in range(BITS):
        value = 255 if (now_ms >> bit) & 1 else 0
        image[:BLOCK, bit * BLOCK : (bit + 1) * BLOCK] = value


def read_stamp(vf: Any) -> int:
    """The capture time in ms from the decoded frame's Y plane (block centres)."""
    plane = vf.planes[0]
    y = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)
    centres = y[BLOCK // 2, BLOCK // 2 : BITS * BLOCK : BLOCK]
    return int(sum(1 << bit for bit, v in enumerate(centres) if v > 128))


# --- publisher process ------------------------------------------------------------------


async def publish(base: str, n: int, seconds: float) -> None:
    import av
    import httpx
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription, VideoStreamTrack

    from monitor.sources.demo_media import render_frame
    from monitor.sources.webrtc import set_local_description

    # Pre-rendered 2 s of motion: the publisher's CPU should go to encoding, as a camera's would.
    loop_frames = [render_frame(i / FPS, WIDTH, HEIGHT) for i in range(2 * FPS)]

    class StampedTrack(VideoStreamTrack):
        def __init__(self, offset: int) -> None:
            super().__init__()
            self.offset = offset

        async def recv(self) -> av.VideoFrame:
            pts, time_base = await self.next_timestamp()
            image = loop_frames[(pts // 3000 + self.offset) % len(loop_frames)].copy()
            stamp(image, int(time.monotonic() * 1000) & 0xFFFFFFFF)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(time_base)
            return frame

    pcs = []
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        for i in range(n):
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            pc.addTransceiver(StampedTrack(i * 7), direction="sendonly")
            await set_local_description(pc, await pc.createOffer(), ("127.0.0.1",))
            r = await client.post(f"/whip/pub{i}", content=pc.localDescription.sdp, headers={"Content-Type": "application/sdp"})
            r.raise_for_status()
            await pc.setRemoteDescription(RTCSessionDescription(sdp=r.text, type="answer"))
            pcs.append(pc)
        cpu0 = cpu_seconds()
        await asyncio.sleep(seconds)
        print(json.dumps({"publisher_cpu_s": cpu_seconds() - cpu0}), flush=True)
        for pc in pcs:
            await pc.close()


# --- service side -----------------------------------------------------------------------


async def measure(n: int, seconds: float, warmup: float, data_dir: Path) -> dict[str, Any]:
    from monitor.config import load_settings
    from monitor.pipeline.stream import StreamPipeline
    from monitor.sources.webrtc import WhipTrackSource
    from tests.support.service import running_service

    captured: dict[tuple[str, int], float] = {}  # (stream, seq) -> frame age
    ages: list[float] = []
    f2v: list[float] = []
    c2v: list[float] = []
    recording = False
    bad_stamps = 0

    original_deliver = WhipTrackSource._deliver
    original_record = StreamPipeline._record

    def deliver(self: WhipTrackSource, frame: Any) -> None:
        nonlocal bad_stamps
        now_ms = frame.received_at * 1000
        sent = read_stamp(frame.decoded)
        age_ms = (int(now_ms) - sent) & 0xFFFFFFFF  # modular: the stamp wraps every 49 days
        if age_ms > 5000:
            bad_stamps += 1
        elif recording:
            ages.append(age_ms / 1000)
            captured[(self.stream_id, frame.seq)] = age_ms / 1000
        original_deliver(self, frame)

    def record(self: StreamPipeline, analysis: Any) -> None:
        if recording and analysis.verdicts:
            f2v.append(analysis.latency_s)
            age = captured.get((self.id, analysis.frame_seq))
            if age is not None:
                c2v.append(age + analysis.latency_s)
        original_record(self, analysis)

    WhipTrackSource._deliver = deliver  # type: ignore[method-assign]
    StreamPipeline._record = record  # type: ignore[method-assign]
    try:
        settings = load_settings(None, data_dir=data_dir, demo=False, log_level="WARNING")
        async with running_service(settings) as svc:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--role", "publish", "--base", svc.base, "--n", str(n),
                "--seconds", str(seconds + warmup + 1), stdout=subprocess.PIPE,
            )
            deadline = time.monotonic() + 30
            while len(svc.runtime.manager.list()) < n:
                if time.monotonic() > deadline or proc.returncode is not None:
                    raise RuntimeError("publishers did not connect")
                await asyncio.sleep(0.1)
            await asyncio.sleep(warmup)  # model load, first tracks, jitter buffer settling
            recording = True
            pipelines = svc.runtime.manager.list()
            frames0 = {p.id: (p.source.status.frames_received, p.frames_analysed) for p in pipelines}
            cpu0, wall0 = cpu_seconds(), time.monotonic()
            await asyncio.sleep(seconds)
            cpu, wall = cpu_seconds() - cpu0, time.monotonic() - wall0
            recording = False
            statuses = [p.status() for p in pipelines]
            out, _ = await proc.communicate()
            publisher = json.loads(out.decode().strip().splitlines()[-1])
    finally:
        WhipTrackSource._deliver = original_deliver  # type: ignore[method-assign]
        StreamPipeline._record = original_record  # type: ignore[method-assign]
    received = sum(s.frames_received - frames0[s.id][0] for s in statuses)
    analysed = sum(s.frames_analysed - frames0[s.id][1] for s in statuses)
    return {
        "publishers": n,
        "seconds": round(wall, 2),
        "fps_received_per_stream": round(received / wall / n, 2),
        "fps_analysed_per_stream": round(analysed / wall / n, 2),
        "frame_age_ms": summary_ms(ages),
        "frame_to_verdict_ms": summary_ms(f2v),
        "capture_to_verdict_ms": summary_ms(c2v),
        "frames_dropped": sum(s.frames_dropped for s in statuses),
        "unreadable_stamps": bad_stamps,
        "service_cpu_fraction_of_one_core": round(cpu / wall, 3),
        "service_cpu_per_stream_fraction_of_one_core": round(cpu / wall / n, 3),
        "publisher_cpu_fraction_of_one_core": round(publisher["publisher_cpu_s"] / (seconds + warmup + 1), 3),
        "verdicts": [s.verdict for s in statuses],
    }


async def main_async(seconds: float, warmup: float, counts: list[int]) -> dict[str, Any]:
    import tempfile

    import run_info

    from monitor.config import load_settings

    load_before = round(os.getloadavg()[0], 2)
    results = []
    for n in counts:
        with tempfile.TemporaryDirectory() as tmp:
            results.append(await measure(n, seconds, warmup, Path(tmp)))
        print(json.dumps(results[-1]), flush=True)
    return {
        "machine": {**run_info.machine(), "load_avg_1m_before": load_before},
        **run_info.commit(),
        **run_info.detector(load_settings(None, demo=False).detector.name),  # the service's default, as measure() runs it
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "stream": {"width": WIDTH, "height": HEIGHT, "fps": FPS, "codec": "VP8 (aiortc default)", "analysis_fps": 10.0},
        "jitter_buffer_hold_ms": round(1000 / FPS, 1),
        "target": "p99 frame->verdict < 150 ms beyond the jitter buffer's one-frame hold, 4 publishers",
        "runs": results,
    }


def write_markdown(report: dict[str, Any], path: Path) -> None:
    lines = [
        "# WHIP ingest latency",
        "",
        f"{report['when']}, {report['machine']['cpus']} CPUs (shared, load average {report['machine']['load_avg_1m_before']} before,"
        f" {report['machine']['load_avg_1m']} after), {report['stream']['width']}x"
        f"{report['stream']['height']}@{report['stream']['fps']} VP8 over loopback, analysis at 10 fps, detector"
        f" `{report['detector']}`" + (f" (manifest `{str(report.get('manifest_sha256'))[:8]}...`)" if "manifest_sha256" in report else "")
        + f", commit `{str(report['commit'])[:8]}`" + (" with uncommitted changes." if report["dirty"] else "."),
        "",
        "| publishers | frame age p50/p99 ms | frame->verdict p50/p99 ms | capture->verdict p50/p99 ms | service CPU per stream | publisher CPU | fps in/analysed per stream |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        a, f, c = r["frame_age_ms"], r["frame_to_verdict_ms"], r["capture_to_verdict_ms"]
        lines.append(
            f"| {r['publishers']} | {a['p50']} / {a['p99']} | {f['p50']} / {f['p99']} | {c['p50']} / {c['p99']} | "
            f"{r['service_cpu_per_stream_fraction_of_one_core'] * 100:.0f}% of a core | "
            f"{r['publisher_cpu_fraction_of_one_core'] * 100:.0f}% | {r['fps_received_per_stream']} / {r['fps_analysed_per_stream']} |"
        )
    lines += ["", f"Target: {report['target']} (one frame = {report['jitter_buffer_hold_ms']} ms).", ""]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=4.0)
    parser.add_argument("--counts", default="1,4")
    parser.add_argument("--role", choices=["bench", "publish"], default="bench")
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "webrtc_latency.json", help="where the JSON goes (the .md beside it)")
    args = parser.parse_args()
    if args.role == "publish":
        asyncio.run(publish(args.base, args.n, args.seconds))
        return
    report = asyncio.run(main_async(args.seconds, args.warmup, [int(c) for c in args.counts.split(",")]))
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, out.with_suffix(".md"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Does a long-running service hold its memory, file descriptors and threads? Written to
benchmarks/results/soak.json (and .md).

The service watches streams around the clock, so what one request or one stream leaks adds up
over days. This starts `monitor serve` as an operator would (its own process, a config file),
with `--streams` looped file streams of a generated clip with faces, a policy that alerts on any
face (so alerts open, close and save evidence), and for `--minutes` keeps churning what comes
and goes in a real deployment:
- a stream added through POST /api/streams and, `--churn-s` later, deleted, while the next one
  starts (new sources, trackers, detector windows, metric label sets);
- websocket alert clients that connect, read from `since=0` and go away, every other one by
  closing the connection and the rest by dropping the socket;
- a Prometheus scrape of /metrics and a GET of /api/streams and /api/events each second.

Every `--sample-s` it reads the service process's resident memory (VmRSS), open file
descriptors and threads from /proc. The first `--warmup-frac` of the run (imports, model load,
allocator arenas filling) is left out of the trend; over the rest, the figures are:
- growth in MB per hour, the Theil-Sen slope (the median of pairwise slopes, robust to a
  sample taken during a garbage collection or an arena's growth);
- the ratio of the median RSS of the last three samples to that of the first three after the
  warm-up (a ratio within the run, as machine noise does not move memory much);
- file descriptors and threads after the warm-up, at the end and at most.

Run: .venv/bin/python benchmarks/soak.py [--minutes 15] [--streams 4] [--churn-s 6] [--out benchmarks/results/soak.json]
(`--summarise FILE.json` recomputes a saved run's figures and tables from its samples.)
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import websockets

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from run_info import commit, detector, machine  # noqa: E402

from monitor.sources.demo_media import write_clip  # noqa: E402

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def proc_sample(pid: int) -> dict[str, float]:
    """Resident memory (MB), open descriptors and threads of ``pid``, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.split()
    return {
        "rss_mb": int(fields["VmRSS"][0]) / 1024,
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": int(fields["Threads"][0]),
    }


def theil_sen(ts: list[float], ys: list[float]) -> float:
    """The median of the slopes between every pair of points (per unit of ``ts``)."""
    slopes = [(ys[j] - ys[i]) / (ts[j] - ts[i]) for i, j in itertools.combinations(range(len(ts)), 2) if ts[j] > ts[i]]
    return statistics.median(slopes) if slopes else float("nan")


def per_minute(samples: list[dict[str, float]]) -> list[dict[str, Any]]:
    """Each minute's median and range: what a trend over a noisy series cannot show on its own."""
    out = []
    for minute, rows in itertools.groupby(samples, key=lambda s: int(s["t"] // 60)):
        group = list(rows)
        rss = [s["rss_mb"] for s in group]
        threads = [s["threads"] for s in group]
        out.append({
            "minute": minute, "rss_mb_median": round(statistics.median(rss), 1),
            "rss_mb_range": [round(min(rss), 1), round(max(rss), 1)], "threads_range": [min(threads), max(threads)],
        })
    return out


def summarise(samples: list[dict[str, float]], warmup_frac: float) -> dict[str, Any]:
    t_end = samples[-1]["t"]
    steady = [s for s in samples if s["t"] >= warmup_frac * t_end]
    if len(steady) < 6:
        raise SystemExit(f"too few samples after the warm-up ({len(steady)}): run longer or sample more often")
    ts = [s["t"] for s in steady]
    first = statistics.median(s["rss_mb"] for s in steady[:3])
    last = statistics.median(s["rss_mb"] for s in steady[-3:])
    return {
        "samples_after_warmup": len(steady),
        "warmup_s": round(steady[0]["t"], 1),
        "rss_mb": {"after_warmup": round(first, 1), "end": round(last, 1), "max": round(max(s["rss_mb"] for s in steady), 1)},
        "rss_end_to_warmup_ratio": round(last / first, 4),
        "rss_growth_mb_per_hour": round(theil_sen(ts, [s["rss_mb"] for s in steady]) * 3600, 2),
        "fds": {"after_warmup": steady[0]["fds"], "end": steady[-1]["fds"], "max": max(s["fds"] for s in steady)},
        "fds_growth_per_hour": round(theil_sen(ts, [s["fds"] for s in steady]) * 3600, 2),
        "threads": {"after_warmup": steady[0]["threads"], "end": steady[-1]["threads"], "max": max(s["threads"] for s in steady)},
        "per_minute": per_minute(samples),
    }


async def churn_streams(base: str, clip: Path, period_s: float, stop: asyncio.Event, counts: dict[str, int]) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        previous: str | None = None
        for k in itertools.count():
            stream_id = f"churn-{k}"
            r = await http.post("/api/streams", json={"id": stream_id, "url": str(clip), "loop": True})
            r.raise_for_status()
            counts["streams_added"] += 1
            if previous is not None:
                (await http.delete(f"/api/streams/{previous}")).raise_for_status()
                counts["streams_removed"] += 1
            previous = stream_id
            try:
                await asyncio.wait_for(stop.wait(), period_s)
                return
            except TimeoutError:
                pass


async def churn_clients(ws_url: str, stop: asyncio.Event, counts: dict[str, int]) -> None:
    for k in itertools.count():
        if stop.is_set():
            return
        ws = await websockets.connect(f"{ws_url}?since=0", max_size=None)
        deadline = time.monotonic() + 1.0 + (k % 3)
        try:
            while time.monotonic() < deadline:
                try:
                    await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.monotonic()))
                    counts["events_received"] += 1
                except TimeoutError:
                    break
        finally:
            if k % 2:
                ws.transport.abort()  # the client vanishes: no close handshake
            else:
                await ws.close()
        counts["ws_sessions"] += 1


async def poll_api(base: str, stop: asyncio.Event, counts: dict[str, int]) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        while not stop.is_set():
            for path in ("/metrics", "/api/streams", "/api/events?last=100"):
                (await http.get(path)).raise_for_status()
                counts["http_requests"] += 1
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass


async def soak(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    clip = write_clip(work / "faces.mp4", 6.0, fps=30, width=640, height=480, faces=2)
    port = free_port()
    config = work / "soak.yaml"
    streams = "".join(f"  - {{id: steady-{i}, url: '{clip}', loop: true}}\n" for i in range(args.streams))
    config.write_text(
        f"server: {{api_file_roots: ['{work}']}}\n"
        "policy: {suspicious_enter: 0.001, alert_enter: 0.001, hysteresis: 0.0, min_alert_s: 0.0}\n"
        f"streams:\n{streams}"
    )
    log = (work / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "monitor", "serve", "-c", str(config), "--port", str(port), "--data-dir", str(work / "data")],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "GLOG_minloglevel": "2"},
    )
    base = f"http://{LOOPBACK}:{port}"
    counts = dict.fromkeys(("streams_added", "streams_removed", "ws_sessions", "events_received", "http_requests"), 0)
    samples: list[dict[str, float]] = []
    try:
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:
            for _ in range(600):
                if proc.poll() is not None:
                    raise SystemExit(f"the service exited with {proc.returncode}: {(work / 'serve.log').read_text()[-2000:]}")
                try:
                    if (await http.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(churn_streams(base, clip, args.churn_s, stop, counts)),
            asyncio.create_task(churn_clients(f"ws://{LOOPBACK}:{port}/ws/alerts", stop, counts)),
            asyncio.create_task(poll_api(base, stop, counts)),
        ]
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < args.minutes * 60:
            if proc.poll() is not None:
                raise SystemExit(f"the service exited with {proc.returncode} during the soak")
            for task in tasks:
                if task.done() and task.exception():
                    raise task.exception()  # type: ignore[misc]
            samples.append({"t": round(elapsed, 2), **proc_sample(proc.pid)})
            await asyncio.sleep(args.sample_s)
        stop.set()
        await asyncio.gather(*tasks)
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            streams_now = [s["id"] for s in (await http.get("/api/streams")).json()]
            alerts_opened = sum(
                float(line.split()[-1]) for line in (await http.get("/metrics")).text.splitlines()
                if line.startswith("deepfake_monitor_alerts_total")
            )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    return {
        **summarise(samples, args.warmup_frac),
        "counts": {**counts, "alerts_opened": alerts_opened, "streams_at_end": len(streams_now)},
        "exit_code": proc.returncode,
        "samples": samples,
    }


def write_markdown(result: dict[str, Any], path: Path) -> None:
    r, c = result, result["counts"]
    lines = [
        "# Soak: memory, descriptors and threads of one long-running service",
        "",
        f"`monitor serve` for {r['minutes']} min: {r['streams']} looped 640x480@30 file streams with two faces, "
        f"a policy that alerts on any face; one stream added through the API and the one before it deleted "
        f"every {r['churn_s']} s ({c['streams_added']} added, {c['streams_removed']} removed); {c['ws_sessions']} "
        f"websocket alert clients that read from since=0 and left (half without a close), {c['events_received']} "
        f"events sent to them; {c['http_requests']} GETs of /metrics, /api/streams and /api/events; "
        f"{c['alerts_opened']:.0f} alerts opened. Sampled every {r['sample_s']} s; the first {r['warmup_s']} s "
        f"(warm-up) are left out of the trend. {r['machine']['cpus']} CPUs, load average {r['machine']['load_avg_1m']} before.",
        "",
        "| | after warm-up | end | max | trend |",
        "|---|---|---|---|---|",
        f"| RSS (MB) | {r['rss_mb']['after_warmup']} | {r['rss_mb']['end']} | {r['rss_mb']['max']} | "
        f"{r['rss_growth_mb_per_hour']:+} MB/h (Theil-Sen); end / after warm-up {r['rss_end_to_warmup_ratio']} |",
        f"| open file descriptors | {r['fds']['after_warmup']} | {r['fds']['end']} | {r['fds']['max']} | {r['fds_growth_per_hour']:+} per hour |",
        f"| threads | {r['threads']['after_warmup']} | {r['threads']['end']} | {r['threads']['max']} | |",
        "",
        "Each minute (all samples, warm-up included):",
        "",
        "| minute | RSS median (MB) | RSS range (MB) | threads range |",
        "|---|---|---|---|",
        *(
            f"| {m['minute']} | {m['rss_mb_median']} | {m['rss_mb_range'][0]}-{m['rss_mb_range'][1]} | "
            f"{m['threads_range'][0]}-{m['threads_range'][1]} |"
            for m in r["per_minute"]
        ),
        "",
        f"The service exited with status {r['exit_code']} on SIGTERM. Commit `{str(r.get('commit'))[:8]}`"
        f"{' (uncommitted changes)' if r.get('dirty') else ''}.",
    ]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--streams", type=int, default=4, help="steady streams, besides the churned one")
    ap.add_argument("--churn-s", type=float, default=6.0)
    ap.add_argument("--sample-s", type=float, default=5.0)
    ap.add_argument("--warmup-frac", type=float, default=0.2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "soak.json")
    ap.add_argument("--summarise", type=Path, metavar="JSON", help="only recompute the figures and tables of a saved run from its samples")
    args = ap.parse_args()
    if args.summarise:
        saved = json.loads(args.summarise.read_text())
        saved.update(summarise(saved["samples"], args.warmup_frac))
        args.summarise.write_text(json.dumps(saved, indent=1) + "\n")
        write_markdown(saved, args.summarise.with_suffix(".md"))
        print(args.summarise.with_suffix(".md").read_text())
        return
    info = {"machine": machine(), **commit(), **detector("temporal-v1")}
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        result = asyncio.run(soak(args, Path(tmp)))
    result = {
        "minutes": args.minutes, "streams": args.streams, "churn_s": args.churn_s, "sample_s": args.sample_s,
        **info, **result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    write_markdown(result, args.out.with_suffix(".md"))
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()

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
- growth in MB per hour: the Theil-Sen slope over each minute's median RSS (robust to the swing
  of a garbage collection, an arena's growth or a replay), with its 95% interval
  (scipy.stats.theilslopes). With a swing of a couple of hundred MB, a 15-minute run bounds a
  leak only to a few hundred MB an hour either way: read the interval, not the slope alone;
- file descriptors and threads after the warm-up, at the end and at most.

Before the soak, `--sizing` (default 0,1,2,4) starts the service with that many of the same
streams and nothing else (no churn, no clients, no alerts) and records the median RSS after 20 s:
what a stream costs at rest, which the soak's figure (with replays and churn on top) is not.

If this script is stopped (SIGTERM, Ctrl-C) or killed, the service it started stops with it.

Run: .venv/bin/python benchmarks/soak.py [--minutes 15] [--streams 4] [--churn-s 6] [--sizing 0,1,2,4] [--out benchmarks/results/soak.json]
(`--summarise FILE.json` recomputes a saved run's figures and tables from its samples.)
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
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
from prometheus_client.parser import text_string_to_metric_families
from scipy.stats import theilslopes

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
            "fds_median": statistics.median(s["fds"] for s in group),
        })
    return out


def trend_per_hour(per_min: list[dict[str, Any]], key: str) -> dict[str, float]:
    """Theil-Sen slope of each minute's ``key`` against its minute, per hour, with its 95% interval."""
    if len(per_min) < 3:
        return {"slope": float("nan"), "low": float("nan"), "high": float("nan")}
    slope, _, low, high = theilslopes([m[key] for m in per_min], [m["minute"] for m in per_min], alpha=0.95)
    return {"slope": round(slope * 60, 1), "low": round(low * 60, 1), "high": round(high * 60, 1)}


def summarise(samples: list[dict[str, float]], warmup_frac: float) -> dict[str, Any]:
    t_end = samples[-1]["t"]
    steady = [s for s in samples if s["t"] >= warmup_frac * t_end]
    if len(steady) < 6:
        raise SystemExit(f"too few samples after the warm-up ({len(steady)}): run longer or sample more often")
    minutes = per_minute(samples)
    # Whole minutes after the warm-up (a last, partial one has too few samples for a median).
    steady_minutes = [m for m in minutes if m["minute"] * 60 >= steady[0]["t"] and (m["minute"] + 1) * 60 <= t_end]
    return {
        "samples_after_warmup": len(steady),
        "warmup_s": round(steady[0]["t"], 1),
        "rss_mb": {"after_warmup": round(steady[0]["rss_mb"], 1), "end": round(steady[-1]["rss_mb"], 1),
                   "min": round(min(s["rss_mb"] for s in steady), 1), "max": round(max(s["rss_mb"] for s in steady), 1)},
        "rss_minute_medians_mb": [min(m["rss_mb_median"] for m in steady_minutes), max(m["rss_mb_median"] for m in steady_minutes)]
        if steady_minutes else None,
        "rss_growth_mb_per_hour": trend_per_hour(steady_minutes, "rss_mb_median"),
        "fds": {"after_warmup": steady[0]["fds"], "end": steady[-1]["fds"], "min": min(s["fds"] for s in steady), "max": max(s["fds"] for s in steady)},
        "fds_growth_per_hour": trend_per_hour(steady_minutes, "fds_median"),
        "threads": {"after_warmup": steady[0]["threads"], "end": steady[-1]["threads"],
                    "median": statistics.median(s["threads"] for s in steady),
                    "min": min(s["threads"] for s in steady), "max": max(s["threads"] for s in steady)},
        "per_minute": minutes,
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


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the process that started it dies, even by SIGKILL
    (Linux's PR_SET_PDEATHSIG), so a killed benchmark leaves no service behind."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


async def start_service(work: Path, name: str, config: str) -> tuple[subprocess.Popen[bytes], str]:
    """``monitor serve`` with ``config`` on a free loopback port, once /healthz answers."""
    (work / f"{name}.yaml").write_text(config)
    port = free_port()
    with (work / f"{name}.log").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "monitor", "serve", "-c", str(work / f"{name}.yaml"), "--port", str(port),
             "--data-dir", str(work / f"{name}-data")],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "GLOG_minloglevel": "2"},
            preexec_fn=_die_with_parent,
        )
    base = f"http://{LOOPBACK}:{port}"
    async with httpx.AsyncClient(base_url=base, timeout=5) as http:
        for _ in range(600):
            if proc.poll() is not None:
                raise SystemExit(f"the service exited with {proc.returncode}: {(work / f'{name}.log').read_text()[-2000:]}")
            try:
                if (await http.get("/healthz")).status_code == 200:
                    return proc, base
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    stop_service(proc)
    raise SystemExit(f"the service did not answer /healthz within 60 s: {(work / f'{name}.log').read_text()[-2000:]}")


def stop_service(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def streams_yaml(clip: Path, n: int, prefix: str) -> str:
    return "streams:\n" + "".join(f"  - {{id: {prefix}-{i}, url: '{clip}', loop: true}}\n" for i in range(n)) if n else "streams: []\n"


async def sizing(clip: Path, work: Path, counts: list[int]) -> list[dict[str, float]]:
    """Median RSS and threads of a service with N streams and nothing else, 20 s after it answers."""
    rows = []
    for n in counts:
        proc, _ = await start_service(work, f"sizing-{n}", streams_yaml(clip, n, "s"))
        try:
            await asyncio.sleep(20)
            samples = []
            for _ in range(10):
                samples.append(proc_sample(proc.pid))
                await asyncio.sleep(1)
        finally:
            stop_service(proc)
        rows.append({
            "streams": n, "rss_mb_median": round(statistics.median(x["rss_mb"] for x in samples), 1),
            "threads_median": statistics.median(x["threads"] for x in samples),
        })
    return rows


def metric_sum(text: str, sample: str, **labels: str) -> float:
    """The sum of every ``sample`` series in a /metrics page whose labels include ``labels``."""
    return sum(
        s.value for family in text_string_to_metric_families(text) for s in family.samples
        if s.name == sample and labels.items() <= s.labels.items()
    )


async def soak(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    clip = write_clip(work / "faces.mp4", 6.0, fps=30, width=640, height=480, faces=2)
    at_rest = await sizing(clip, work, args.sizing)
    config = (
        f"server: {{api_file_roots: ['{work}']}}\n"
        "policy: {suspicious_enter: 0.001, alert_enter: 0.001, hysteresis: 0.0, min_alert_s: 0.0}\n"
        + streams_yaml(clip, args.streams, "steady")
    )
    proc, base = await start_service(work, "soak", config)
    counts = dict.fromkeys(("streams_added", "streams_removed", "ws_sessions", "events_received", "http_requests"), 0)
    samples: list[dict[str, float]] = []
    try:
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(churn_streams(base, clip, args.churn_s, stop, counts)),
            asyncio.create_task(churn_clients(base.replace("http://", "ws://") + "/ws/alerts", stop, counts)),
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
            metrics = (await http.get("/metrics")).text
    finally:
        stop_service(proc)
    return {
        **summarise(samples, args.warmup_frac),
        "at_rest": at_rest,
        "counts": {
            **counts, "alerts_opened": metric_sum(metrics, "deepfake_monitor_alerts_total"),
            "evidence_saved": metric_sum(metrics, "deepfake_monitor_evidence_total", result="saved"),
            "streams_at_end": len(streams_now),
        },
        "exit_code": proc.returncode,
        "samples": samples,
    }


def write_markdown(result: dict[str, Any], path: Path) -> None:
    r, c = result, result["counts"]
    rss, fds, th = r["rss_mb"], r["fds"], r["threads"]
    g, fg = r["rss_growth_mb_per_hour"], r["fds_growth_per_hour"]
    mm = r["rss_minute_medians_mb"]
    minute_medians = f"{mm[0]}-{mm[1]}" if mm else "- (no whole minute after the warm-up)"
    evidence = f", {c['evidence_saved']:.0f} evidence bundles saved" if "evidence_saved" in c else ""  # runs before it was counted
    lines = [
        "# Soak: memory, descriptors and threads of one long-running service",
        "",
        *([r["note"], ""] if r.get("note") else []),
        f"`monitor serve` for {r['minutes']} min: {r['streams']} looped 640x480@30 file streams with two faces, "
        f"a policy that alerts on any face; one stream added through the API and the one before it deleted "
        f"every {r['churn_s']} s ({c['streams_added']} added, {c['streams_removed']} removed); {c['ws_sessions']} "
        f"websocket alert clients that read from since=0 and left (half without a close), {c['events_received']} "
        f"events sent to them; {c['http_requests']} GETs of /metrics, /api/streams and /api/events; "
        f"{c['alerts_opened']:.0f} alerts opened{evidence}. "
        f"Sampled every {r['sample_s']} s; the first {r['warmup_s']} s (warm-up) are left out of the trend. "
        f"{r['machine']['cpus']} CPUs, load average {r['machine']['load_avg_1m']} before.",
        "",
        "| after the warm-up | first sample | last | min | max | per-minute medians | trend per hour (Theil-Sen over minute medians, 95% interval) |",
        "|---|---|---|---|---|---|---|",
        f"| RSS (MB) | {rss['after_warmup']} | {rss['end']} | {rss['min']} | {rss['max']} | "
        f"{minute_medians} | {g['slope']:+} MB ({g['low']:+} to {g['high']:+}) |",
        f"| open file descriptors | {fds['after_warmup']} | {fds['end']} | {fds['min']} | {fds['max']} | | {fg['slope']:+} ({fg['low']:+} to {fg['high']:+}) |",
        f"| threads | {th['after_warmup']} | {th['end']} | {th['min']} | {th['max']} | median {th['median']} | |",
        "",
    ]
    if r.get("at_rest"):
        lines += [
            "At rest, before the soak (the same streams, nothing else: no churn, clients or alerts; median of 10 samples 20 s after start):",
            "",
            "| streams | RSS (MB) | threads |",
            "|---|---|---|",
            *(f"| {a['streams']} | {a['rss_mb_median']} | {a['threads_median']} |" for a in r["at_rest"]),
            "",
        ]
    lines += [
        "Each minute of the soak (all samples, warm-up included):",
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
    ap.add_argument("--sizing", default="0,1,2,4", help="stream counts to measure at rest before the soak ('' for none)")
    ap.add_argument("--note", default="", help="a line printed under the title of the results (what this run was for)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "soak.json")
    ap.add_argument("--summarise", type=Path, metavar="JSON", help="only recompute the figures and tables of a saved run from its samples")
    args = ap.parse_args()
    args.sizing = [int(n) for n in args.sizing.split(",") if n.strip()]
    # Stopped (SIGTERM): unwind, so the service is stopped and the temporary folder removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.summarise:
        saved = json.loads(args.summarise.read_text())
        saved.update(summarise(saved["samples"], args.warmup_frac), **({"note": args.note} if args.note else {}))
        args.summarise.write_text(json.dumps(saved, indent=1) + "\n")
        write_markdown(saved, args.summarise.with_suffix(".md"))
        print(args.summarise.with_suffix(".md").read_text())
        return
    info = {"machine": machine(), **commit(), **detector("temporal-v1")}
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        result = asyncio.run(soak(args, Path(tmp)))
    result = {
        "minutes": args.minutes, "streams": args.streams, "churn_s": args.churn_s, "sample_s": args.sample_s,
        **({"note": args.note} if args.note else {}), **info, **result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    write_markdown(result, args.out.with_suffix(".md"))
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()

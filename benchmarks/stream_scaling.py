"""How many live streams one service carries on this machine, written to
benchmarks/results/stream_scaling.json (and .md).

`pipeline_latency.py` measures one stream and `docs/operations.md` sized the service by
dividing a core by that stream's CPU share. This runs N streams at once in one service (the
same `runtime` `monitor serve` starts), so that what one stream's figure cannot show is
measured: streams' threads contending for the interpreter lock, the event loop and the cores.

For each N (default 1, 2, 4, 8, 12, 16), N file streams of one generated 720p30 clip with a
face, each paced in real time and looped (its own decoder, tracker and detector window, as a
camera would be), start at once and are analysed at `analysis.fps` (10). After a warm-up, for
`--seconds`, it records:
- each stream's analysed fps (the lowest and the median over streams);
- frame to verdict latency over every verdict of every stream (p50, p90, p99, pooled): from
  the frame leaving its decoder to its verdict, so the source's own frame age is excluded;
- frames dropped by reason (`not_sampled` is the 30 to 10 fps thinning and expected; anything
  else means analysis fell behind);
- process CPU time as cores in use, and CPU per analysed frame relative to the first row.

A stream "keeps up" when it is analysed at >= 95% of `analysis.fps`; the service carried N
when every stream kept up, the pooled frame to verdict p99 stayed under the frame budget
(1/fps), and every stream was running when the measurement ended. The
whole series runs `--repeats` times, interleaved (N = 1, 2, ... then again), so that machine
noise hits every N alike; each figure is the median over repeats.

`--processes 1,2` also runs each N split evenly over two service processes started together,
as two instances of the service would share a machine: where one process stops keeping up
before the machine's cores are used up, the split shows whether the limit is the process.

Run: .venv/bin/python benchmarks/stream_scaling.py [--streams 1,2,4,8,12,16] [--processes 1] [--seconds 15] [--repeats 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("GLOG_minloglevel", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from pipeline_latency import cpu_seconds, pct  # noqa: E402

from monitor.config import StreamConfig, load_settings  # noqa: E402
from monitor.sources.demo_media import write_clip  # noqa: E402

KEEPS_UP = 0.95  # share of analysis.fps a stream must be analysed at
BARRIER_TIMEOUT_S = 120.0  # for every shard to warm up; a start-up takes seconds


def dropped_by_reason(registry: object, ids: list[str]) -> dict[str, float]:
    """deepfake_monitor_frames_dropped_total summed over ``ids``, by reason."""
    out: dict[str, float] = {}
    for family in registry.collect():  # type: ignore[attr-defined]
        if family.name != "deepfake_monitor_frames_dropped":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get("stream") in ids:
                reason = sample.labels["reason"]
                out[reason] = out.get(reason, 0.0) + sample.value
    return out


async def run_shard(clip: Path, ids: list[str], seconds: float, warmup_s: float, data_dir: Path, barrier: Any) -> dict[str, Any]:
    """One service process's share of a measurement: its streams' raw figures. With several
    shards, every one starts measuring at the barrier, once all have warmed up."""
    from monitor.app import runtime

    settings = load_settings(
        None, data_dir=data_dir, demo=False, streams=[StreamConfig(id=i, url=str(clip), loop=True) for i in ids]
    )
    async with runtime(settings) as rt:
        pipelines = [rt.manager.get(i) for i in ids]
        await asyncio.sleep(warmup_s)  # model loads, MediaPipe graphs, first tracks
        if barrier is not None:
            # The streams run on meanwhile. A shard that failed before it got here aborts the
            # barrier (see shard_process), so the others stop at once instead of waiting it out.
            await asyncio.to_thread(barrier.wait, BARRIER_TIMEOUT_S)
        reg = rt.metrics.registry
        start = [p.frames_analysed for p in pipelines]
        dropped0 = dropped_by_reason(reg, ids)
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        mono0 = pipelines[0].clock.monotonic()
        await asyncio.sleep(seconds)
        cpu1, wall1 = cpu_seconds(), time.perf_counter()
        wall = wall1 - wall0
        analysed = [p.frames_analysed - s for p, s in zip(pipelines, start, strict=True)]
        dropped1 = dropped_by_reason(reg, ids)
        return {
            "fps": [a / wall for a in analysed],
            "latencies_ms": [latency * 1000 for p in pipelines for at, latency in list(p.recent_latencies) if at >= mono0],
            "dropped": {k: dropped1.get(k, 0.0) - dropped0.get(k, 0.0) for k in set(dropped1) | set(dropped0)},
            "cpu_s": cpu1 - cpu0,
            "wall_s": wall,
            "states": sorted({p.status().state.value for p in pipelines}),
            "analysis_fps": settings.analysis.fps,
        }


def shard_process(clip: str, ids: list[str], seconds: float, warmup_s: float, data_dir: str, barrier: Any) -> dict[str, Any]:
    try:
        return asyncio.run(run_shard(Path(clip), ids, seconds, warmup_s, Path(data_dir), barrier))
    except BaseException:
        if barrier is not None:
            barrier.abort()  # the other shards' wait raises BrokenBarrierError
        raise


def carried(per_stream_fps: list[float], p99_ms: float, states: list[str], fps: float) -> bool:
    """The rule the results file states: every stream at >= KEEPS_UP of ``fps``, the pooled
    p99 under the frame budget (1/fps), and every stream running at the end."""
    return bool(per_stream_fps) and min(per_stream_fps) >= KEEPS_UP * fps and p99_ms < 1000.0 / fps and states == ["running"]


def measure(clip: Path, n: int, processes: int, seconds: float, warmup_s: float, data_dir: Path) -> dict[str, object]:
    """N streams split as evenly as can be over ``processes`` service processes, run at once,
    each in a fresh process (this one only waits)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ids = [f"cam{i:02d}" for i in range(n)]
    shards = [ids[k::processes] for k in range(processes) if ids[k::processes]]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager, ProcessPoolExecutor(len(shards), mp_context=ctx) as pool:
        barrier = manager.Barrier(len(shards)) if len(shards) > 1 else None
        futures = [
            pool.submit(shard_process, str(clip), shard, seconds, warmup_s, str(data_dir / f"p{k}"), barrier)
            for k, shard in enumerate(shards)
        ]
        parts = [f.result() for f in futures]
    fps = parts[0]["analysis_fps"]
    per_stream_fps = [x for p in parts for x in p["fps"]]
    lat = [x for p in parts for x in p["latencies_ms"]]
    if not lat:
        raise SystemExit(f"N={n}: no verdicts during the measurement: is a face visible in the clip?")
    wall = statistics.mean(p["wall_s"] for p in parts)
    dropped: dict[str, float] = {}
    for p in parts:
        for k, v in p["dropped"].items():
            dropped[k] = dropped.get(k, 0.0) + v
    cpu_s = sum(p["cpu_s"] for p in parts)
    states = sorted({s for p in parts for s in p["states"]})
    p99 = pct(lat, 99)
    row: dict[str, object] = {
        "streams": n,
        "processes": len(shards),
        "states": states,
        "analysed_fps_min": round(min(per_stream_fps), 2),
        "analysed_fps_median": round(statistics.median(per_stream_fps), 2),
        "frame_to_verdict_ms": {"p50": round(pct(lat, 50), 2), "p90": round(pct(lat, 90), 2), "p99": round(p99, 2), "n": len(lat)},
        "dropped_per_s": {k: round(v / wall, 2) for k, v in sorted(dropped.items())},
        "cpu_cores": round(cpu_s / wall, 3),
        "cpu_ms_per_analysed_frame": round(1000 * cpu_s / max(sum(per_stream_fps) * wall, 1), 2),
    }
    row["carried"] = carried(per_stream_fps, p99, states, fps)
    return row


def median_rows(rows: list[dict[str, object]]) -> dict[str, object]:
    """Per N, the median over repeats of each figure; carried only if every repeat carried it."""
    def med(key: str, sub: str | None = None) -> float:
        vals = [float(r[key][sub] if sub else r[key]) for r in rows]  # type: ignore[index]
        return round(statistics.median(vals), 2)

    out: dict[str, object] = {
        "streams": rows[0]["streams"],
        "processes": rows[0]["processes"],
        "analysed_fps_min": med("analysed_fps_min"),
        "analysed_fps_median": med("analysed_fps_median"),
        "frame_to_verdict_ms": {q: med("frame_to_verdict_ms", q) for q in ("p50", "p90", "p99")},
        "cpu_cores": med("cpu_cores"),
        "cpu_ms_per_analysed_frame": med("cpu_ms_per_analysed_frame"),
        "carried_in_every_repeat": all(bool(r["carried"]) for r in rows),
    }
    reasons = sorted({k for r in rows for k in r["dropped_per_s"]})  # type: ignore[union-attr]
    out["dropped_per_s"] = {k: round(statistics.median(float(r["dropped_per_s"].get(k, 0.0)) for r in rows), 2) for k in reasons}  # type: ignore[union-attr]
    return out


def most_carried(summary: list[dict[str, object]], processes: int = 1) -> int:
    """The largest N carried in every repeat, in ``processes`` processes, with every smaller N
    carried too: a larger N that a lull let through, after one that failed, does not count."""
    most = 0
    rows = [r for r in summary if r.get("processes", 1) == processes]
    for r in sorted(rows, key=lambda r: int(r["streams"])):  # type: ignore[call-overload]
        if not r["carried_in_every_repeat"]:
            break
        most = int(r["streams"])  # type: ignore[call-overload]
    return most


def markdown(out: dict[str, object]) -> str:
    m = out["machine"]  # type: ignore[index]
    lines = [
        "# Stream scaling (temporal-v1)",
        "",
        f"{out['clip']['streams_of']} streams, analysed at {out['analysis_fps']} fps, in one service process or split evenly over several; "  # type: ignore[index]
        f"{out['seconds']} s measured per run after {out['warmup_s']} s of warm-up, {out['repeats']} interleaved repeats "
        f"(medians over repeats). {m['cpus']} CPUs, load average {out['load_avg_1m_before']} before, {m['load_avg_1m']} after.",  # type: ignore[index]
        "",
        f"Weights: manifest `{str(out.get('manifest_sha256'))[:8]}...`, commit `{str(out.get('commit'))[:8]}`"
        + (" with uncommitted changes." if out.get("dirty") else "."),
        "",
        "| streams | processes | carried (every repeat) | analysed fps, lowest stream | median stream | frame to verdict p50 ms | p90 | p99 | CPU cores | CPU ms per analysed frame | vs first row | drops/s besides thinning |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = out["summary"]  # type: ignore[index]
    base = rows[0]["cpu_ms_per_analysed_frame"]
    for r in rows:  # type: ignore[union-attr]
        lag = {k: v for k, v in r["dropped_per_s"].items() if k != "not_sampled" and v}
        lat = r["frame_to_verdict_ms"]
        lines.append(
            f"| {r['streams']} | {r['processes']} | {'yes' if r['carried_in_every_repeat'] else 'no'} | {r['analysed_fps_min']} | {r['analysed_fps_median']} | "
            f"{lat['p50']} | {lat['p90']} | {lat['p99']} | {r['cpu_cores']} | {r['cpu_ms_per_analysed_frame']} | "
            f"{r['cpu_ms_per_analysed_frame'] / base:.2f}x | {', '.join(f'{k} {v}' for k, v in lag.items()) or '-'} |"
        )
    lines += [
        "",
        f"Carried: every stream analysed at >= {int(KEEPS_UP * 100)}% of {out['analysis_fps']} fps, frame to verdict p99 under "
        f"{1000 / float(out['analysis_fps']):.0f} ms (the frame budget), every stream running. Most carried in every repeat, with every smaller count carried too: "  # type: ignore[arg-type]
        + ", ".join(f"**{most}** in {p} process{'es' if int(p) > 1 else ''}" for p, most in out["most_streams_carried"].items())  # type: ignore[union-attr]
        + ".",
        "",
        "Every stream plays the same clip (one face, 1280x720 at 30 fps, decoded in full), started together. "
        "CPU is the service processes' own (decoding every frame, MediaPipe, the detector, the event log); split over several "
        "processes, they start measuring together, and figures over streams are taken over all of them. Absolute figures move with the "
        "shared machine's load; compare rows within this file.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--streams", default="1,2,4,8,12,16", help="comma-separated stream counts")
    ap.add_argument("--seconds", type=float, default=15.0, help="measurement length per run")
    ap.add_argument("--warmup", type=float, default=4.0, help="seconds before measuring, per run")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved repeats of the whole series")
    ap.add_argument("--processes", default="1", help="comma-separated service process counts to split each N over, e.g. 1,2")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "stream_scaling.json")
    args = ap.parse_args()
    counts = sorted({int(x) for x in args.streams.split(",") if x.strip()})
    splits = sorted({int(x) for x in args.processes.split(",") if x.strip()})
    if not counts or counts[0] < 1 or not splits or splits[0] < 1:
        ap.error("--streams and --processes need positive counts")

    load_before = round(os.getloadavg()[0], 2)
    runs: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        clip = write_clip(Path(tmp) / "face720.mp4", 20.0, fps=30, width=1280, height=720)
        for rep in range(args.repeats):
            for n in counts:
                for procs in splits:
                    if procs > n:
                        continue
                    row = measure(clip, n, procs, args.seconds, args.warmup, Path(tmp) / f"run{rep}-{n}-{procs}")
                    row["repeat"] = rep
                    runs.append(row)
                    print(json.dumps(row), flush=True)

    import run_info

    settings = load_settings(None, demo=False)
    summary = [
        median_rows([r for r in runs if r["streams"] == n and r["processes"] == procs]) for n in counts for procs in splits if procs <= n
    ]
    out = {
        "machine": run_info.machine(),
        "load_avg_1m_before": load_before,
        **run_info.commit(),
        **run_info.detector(settings.detector.name),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "clip": {"width": 1280, "height": 720, "fps": 30, "faces": 1, "streams_of": "1280x720@30 file"},
        "analysis_fps": settings.analysis.fps,
        "seconds": args.seconds,
        "warmup_s": args.warmup,
        "repeats": args.repeats,
        "keeps_up_share": KEEPS_UP,
        "most_streams_carried": {str(procs): most_carried(summary, procs) for procs in splits},
        "summary": summary,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    args.out.with_suffix(".md").write_text(markdown(out))
    print(markdown(out))


if __name__ == "__main__":
    main()

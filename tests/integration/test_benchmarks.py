"""The benchmarks still run: a short run of each fast one, results to a temporary folder.

Their numbers are not checked here (speed lives in benchmarks, not timed tests); this only
keeps `make bench` from breaking silently when the code it measures changes, as it did once
(a latency record became a tuple)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(script: str, *args: str) -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]


def test_pipeline_latency_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "pipeline_latency.json"
    run("pipeline_latency.py", "--seconds", "2", "--clip-seconds", "3", "--out", str(out))
    result = json.loads(out.read_text())
    live = result["live_720p30"]
    # A latency per analysed frame, and the record names what was measured.
    assert live["frames_analysed"] > 0 and live["frame_to_verdict_ms"]["n"] == live["frames_analysed"], live
    assert result["offline"]["scan_speed_x_realtime"] > 0
    assert result["detector"] == "temporal-v1" and len(result["manifest_sha256"]) == 64 and "commit" in result


def test_detector_latency_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "detector_latency"
    run("detector_latency.py", "--seconds", "1", "--repeats", "2", "--out", str(out))
    result = json.loads(out.with_suffix(".json").read_text())
    ratios = result["onnx_speedup_per_run"]
    assert len(ratios) == 2 and result["onnx_speedup_vs_torch"] == pytest.approx(sum(ratios) / 2)  # the median of two
    assert len(result["manifest_sha256"]) == 64 and out.with_suffix(".md").is_file()


def test_appearance_cost_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "appearance_cost.json"
    run("appearance_cost.py", "--runs", "5", "--out", str(out))
    result = json.loads(out.read_text())
    assert result["ms"]["cnn_w24"]["median"] > 0 and result["ratio_facemesh_to_cnn_median"] > 0
    assert max(result["max_abs_onnx_minus_torch"].values()) < 1e-3  # the ONNX export computes what torch does


def test_webrtc_latency_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "webrtc_latency.json"
    run("webrtc_latency.py", "--seconds", "2", "--warmup", "1", "--counts", "1", "--out", str(out))
    result = json.loads(out.read_text())
    (one,) = result["runs"]
    assert one["publishers"] == 1 and one["frame_to_verdict_ms"]["n"] > 0 and out.with_suffix(".md").is_file()


def test_stream_scaling_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "stream_scaling.json"
    run("stream_scaling.py", "--streams", "2,1", "--processes", "2,1", "--seconds", "2", "--warmup", "2", "--repeats", "1", "--out", str(out))
    result = json.loads(out.read_text())
    # One stream is never split over two processes.
    assert [(r["streams"], r["processes"]) for r in result["summary"]] == [(1, 1), (2, 1), (2, 2)] and len(result["runs"]) == 3
    for r in result["runs"]:
        # Every stream of the run was analysed, and its verdicts' latencies were collected.
        assert r["states"] == ["running"] and r["analysed_fps_min"] > 0 and r["frame_to_verdict_ms"]["n"] > 0, r
        assert r["dropped_per_s"]["not_sampled"] > 0  # the 30 -> 10 fps thinning, counted for the run's streams
    one, two, split = result["runs"]
    # Two streams' frames, in one process and gathered from two.
    assert two["frame_to_verdict_ms"]["n"] > one["frame_to_verdict_ms"]["n"] and split["frame_to_verdict_ms"]["n"] > one["frame_to_verdict_ms"]["n"]
    assert set(result["most_streams_carried"]) == {"1", "2"} and len(result["manifest_sha256"]) == 64
    assert "| 2 | 2 |" in out.with_suffix(".md").read_text()


def test_stream_scaling_counts_only_an_unbroken_run_of_carried_stream_counts() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from stream_scaling import most_carried

    def rows(*carried: tuple[int, bool]) -> list[dict[str, object]]:
        return [{"streams": n, "carried_in_every_repeat": ok} for n, ok in carried]

    assert most_carried(rows((1, True), (2, True), (4, False), (8, True))) == 2  # 8 got through a lull
    assert most_carried(rows((4, True), (1, True), (2, True))) == 4
    assert most_carried(rows((1, False), (2, True))) == 0
    split = [{"streams": 2, "processes": 2, "carried_in_every_repeat": True}, {"streams": 4, "processes": 2, "carried_in_every_repeat": False}]
    assert most_carried(rows((1, True), (2, False)) + split, 2) == 2 and most_carried(rows((1, True), (2, False)) + split) == 1


def test_stream_scaling_applies_the_rule_its_results_state_and_takes_medians_over_repeats() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from stream_scaling import carried, median_rows

    assert carried([10.0, 9.5], 99.9, ["running"], 10.0)
    assert not carried([10.0, 9.49], 50.0, ["running"], 10.0)  # one stream fell behind
    assert not carried([10.0, 10.0], 100.0, ["running"], 10.0)  # p99 at the frame budget
    assert not carried([10.0, 10.0], 50.0, ["reconnecting", "running"], 10.0)
    assert carried([5.0], 199.0, ["running"], 5.0) and not carried([], 1.0, ["running"], 10.0)

    def run(fps_min: float, p99: float, cpu: float, ok: bool, dropped: dict[str, float]) -> dict[str, object]:
        return {
            "streams": 4, "processes": 2, "analysed_fps_min": fps_min, "analysed_fps_median": 10.0, "cpu_cores": cpu,
            "frame_to_verdict_ms": {"p50": 1.0, "p90": 2.0, "p99": p99}, "cpu_ms_per_analysed_frame": 10.0, "carried": ok,
            "dropped_per_s": dropped,
        }

    row = median_rows([run(9.0, 80.0, 1.0, True, {"superseded": 2.0}), run(10.0, 120.0, 2.0, False, {}), run(9.9, 90.0, 1.5, True, {"superseded": 1.0})])
    assert (row["streams"], row["processes"], row["analysed_fps_min"], row["cpu_cores"]) == (4, 2, 9.9, 1.5)
    assert row["frame_to_verdict_ms"] == {"p50": 1.0, "p90": 2.0, "p99": 90.0}
    assert row["dropped_per_s"] == {"superseded": 1.0}  # a repeat without any counts as 0
    assert row["carried_in_every_repeat"] is False


@pytest.mark.parametrize("name", ["detector_accuracy", "detector_accuracy_all"])
def test_detector_accuracy_tables_rebuild_from_a_saved_evaluation(tmp_path: Path, name: str) -> None:
    # The card's split tables come from this mode: it must reproduce the committed ones, clean
    # and degraded. (animated_stills_eval.md is a record of older evaluation code: its banner says so.)
    out = tmp_path / name
    run("detector_accuracy.py", "--from-json", str(ROOT / f"benchmarks/results/{name}.json"), "--out", str(out))
    assert out.with_suffix(".md").read_text() == (ROOT / f"benchmarks/results/{name}.md").read_text()


def test_analysis_rate_benchmark_runs(tmp_path: Path) -> None:
    from monitor.sources.demo_media import write_clip

    for name in ("real/a.mp4", "fake/b.mp4"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        write_clip(tmp_path / name, 2.0, fps=30, width=320, height=240)
    manifest = tmp_path / "m.tsv"
    manifest.write_text("path\tlabel\tduration_s\nreal/a.mp4\treal\t2.0\nfake/b.mp4\tfake\t2.0\n")
    out = tmp_path / "analysis_rate"
    run("analysis_rate.py", str(manifest), "--root", str(tmp_path), "--genuine", "1", "--fake", "1", "--workers", "1", "--out", str(out))
    result = json.loads(out.with_suffix(".json").read_text())
    assert sorted(result["clips"]) == ["fake/b.mp4", "real/a.mp4"] and len(result["runs"]) == 5
    for name, r in result["runs"].items():  # every run scored both clips
        assert sorted(r["scores"]) == ["fake/b.mp4", "real/a.mp4"], name
    assert out.with_suffix(".md").is_file()


def test_soak_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    run("soak.py", "--minutes", "0.4", "--streams", "1", "--sample-s", "1", "--churn-s", "3", "--sizing", "0", "--out", str(out))
    result = json.loads(out.read_text())
    counts = result["counts"]
    # Streams came and went through the API, alert clients connected and left, and the service
    # stopped cleanly on SIGTERM; the trend is taken over the samples after the warm-up.
    assert counts["streams_added"] >= 3 and counts["streams_removed"] == counts["streams_added"] - 1, counts
    assert counts["ws_sessions"] >= 3 and counts["http_requests"] >= 30 and counts["streams_at_end"] == 2, counts
    assert counts["alerts_opened"] > 0 and counts["evidence_saved"] > 0, counts
    assert result["exit_code"] == 0 and result["samples_after_warmup"] >= 6
    assert result["rss_mb"]["after_warmup"] > 50 and result["fds"]["end"] > 0 and result["threads"]["end"] > 1
    (rest,) = result["at_rest"]
    assert rest["streams"] == 0 and rest["rss_mb_median"] > 50
    assert out.with_suffix(".md").is_file()


def test_a_killed_soak_leaves_no_service_behind(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--minutes", "5", "--streams", "0", "--sizing", "", "--out", str(tmp_path / "s.json")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "TMPDIR": str(tmp_path)},  # SIGKILL leaves its temporary folder: here, not in /tmp
    )
    children: list[int] = []
    try:
        for _ in range(600):  # until its service is up
            children = [int(c) for c in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
            if children and Path(f"/proc/{children[0]}/cmdline").read_bytes().count(b"serve"):
                break
            time.sleep(0.1)
        assert children, "the soak started no service"
    finally:
        proc.kill()  # SIGKILL: no handler runs in the benchmark itself
        proc.wait()
    for _ in range(100):
        if not Path(f"/proc/{children[0]}").exists():
            break
        time.sleep(0.1)
    assert not Path(f"/proc/{children[0]}").exists(), "the service outlived the soak that started it"


def test_soak_trend_is_robust_and_leaves_out_the_warm_up() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from soak import summarise

    # 100 MB during the warm-up (the first 20%), then flat with a swing: no growth.
    flat = [{"t": t, "rss_mb": 100.0 if t < 120 else 200.0 + 50 * (t % 20 == 0), "fds": 10, "threads": 5} for t in range(0, 601, 5)]
    got = summarise(flat, 0.2)
    assert got["rss_growth_mb_per_hour"]["slope"] == 0 and got["warmup_s"] == 120 and got["rss_minute_medians_mb"] == [200.0, 200.0]
    # Then 1 MB a minute: 60 MB/h, inside its interval; descriptors one more every 5 minutes.
    rising = [{"t": t * 60.0, "rss_mb": 200.0 + t, "fds": 10 + t // 5, "threads": 5} for t in range(30)]
    got = summarise(rising, 0.2)
    g = got["rss_growth_mb_per_hour"]
    assert g["slope"] == pytest.approx(60.0) and g["low"] <= 60.0 <= g["high"] and got["rss_mb"]["end"] == 229.0
    assert got["fds_growth_per_hour"]["slope"] == pytest.approx(12.0) and got["fds"]["max"] == 15
    # Every sample in its minute, the warm-up's too.
    assert [m["minute"] for m in got["per_minute"]] == list(range(30)) and got["per_minute"][3]["rss_mb_range"] == [203.0, 203.0]

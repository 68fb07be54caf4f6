"""`monitor scan` and `monitor evaluate` at their edges: the output file, an alert on a short
track, option values that make no sense."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from monitor.cli import app
from monitor.sources.demo_media import write_clip
from monitor.training.evaluate import ClipResult, summarise

UNWRITABLE = Path("/proc/no-such-dir/out.json")  # mkdir fails there even for root


def _never(*args: object, **kwargs: object) -> None:
    raise AssertionError("the work started although its result could not be written")


def test_scan_refuses_an_unwritable_json_path_before_scanning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import monitor.pipeline.offline

    clip = write_clip(tmp_path / "a.mp4", 1.0, fps=10, width=160, height=120)
    monkeypatch.setattr(monitor.pipeline.offline, "scan", _never)
    r = CliRunner().invoke(app, ["scan", str(clip), "-q", "--json", str(UNWRITABLE)])
    assert r.exit_code == 2 and "cannot write" in r.output, r.output


def test_evaluate_refuses_an_unwritable_json_path_before_scanning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import monitor.training.evaluate

    write_clip(tmp_path / "a.mp4", 1.0, fps=10, width=160, height=120)
    manifest = tmp_path / "m.tsv"
    manifest.write_text("path\tlabel\na.mp4\treal\n")
    monkeypatch.setattr(monitor.training.evaluate, "evaluate", _never)
    r = CliRunner().invoke(app, ["evaluate", str(manifest), "--json", str(UNWRITABLE)])
    assert r.exit_code == 2 and "cannot write" in r.output, r.output


def test_evaluate_refuses_a_root_that_is_not_a_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A typo in --root used to give a report of unjudged clips ("no such file") and exit 0.
    import monitor.training.evaluate

    manifest = tmp_path / "m.tsv"
    manifest.write_text("path\tlabel\na.mp4\treal\n")
    monkeypatch.setattr(monitor.training.evaluate, "evaluate", _never)
    for root in (tmp_path / "nowhere", manifest):
        r = CliRunner().invoke(app, ["evaluate", str(manifest), "--root", str(root)])
        assert r.exit_code == 2 and "--root" in r.output, r.output


def test_evaluate_prints_its_report_even_when_the_json_cannot_be_written_at_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import monitor.training.evaluate

    write_clip(tmp_path / "a.mp4", 1.0, fps=10, width=160, height=120)
    manifest = tmp_path / "m.tsv"
    manifest.write_text("path\tlabel\na.mp4\treal\n")
    out = tmp_path / "out.json"
    real = monitor.training.evaluate.evaluate

    def then_lose_the_folder(*args: object, **kwargs: object) -> object:
        report = real(*args, **kwargs)  # type: ignore[arg-type]
        # A directory in the way cannot be written as a file, for root and any other user alike
        # (a read-only folder would stop the mkdir itself for a non-root user, and not root).
        out.mkdir()
        return report

    monkeypatch.setattr(monitor.training.evaluate, "evaluate", then_lose_the_folder)
    r = CliRunner().invoke(app, ["evaluate", str(manifest), "--workers", "1", "--json", str(out)])
    assert r.exit_code == 2 and "cannot write" in r.output, r.output
    assert "a.mp4" in r.output or "clips" in r.output  # the report came first


def test_scan_rejects_a_duration_that_is_not_positive(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "a.mp4", 1.0, fps=10, width=160, height=120)
    for bad in ("-1", "0"):
        r = CliRunner().invoke(app, ["scan", str(clip), "-q", "--duration", bad])
        assert r.exit_code == 2, (bad, r.output)


def test_an_alert_on_a_track_too_short_for_a_score_is_still_the_verdict(tmp_path: Path) -> None:
    # Before: 0.7 s of face gave no video score, so the verdict was "inconclusive" and the exit
    # status 0, although the scan raised an alert (its JSON said alerts_opened: 1).
    clip = write_clip(tmp_path / "short.mp4", 0.7, fps=10, width=320, height=240)
    config = tmp_path / "low.yaml"
    config.write_text(yaml.safe_dump({"policy": {"suspicious_enter": 0.001, "alert_enter": 0.001, "hysteresis": 0.0, "min_alert_s": 0.0}}))
    out = tmp_path / "short.json"
    r = CliRunner().invoke(app, ["scan", str(clip), "-q", "-c", str(config), "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["alerts_opened"] >= 1 and result["score"] is None, result
    assert result["verdict"] == "alert" and r.exit_code == 1, r.output


def _clip(path: str, label: str, score: float | None, alerts: int, duration: float) -> ClipResult:
    return ClipResult(path, label, path.split("/")[0], "", score, "alert" if alerts else "clear", None, alerts, duration, 0.0, ())


def test_a_false_alarm_on_a_clip_without_a_score_still_counts() -> None:
    report = summarise("m.tsv", None, 0.7, [
        _clip("g/a.mp4", "real", 0.1, 0, 3600.0),
        _clip("g/b.mp4", "real", None, 1, 1800.0),  # alerted on a track too short for a score
        _clip("g/c.mp4", "real", None, 0, 900.0),  # not judged: no face
        _clip("f/x.mp4", "fake", 0.9, 1, 60.0),
    ])
    assert report.genuine_hours == pytest.approx(1.5)
    assert report.false_alarms_per_hour == pytest.approx(1 / 1.5)
    assert [path for path, _ in report.unjudged] == ["g/c.mp4"]  # the alerted one was judged


def test_a_degraded_evaluation_judges_a_clip_with_corrupt_packets_and_says_so(tmp_path: Path) -> None:
    from tests.support.media import corrupt_clip

    corrupt_clip(tmp_path / "c.mp4", 3.0, fps=10)
    manifest = tmp_path / "m.tsv"
    manifest.write_text("path\tlabel\nc.mp4\treal\n")
    out = tmp_path / "out.json"
    r = CliRunner().invoke(app, ["evaluate", str(manifest), "--workers", "1", "--degrade", "300k", "--json", str(out)])
    assert r.exit_code == 0, r.output
    [clip] = json.loads(out.read_text())["clips"]
    assert clip["verdict"] != "error", clip  # before: the copy failed at the first corrupt packet
    assert any(reason.startswith("decode_errors:") for reason in clip["reasons"]), clip
    empty = CliRunner().invoke(app, ["evaluate", str(manifest), "--degrade", ""])
    assert empty.exit_code == 2 and "empty degradation" in empty.output, empty.output


def test_scan_of_a_video_codec_ffmpeg_cannot_decode_is_a_one_line_error(tmp_path: Path) -> None:
    # Before: exit 2 with a rich traceback ending in "AttributeError: 'NoneType' object has no
    # attribute 'framerate'".
    from tests.unit.test_source_hardening import unknown_codec_mkv

    clip = unknown_codec_mkv(tmp_path / "unknown.mkv")
    r = CliRunner().invoke(app, ["scan", str(clip), "-q"])
    assert r.exit_code == 2, r.output
    assert "unsupported video codec" in r.output and "Traceback" not in r.output, r.output
    assert [line for line in r.output.splitlines() if line.strip()] == [line for line in r.output.splitlines() if "error:" in line]


@pytest.mark.parametrize("asked, expected", [(None, "WARNING"), ("DEBUG", "DEBUG"), ("ERROR", "ERROR")])
def test_scan_and_evaluate_log_at_the_level_asked_for(
    asked: str | None, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: always WARNING, so MONITOR_LOG_LEVEL=DEBUG did nothing for them while
    # `monitor config show` said DEBUG. Without it, warnings only: INFO would bury the report.
    import monitor.cli
    import monitor.pipeline.offline

    levels: list[str] = []
    monkeypatch.setattr(monitor.cli, "_setup_logging", levels.append)
    monkeypatch.setattr(monitor.pipeline.offline, "scan", _never)
    if asked:
        monkeypatch.setenv("MONITOR_LOG_LEVEL", asked)
    clip = write_clip(tmp_path / "a.mp4", 0.5, fps=10, width=160, height=120)
    CliRunner().invoke(app, ["scan", str(clip), "-q"])
    assert levels == [expected]

"""Alert evidence: what the monitor saw when an alert opened, saved on this machine."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from monitor.alerts.evidence import EvidenceStore, evidence_url
from monitor.clock import FakeClock
from monitor.config import AnalysisConfig, PolicyConfig
from monitor.metrics import Metrics
from monitor.pipeline.analyzer import EVIDENCE_CROPS, StreamAnalyzer
from monitor.types import AlertData, EventType, FaceFrame, FaceObservation, FaceQuality, Frame, Score, Signal

GOOD = FaceQuality(face_px=120, blur=100, out_of_frame=0, occlusion=0.1, confidence=0.9)
ALERT_ID = "0123456789abcdef0123456789abcdef"


def stick_the_disk(store: EvidenceStore, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Every write of ``store`` hangs until the returned event is set (at most 10 s)."""
    release = threading.Event()
    real_write = store._write

    def stuck(*args: Any) -> bool:
        release.wait(10)
        return real_write(*args)

    monkeypatch.setattr(store, "_write", stuck)
    return release


def alert(alert_id: str = ALERT_ID) -> AlertData:
    return AlertData(alert_id, 3, 0.91, ("score_above_threshold", "appearance"), (Signal("appearance", 0.9, 0.7),), 1.5, None, 1_700_000_000.0)


def save(store: EvidenceStore, stream_id: str, data: AlertData, *args: Any) -> bool:
    """Queue a bundle, wait for the writer: whether it was written."""
    store.submit(stream_id, data, *args)
    assert store.flush()
    return store.folder(data.alert_id) is not None


def decode(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, path
    return image


def test_a_bundle_holds_the_boxed_frame_the_crops_and_the_reasons(tmp_path: Path) -> None:
    store = EvidenceStore(tmp_path / "evidence")
    frame = np.full((720, 1280, 3), 40, np.uint8)
    crops = [(1.0 + 0.25 * k, np.full((112, 112, 3), 60 * k, np.uint8)) for k in range(3)]
    assert save(store, "lobby", alert(), 2.0, frame, (600.0, 200.0, 760.0, 400.0), crops)
    folder = store.folder(ALERT_ID)
    assert folder is not None
    manifest = json.loads((folder / "evidence.json").read_text())
    assert manifest["stream_id"] == "lobby" and manifest["track_id"] == 3 and manifest["t"] == 2.0
    assert manifest["alert"]["reasons"] == ["score_above_threshold", "appearance"]
    assert manifest["frame"]["width"] == 1280 and manifest["frame"]["bbox"] == [600.0, 200.0, 760.0, 400.0]
    assert [f["t"] for f in manifest["faces"]] == [1.0, 1.25, 1.5]
    shown = decode(folder / "frame.jpg")
    assert shown.shape[:2] == (360, 640)  # scaled to 640 px on its longer side
    # The face is boxed where it is, at the same scale: the box's edge is drawn, its inside is not.
    assert shown[100, 300:380].max() > 150 and shown[150, 340].max() < 80
    assert decode(folder / "face-2.jpg").shape == (112, 112, 3)
    # Faces: for the service's user only, whatever the umask (they were 0644 in 0755 folders).
    for path in [tmp_path / "evidence", folder, *folder.iterdir()]:
        assert path.stat().st_mode & 0o777 == (0o700 if path.is_dir() else 0o600), path


@pytest.mark.parametrize("bad", ["../../etc", "0123456789ABCDEF0123456789ABCDEF", "", "x" * 32])
def test_only_alert_ids_name_a_bundle(tmp_path: Path, bad: str) -> None:
    store = EvidenceStore(tmp_path)
    assert store.folder(bad) is None
    with pytest.raises(ValueError):
        store.submit("s", alert(bad), 0.0, np.zeros((8, 8, 3), np.uint8), None, [])


def test_a_full_disk_loses_the_evidence_not_the_analysis(tmp_path: Path) -> None:
    (tmp_path / "evidence").write_text("a file where the folder should be")
    store = EvidenceStore(tmp_path / "evidence")
    assert not save(store, "s", alert(), 0.0, np.zeros((8, 8, 3), np.uint8), None, [])
    assert store.folder(ALERT_ID) is None


def test_pruning_removes_old_bundles_and_half_written_ones(tmp_path: Path) -> None:
    store = EvidenceStore(tmp_path)
    old, new = "a" * 32, "b" * 32
    for alert_id in (old, new):
        assert save(store, "s", alert(alert_id), 0.0, np.zeros((8, 8, 3), np.uint8), None, [])
    month_ago = time.time() - 31 * 86400
    os.utime(tmp_path / old / "evidence.json", (month_ago, month_ago))
    (tmp_path / f".{'c' * 32}.tmp").mkdir()  # a crash while writing
    assert store.prune(time.time() - 30 * 86400) == 1
    assert store.folder(old) is None and store.folder(new) is not None
    assert not (tmp_path / f".{'c' * 32}.tmp").exists()
    # While the service runs (the daily pass), the bundle the writer is filling stays; only one
    # untouched for an hour is a crash's leftover.
    writing, stale = tmp_path / f".{'d' * 32}.tmp", tmp_path / f".{'e' * 32}.tmp"
    writing.mkdir()
    stale.mkdir()
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    store.prune(time.time() - 30 * 86400, time.time() - 3600)
    assert writing.exists() and not stale.exists()


def test_a_bundle_that_lost_its_manifest_is_pruned_by_its_folders_age(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Before: its age was read from evidence.json only, so such a folder stayed for good, with a
    # warning at every prune, and its bytes counted against no cap.
    store = EvidenceStore(tmp_path)
    orphan = "f" * 32
    assert save(store, "s", alert(orphan), 0.0, np.zeros((8, 8, 3), np.uint8), None, [])
    (tmp_path / orphan / "evidence.json").unlink()
    month_ago = time.time() - 31 * 86400
    os.utime(tmp_path / orphan, (month_ago, month_ago))
    assert store.prune(time.time() - 30 * 86400) == 1
    assert not (tmp_path / orphan).exists() and "could not prune" not in caplog.text


def test_evidence_files_are_on_disk_before_the_bundle_appears(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: no fsync before the rename; after a power cut the API could serve empty files from
    # a bundle that looked complete.
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    store = EvidenceStore(tmp_path)
    assert save(store, "s", alert("a" * 32), 0.0, np.zeros((8, 8, 3), np.uint8), None, [])
    files = len(list((tmp_path / ("a" * 32)).iterdir()))
    assert len(synced) >= files + 2  # every file, the folder before the rename, the root after it


class OneFaceWithCrop:
    def process(self, frame: Frame, rgb: Any) -> FaceFrame:
        crop = np.full((112, 112, 3), frame.seq % 256, np.uint8)
        obs = FaceObservation("s", 1, frame.seq, frame.pts_s, frame.received_at, np.zeros((478, 3), np.float32),
                              (100.0, 80.0, 220.0, 230.0), crop, GOOD)
        return FaceFrame("s", frame.seq, frame.pts_s, frame.received_at, (obs,))

    def close(self) -> None:
        pass


class Manipulated:
    name = "manipulated"
    window_s = 2.0

    def features(self, obs: FaceObservation) -> Any:
        return obs.t

    def score(self, window: Any) -> Score:
        return Score(0.97, (Signal("appearance", 0.97, 1.0),))


def store_counting(root: Path, metrics: Metrics) -> EvidenceStore:
    return EvidenceStore(root, lambda ok: metrics.evidence_saved.labels("saved" if ok else "failed").inc())


def run_until_alert(store: EvidenceStore | None, metrics: Metrics, after: int = 0) -> tuple[StreamAnalyzer, list]:
    """Frames until a face's alert opens, then ``after`` more; the analyzer and every event."""
    clock = FakeClock()
    a = StreamAnalyzer("s", AnalysisConfig(fps=10), PolicyConfig(min_alert_s=1.5), Manipulated(), OneFaceWithCrop(), metrics, clock, evidence=store)
    events: list = []
    left = None
    for i in range(60):
        rgb = np.full((480, 640, 3), 90, np.uint8)
        events += a.analyse(Frame("s", i, i / 10, clock.monotonic(), 640, 480, rgb)).events
        clock.advance(0.1)
        if left is None and any(e.type == EventType.ALERT_OPENED for e in events):
            left = after
        if left is not None:
            if left == 0:
                return a, events
            left -= 1
    raise AssertionError("no alert opened")


def opened_of(events: list) -> AlertData:
    data = next(e.data for e in events if e.type == EventType.ALERT_OPENED)
    assert isinstance(data, AlertData)
    return data


def test_an_alert_that_opens_saves_its_evidence_and_says_where(tmp_path: Path, metrics: Metrics) -> None:
    store = store_counting(tmp_path / "evidence", metrics)
    analyzer, events = run_until_alert(store, metrics)
    opened = opened_of(events)
    assert opened.evidence == evidence_url(opened.alert_id) == f"/api/alerts/{opened.alert_id}/evidence"
    assert store.flush()
    folder = store.folder(opened.alert_id)
    assert folder is not None
    manifest = json.loads((folder / "evidence.json").read_text())
    times = [f["t"] for f in manifest["faces"]]
    assert len(times) == EVIDENCE_CROPS and all(b - a > 0 for a, b in zip(times, times[1:]))
    assert all(b - a >= 0.25 - 1e-9 for a, b in zip(times[:-1], times[1:-1]))
    assert times[-1] == manifest["t"]  # the frame the alert opened on is the newest crop
    assert manifest["frame"]["bbox"] == [100.0, 80.0, 220.0, 230.0]
    assert metrics.registry.get_sample_value("deepfake_monitor_evidence_total", {"result": "saved"}) == 1
    # Its close names the evidence too.
    closed = [e.data for e in analyzer.end(10.0) if e.type == EventType.ALERT_CLOSED]
    assert [c.evidence for c in closed] == [opened.evidence]
    store.close()


def test_a_slow_disk_never_holds_the_analysis(tmp_path: Path, metrics: Metrics, monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: the bundle was written on the analysis thread. A write slower than
    # inconclusive_after_s let the stall watchdog close the alert before its alert.opened was out.
    store = store_counting(tmp_path / "evidence", metrics)
    release = stick_the_disk(store, monkeypatch)
    _, events = run_until_alert(store, metrics, after=5)  # five more frames, the disk still stuck
    opened = opened_of(events)
    assert opened.evidence is not None and store.folder(opened.alert_id) is None  # queued, not written
    release.set()
    assert store.flush() and store.folder(opened.alert_id) is not None
    store.close()


def test_an_alert_is_raised_even_when_its_evidence_cannot_be_saved(tmp_path: Path, metrics: Metrics) -> None:
    (tmp_path / "evidence").write_text("not a folder")
    store = store_counting(tmp_path / "evidence", metrics)
    _, events = run_until_alert(store, metrics)
    assert opened_of(events).alert_id
    assert store.flush()
    assert metrics.registry.get_sample_value("deepfake_monitor_evidence_total", {"result": "failed"}) == 1
    store.close()


def test_an_alert_is_published_even_when_queueing_its_evidence_raises(
    tmp_path: Path, metrics: Metrics, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    # Before: an exception there (out of memory encoding the frame, say) dropped the frame's
    # events while the policy kept the alert open: its close later named an alert never opened.
    store = store_counting(tmp_path / "evidence", metrics)

    def broken(*args: object) -> bool:
        raise MemoryError("encoding the frame")

    monkeypatch.setattr(store, "submit", broken)
    _, events = run_until_alert(store, metrics)
    assert opened_of(events).evidence is None
    assert "saving alert evidence failed" in caplog.text
    store.close()


def test_without_a_store_nothing_is_kept(metrics: Metrics) -> None:
    assert opened_of(run_until_alert(None, metrics)[1]).evidence is None


def test_a_closed_store_refuses_late_bundles_and_counts_them(tmp_path: Path, metrics: Metrics) -> None:
    # A late alert during shutdown: its bundle waited behind the writer's stop for ever, its
    # URL named in the events but never written, and not counted as failed.
    store = store_counting(tmp_path / "evidence", metrics)
    assert save(store, "s", alert("a" * 32), 0.0, np.zeros((8, 8, 3), np.uint8), None, [])
    store.close()
    assert not store.submit("s", alert("b" * 32), 0.0, np.zeros((8, 8, 3), np.uint8), None, [])
    assert metrics.registry.get_sample_value("deepfake_monitor_evidence_total", {"result": "failed"}) == 1


def test_evidence_is_kept_under_its_size_cap_and_off_a_nearly_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Evidence was removed by age alone (30 days): a stream alerting on and off could fill the
    # disk the event log shares, and then every stream paused for the log.
    import os
    import shutil as shutil_module

    root = tmp_path / "evidence"
    noise = np.random.default_rng(0).integers(0, 255, (480, 640, 3), np.uint8)  # ~100 KB a bundle
    ids = [f"{k:032x}" for k in range(1, 9)]
    save(EvidenceStore(root), "s", alert(ids[0]), 0.0, noise, None, [])  # one already on disk at start
    os.utime(root / ids[0] / "evidence.json", (1, 1))  # the oldest
    one = sum(f.stat().st_size for f in (root / ids[0]).iterdir())
    store = EvidenceStore(root, max_bytes=int(3.5 * one))
    for k, alert_id in enumerate(ids[1:], start=2):
        assert save(store, "s", alert(alert_id), 0.0, noise, None, [])
        os.utime(root / alert_id / "evidence.json", (k, k))
    kept = sorted(p.name for p in root.iterdir())
    assert sum(f.stat().st_size for p in root.iterdir() for f in p.iterdir()) <= 3.5 * one
    assert ids[-1] in kept and ids[0] not in kept and len(kept) >= 2  # the newest stay, the oldest went
    # Under the free-space floor nothing is written, and it counts as failed.
    results: list[bool] = []
    full = EvidenceStore(tmp_path / "full", results.append, min_free_bytes=1 << 40)
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: shutil_module._ntuple_diskusage(1 << 41, (1 << 41) - (1 << 30), 1 << 30))
    full.submit("s", alert(ids[0]), 0.0, noise, None, [])
    assert full.flush() and results == [False] and full.folder(ids[0]) is None


# --- found by a mutation audit -------------------------------------------------------------


def _noise(h: int = 480, w: int = 640) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (h, w, 3), np.uint8)


def test_evidence_keeps_at_most_ten_crops_all_of_them_servable(tmp_path: Path) -> None:
    from monitor.alerts.evidence import FILE_NAME

    store = EvidenceStore(tmp_path)
    crops = [(0.1 * k, np.full((32, 32, 3), 10 * k, np.uint8)) for k in range(14)]
    assert save(store, "s", alert(), 1.0, np.zeros((8, 8, 3), np.uint8), None, crops)
    folder = store.folder(ALERT_ID)
    assert folder is not None
    faces = json.loads((folder / "evidence.json").read_text())["faces"]
    assert [f["t"] for f in faces] == [round(0.1 * k, 3) for k in range(4, 14)]  # the newest ten
    names = sorted(p.name for p in folder.iterdir() if p.suffix == ".jpg")
    assert len(names) == 11 and all(FILE_NAME.fullmatch(n) for n in names)  # frame + face-0..9


def test_evidence_bundles_waiting_for_a_stuck_disk_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from monitor.alerts.evidence import QUEUE_MAX

    # A disk that hangs must cost a bounded amount of memory: each queued bundle holds a frame.
    results: list[bool] = []
    store = EvidenceStore(tmp_path, results.append)
    release = stick_the_disk(store, monkeypatch)
    frame = np.zeros((8, 8, 3), np.uint8)
    accepted = [store.submit("s", alert(f"{k:032x}"), 0.0, frame, None, []) for k in range(1, QUEUE_MAX + 10)]
    release.set()
    assert store.flush()
    # One bundle is with the writer, QUEUE_MAX wait; the rest are refused and counted as failed.
    assert accepted.count(False) >= 10 - 2 and results.count(False) == accepted.count(False)
    store.close()


def test_a_single_bundle_over_the_cap_is_kept_not_deleted_under_its_own_alert(tmp_path: Path) -> None:
    # The cap removes the oldest bundles; the one just written (its URL already in the alert's
    # event) must not be the one removed, even when it alone is over the cap.
    store = EvidenceStore(tmp_path, max_bytes=1000)
    assert save(store, "s", alert(), 0.0, _noise(), None, [])
    assert store.folder(ALERT_ID) is not None


def test_pruned_bundles_no_longer_count_towards_the_cap(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # The size cap keeps its own tally of bundle sizes; a bundle the daily pass pruned must
    # leave it, or the tally says the cap is exceeded when the disk holds less than it.
    import logging

    root = tmp_path / "evidence"
    ids = [f"{k:032x}" for k in range(1, 4)]
    save(EvidenceStore(root), "s", alert(ids[0]), 0.0, _noise(), None, [])
    one = sum(f.stat().st_size for f in (root / ids[0]).iterdir())
    store = EvidenceStore(root, max_bytes=int(2.5 * one))
    assert save(store, "s", alert(ids[1]), 0.0, _noise(), None, [])  # the tally: the first two
    month_ago = time.time() - 31 * 86400
    os.utime(root / ids[0] / "evidence.json", (month_ago, month_ago))
    assert store.prune(time.time() - 30 * 86400) == 1
    with caplog.at_level(logging.WARNING, logger="monitor.alerts.evidence"):
        assert save(store, "s", alert(ids[2]), 0.0, _noise(), None, [])
    # Two bundles on disk, under 2.5 bundles' worth: nothing is over the cap, nothing "removed".
    assert sorted(p.name for p in root.iterdir()) == ids[1:]
    assert "evidence over" not in caplog.text

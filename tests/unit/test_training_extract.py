"""Face extraction for training: worker processes are an optimisation, never a requirement."""

from __future__ import annotations

import concurrent.futures
import logging
from pathlib import Path

import pytest

from monitor.config import AnalysisConfig
from monitor.training.extract import prefetch


def test_without_worker_processes_prefetch_leaves_extraction_to_the_caller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clips = [tmp_path / "a.mp4", tmp_path / "b.mp4"]
    for clip in clips:
        clip.write_bytes(b"")

    def no_processes(*args: object, **kwargs: object) -> None:
        raise PermissionError("process creation is not allowed here")

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", no_processes)
    with caplog.at_level(logging.WARNING, logger="monitor.training.extract"):
        assert prefetch(clips, AnalysisConfig(), tmp_path / "cache", 60.0, workers=2, progress=False) == {}
    assert "cannot start face extraction workers" in caplog.text
    assert not list((tmp_path / "cache").glob("*.npz"))  # nothing half-written

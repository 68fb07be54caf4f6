"""Shared fixtures: a fresh metrics registry per test, tmp data dirs, settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# MediaPipe/TFLite log through glog: keep test output readable.
os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from monitor.config import Settings, load_settings  # noqa: E402
from monitor.metrics import Metrics  # noqa: E402


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(None, data_dir=tmp_path / "data", demo=False)

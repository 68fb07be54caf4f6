"""Builds the configured detector and face stage from settings (shared by serve, scan, evaluate)."""

from __future__ import annotations

from collections.abc import Callable

from monitor.config import Settings
from monitor.pipeline.analyzer import FaceStage
from monitor.plugins import DETECTOR_GROUP, Detector, load_plugin, plugin_config


def detector_factory(settings: Settings) -> Callable[[], Detector]:
    """Resolve the detector plugin and validate its options now, so a bad config fails at
    start-up; the returned factory makes one detector per stream."""
    cls = load_plugin(DETECTOR_GROUP, settings.detector.name)
    options = plugin_config(cls, settings.detector.options)

    def make() -> Detector:
        detector: Detector = cls(options)
        return detector

    return make


def faces_factory(settings: Settings) -> Callable[[str], FaceStage]:
    from monitor.faces import FaceTracker  # MediaPipe loads lazily, only where faces are tracked

    def make(stream_id: str) -> FaceStage:
        tracker: FaceStage = FaceTracker(stream_id, settings.analysis)
        return tracker

    return make

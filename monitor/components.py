"""Builds the configured detector and face stage from settings (shared by serve, scan, evaluate)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from monitor.config import Settings
from monitor.errors import ConfigError
from monitor.pipeline.analyzer import FaceStage
from monitor.plugins import DETECTOR_GROUP, SINK_GROUP, SOURCE_GROUP, Detector, available, load_plugin, plugin_config


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


def check_plugins(settings: Settings) -> None:
    """Resolve every plugin the settings name (detector, sinks, stream sources) and validate its
    options as ``serve`` does at start-up, without starting anything (the detector is built
    once, so its weights are loaded and verified); one ConfigError names every problem. The JSON
    schema cannot: plugin options are each plugin's own."""
    from monitor.clock import SystemClock
    from monitor.metrics import Metrics
    from monitor.pipeline.manager import build_source
    from monitor.sources.base import failure_text

    problems: list[str] = []
    def problem(exc: Exception) -> str:  # a plugin's own failure is named with its type
        return str(exc) if isinstance(exc, ConfigError) else failure_text(exc)

    try:
        detector_factory(settings)()  # built once, as serve does at start-up: the weights are checked too
    except Exception as exc:
        problems.append(f"detector: {problem(exc)}")
    for i, sink in enumerate(settings.sinks):
        try:
            plugin_config(load_plugin(SINK_GROUP, sink.name), sink.options, url_path_secret=True)
        except Exception as exc:
            problems.append(f"sinks[{i}] ({sink.name}): {problem(exc)}")
    metrics, clock = Metrics(), SystemClock()
    for stream in settings.streams:
        try:
            build_source(stream, settings, metrics, clock)
        except Exception as exc:
            problems.append(f"streams[{stream.id}]: {problem(exc)}")
    if problems:
        raise ConfigError("; ".join(problems))


def settings_schema() -> dict[str, Any]:
    """The settings' JSON schema, plus each installed plugin's options under
    ``x-plugin-options`` (``sources`` / ``detectors`` / ``sinks`` -> plugin name -> schema):
    the ``options`` of a stream, the detector or a sink are validated against these."""
    schema: dict[str, Any] = Settings.model_json_schema()
    plugins: dict[str, dict[str, Any]] = {}
    for key, group in (("sources", SOURCE_GROUP), ("detectors", DETECTOR_GROUP), ("sinks", SINK_GROUP)):
        plugins[key] = {}
        for name in sorted(available(group)):
            try:
                config_model = getattr(load_plugin(group, name), "Config", None)
                plugins[key][name] = (
                    config_model.model_json_schema()
                    if config_model is not None
                    else {"type": "object", "additionalProperties": False}
                )
            except Exception as exc:  # one broken third-party plugin must not hide the rest
                plugins[key][name] = {"x-error": f"cannot load the plugin: {type(exc).__name__}: {exc}"}
    schema["x-plugin-options"] = plugins
    return schema

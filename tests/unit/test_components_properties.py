"""Tests (from a mutation audit) of monitor.components: check_plugins, detector_factory and settings_schema.

Fake plugins are put in at the seam the module uses (its ``load_plugin`` / ``available``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

import monitor.components
from monitor.components import check_plugins, detector_factory, settings_schema
from monitor.config import load_settings
from monitor.errors import ConfigError
from monitor.plugins import DETECTOR_GROUP, SINK_GROUP, SOURCE_GROUP


class _WeightsMissing:
    """A detector whose options are valid but whose construction fails (missing weights)."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        threshold: float = 0.5

    built: list[Any] = []

    def __init__(self, options: Any) -> None:
        _WeightsMissing.built.append(options)
        raise FileNotFoundError("weights.onnx is missing")


class _NoOptionsPlugin:
    """A plugin without a Config model: it takes no options."""


def _with_fake_detector(monkeypatch: pytest.MonkeyPatch, cls: Any) -> None:
    real = monitor.components.load_plugin

    def load(group: str, name: str) -> Any:
        if group == DETECTOR_GROUP and name == "fake":
            return cls
        return real(group, name)

    monkeypatch.setattr(monitor.components, "load_plugin", load)


def test_check_plugins_builds_the_detector_and_names_its_failure_with_its_type(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _with_fake_detector(monkeypatch, _WeightsMissing)
    _WeightsMissing.built.clear()
    settings = load_settings(None, data_dir=tmp_path, demo=False, detector={"name": "fake", "options": {"threshold": 0.7}})
    with pytest.raises(ConfigError) as info:
        check_plugins(settings)
    # Built once, as serve does (so its weights are checked), and its own failure is named
    # with its type, not a bare message.
    assert len(_WeightsMissing.built) == 1
    assert "detector: FileNotFoundError: weights.onnx is missing" in str(info.value)


def test_check_plugins_names_every_problem_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _with_fake_detector(monkeypatch, _WeightsMissing)
    settings = load_settings(
        None,
        data_dir=tmp_path,
        demo=False,
        detector={"name": "fake"},
        sinks=[{"name": "webhook", "options": {"url": "http://127.0.0.1:9/x", "no_such_option": 1}}],
        streams=[{"id": "cam", "url": "demo://elsewhere"}],
    )
    with pytest.raises(ConfigError) as info:
        check_plugins(settings)
    message = str(info.value)
    assert "detector: FileNotFoundError" in message
    assert "sinks[0] (webhook):" in message and "no_such_option" in message  # the sink's own options
    assert "streams[cam]:" in message and "demo://astronaut" in message


def test_check_plugins_validates_sink_options(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=tmp_path, demo=False, detector={"name": "baseline-landmarks"}, sinks=[{"name": "webhook", "options": {}}])
    with pytest.raises(ConfigError, match=r"sinks\[0\] \(webhook\)"):
        check_plugins(settings)


def test_detector_factory_validates_the_options_before_building_any_detector(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _with_fake_detector(monkeypatch, _WeightsMissing)
    _WeightsMissing.built.clear()
    settings = load_settings(None, data_dir=tmp_path, demo=False, detector={"name": "fake", "options": {"thresh": 0.7}})
    with pytest.raises(ConfigError):
        detector_factory(settings)  # at start-up, not when the first stream builds one
    assert _WeightsMissing.built == []
    good = load_settings(None, data_dir=tmp_path, demo=False, detector={"name": "fake", "options": {"threshold": 0.7}})
    make = detector_factory(good)
    with pytest.raises(FileNotFoundError):
        make()
    assert isinstance(_WeightsMissing.built[0], _WeightsMissing.Config)  # the validated model


def _one_more_plugin(monkeypatch: pytest.MonkeyPatch, group: str, name: str, load_it: Any) -> None:
    """Make ``name`` an installed plugin of ``group`` whose loading calls ``load_it()``."""
    real_available, real_load = monitor.components.available, monitor.components.load_plugin

    def available(g: str) -> dict[str, Any]:
        eps = dict(real_available(g))
        if g == group:
            eps[name] = object()
        return eps

    def load(g: str, n: str) -> Any:
        return load_it() if (g, n) == (group, name) else real_load(g, n)

    monkeypatch.setattr(monitor.components, "available", available)
    monkeypatch.setattr(monitor.components, "load_plugin", load)


def test_a_plugin_without_options_gets_a_schema_that_admits_none(monkeypatch: pytest.MonkeyPatch) -> None:
    _one_more_plugin(monkeypatch, SINK_GROUP, "bare", lambda: _NoOptionsPlugin)
    schema = settings_schema()["x-plugin-options"]
    assert schema["sinks"]["bare"] == {"type": "object", "additionalProperties": False}
    assert set(schema) == {"sources", "detectors", "sinks"}
    assert "demo" in schema["sources"] and "fps" in schema["sources"]["demo"]["properties"]


def test_a_plugin_failing_in_any_way_does_not_hide_the_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> Any:
        raise AttributeError("module 'odd' has no attribute 'Source'")

    _one_more_plugin(monkeypatch, SOURCE_GROUP, "odd", broken)
    sources = settings_schema()["x-plugin-options"]["sources"]
    assert sources["odd"] == {"x-error": "cannot load the plugin: AttributeError: module 'odd' has no attribute 'Source'"}
    assert "properties" in sources["demo"]

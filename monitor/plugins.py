"""The plugin contracts (sources, detectors, alert sinks) and entry-point loading.

Built-ins are registered in ``pyproject.toml`` under the same entry-point groups as
third-party plugins; nothing registers itself on import. Only the plugins a config names
are loaded, and an unknown name fails loudly with the list of known ones.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import types
import typing
from collections import deque
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import AliasChoices, BaseModel, ConfigDict, ValidationError

from monitor.config import describe_errors, is_number_type, unwrap_annotated
from monitor.errors import ConfigError
from monitor.types import FaceObservation, Frame, Score, SourceStatus, StreamState

SOURCE_GROUP = "deepfake_monitor.sources"
DETECTOR_GROUP = "deepfake_monitor.detectors"
SINK_GROUP = "deepfake_monitor.sinks"


@runtime_checkable
class Source(Protocol):
    """A stream of decoded frames. ``recv`` raises ``SourceEnded`` at end of stream.

    Decoding happens in the source's own thread; ``recv`` returns the newest frame and the
    source counts every frame it had to drop because the consumer was slower. A frame's
    ``decoded`` is a PyAV frame or an ndarray: (H, W, 3) uint8 RGB (grey and RGBA uint8 are
    converted; other layouts fail the frame with a ValueError saying so).
    """

    stream_id: str
    kind: ClassVar[str]  # metric label: "file", "rtsp", "demo", "whip", ...
    status: SourceStatus

    def on_state(self, listener: Callable[[StreamState, str], None]) -> None:
        """Register ``listener(state, detail)``; it may be called from any thread."""

    def set_drop_reason(self, reason: str) -> None:
        """Label frames replaced from now on: "not_sampled" or "superseded"."""

    async def start(self) -> None: ...

    async def recv(self) -> Frame: ...

    async def aclose(self) -> None: ...


class TrackWindow:
    """The rolling window of one face track, owned by the pipeline and read by a detector.

    ``features[i]`` holds what ``Detector.features`` returned for ``observations[i]``, so
    per-frame work is done once even though the window is scored many times. Observations
    are kept without their crop (``crop`` None): a detector reads the crop in ``features``.
    Kept, they held a window's worth of images per face that nothing read again (3.4 MB at the
    defaults, over a GB at the configuration's limits).
    """

    def __init__(self, stream_id: str, track_id: int, horizon_s: float) -> None:
        self.stream_id = stream_id
        self.track_id = track_id
        self.horizon_s = horizon_s
        self.observations: deque[FaceObservation] = deque()
        self.features: deque[Any] = deque()
        self.first_t: float | None = None

    def push(self, obs: FaceObservation, features: Any) -> None:
        if self.first_t is None:
            self.first_t = obs.t
        if getattr(obs, "crop", None) is not None and dataclasses.is_dataclass(obs):
            obs = dataclasses.replace(obs, crop=None)
        self.observations.append(obs)
        self.features.append(features)
        while self.observations and obs.t - self.observations[0].t > self.horizon_s:
            self.observations.popleft()
            self.features.popleft()

    def __len__(self) -> int:
        return len(self.observations)

    def __iter__(self) -> Iterator[FaceObservation]:
        return iter(self.observations)

    @property
    def span_s(self) -> float:
        if not self.observations:
            return 0.0
        return self.observations[-1].t - self.observations[0].t


class Detector(Protocol):
    """Scores one face track over time.

    ``features`` runs once per observation (the per-frame cost); ``score`` runs on the
    window after each push and must be cheap. ``score`` returns ``probability=None`` with a
    reason when the window cannot be judged yet (too short, too few usable frames).
    Implementations must be safe to call from one worker thread per stream.
    """

    name: ClassVar[str]
    window_s: float

    def features(self, obs: FaceObservation) -> Any: ...

    def score(self, window: TrackWindow) -> Score: ...


class AlertSink(Protocol):
    """Receives every stored event in id order, as its CloudEvents 1.0 JSON, at least once.

    ``send`` returns once the receiver has accepted the event. For a transient failure it
    raises any exception: the caller retries from its cursor with backoff, for ever, and skips
    nothing. Only when the receiver refuses this particular event for good (it is malformed
    or too large for it) does ``send`` raise ``monitor.errors.RejectedEvent``: the caller
    retries it a few times, then logs it, counts it in ``sink_rejected_total`` and moves on;
    the event stays in the event log. Failures that would apply to every event (auth, a wrong
    URL, redirects, config) must not raise ``RejectedEvent``, or every alert would be skipped.
    An exception with a ``retry_after_s`` attribute (a number: the receiver's Retry-After) makes
    the next try wait at least that long, up to ``SinkRunner.RETRY_AFTER_MAX_S``.
    """

    name: ClassVar[str]

    async def start(self) -> None: ...

    async def send(self, event_id: int, cloudevent_json: str) -> None: ...

    async def aclose(self) -> None: ...


def available(group: str) -> dict[str, Any]:
    """The entry points registered in ``group``, by name, without importing them."""
    return {ep.name: ep for ep in entry_points(group=group)}


def load_plugin(group: str, name: str) -> Any:
    """Import the object registered as ``name`` in ``group``; unknown names fail loudly."""
    eps = available(group)
    if name not in eps:
        known = ", ".join(sorted(eps)) or "none installed"
        raise ConfigError(f"unknown plugin {name!r} in {group} (known: {known})")
    targets = sorted({ep.value for ep in entry_points(group=group) if ep.name == name})
    if len(targets) > 1:
        # Which one loaded depended on the order of the import path, silently: a package
        # registering a built-in's name (`file`, `rtsp`) replaced it.
        raise ConfigError(
            f"plugin {name!r} in {group} is registered by more than one package ({', '.join(targets)}): "
            "uninstall all but one"
        )
    try:
        return eps[name].load()
    except Exception as exc:  # a plugin installed but broken (a missing dependency, say)
        raise ConfigError(f"plugin {name!r} in {group} cannot be loaded: {type(exc).__name__}: {exc}") from exc


class NoOptions(BaseModel):
    """The configuration of a plugin without a ``Config`` model (pydantic cannot build a bare
    ``BaseModel``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def boolean_numbers(model: type[BaseModel], data: Any, where: str = "") -> list[str]:
    """Where ``data`` gives a boolean for one of ``model``'s numbers, as ``path: must be a
    number…`` lines in the settings' words; nested models, lists and dicts of them, and aliases
    included. pydantic reads `true` as 1 and `false` as 0, and YAML's yes/no/on/off are booleans
    too: `window_fps: yes` would have run the detector tuned for 1 fps. The settings refuse them
    in their own validator (``Strict``); plugins' models are their authors', so they are checked
    here, for every plugin alike."""
    if not isinstance(data, dict):
        return []
    found: list[str] = []
    by_name = bool(model.model_config.get("populate_by_name") or model.model_config.get("validate_by_name"))
    for name, field in model.model_fields.items():
        keys = [a for a in (field.alias,) if a]
        if isinstance(field.validation_alias, str):
            keys.insert(0, field.validation_alias)
        elif isinstance(field.validation_alias, AliasChoices):
            keys[:0] = [c for c in field.validation_alias.choices if isinstance(c, str)]
        if not keys or by_name:
            keys.append(name)
        for key in dict.fromkeys(keys):
            if key in data:
                found += _boolean_numbers_in(field.annotation, data[key], f"{where}{key}")
    return found


def _boolean_numbers_in(annotation: Any, value: Any, path: str) -> list[str]:
    annotation = unwrap_annotated(annotation)
    if isinstance(value, bool):
        return [f"{path}: must be a number, not the boolean {str(value).lower()} (got {value})"] if is_number_type(annotation) else []
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return boolean_numbers(annotation, value, f"{path}.")
    if origin in (typing.Union, types.UnionType):  # Optional[Model], Model | list[Model]...
        return next((found for arm in args if (found := _boolean_numbers_in(arm, value, path))), [])
    if isinstance(value, (list, tuple)) and origin in (list, tuple, set, frozenset, collections.abc.Sequence) and args:
        homogeneous = origin is not tuple or (len(args) == 2 and args[1] is Ellipsis)
        return [
            line
            for i, item in enumerate(value)
            if homogeneous or i < len(args)
            for line in _boolean_numbers_in(args[0] if homogeneous else args[i], item, f"{path}[{i}]")
        ]
    if isinstance(value, dict) and origin in (dict, collections.abc.Mapping) and len(args) == 2:
        return [line for key, item in value.items() for line in _boolean_numbers_in(args[1], item, f"{path}.{key}")]
    return []


def _unknown_keys(config_model: type[BaseModel], options: dict[str, Any]) -> list[str]:
    """Keys of ``options`` that ``config_model`` has no field for, unless it takes extra keys
    on purpose (``extra="allow"``). pydantic's default drops them without a word: a third-party
    plugin's misspelt `secret` sent every event unsigned."""
    if config_model.model_config.get("extra") in ("allow", "forbid"):
        return []  # taken on purpose, or refused by pydantic itself (aliases and all)
    known: set[str] = set()
    config = config_model.model_config
    by_name = bool(config.get("populate_by_name") or config.get("validate_by_name"))
    for name, field in config_model.model_fields.items():
        if by_name or (field.alias is None and field.validation_alias is None):
            known.add(name)  # with an alias, pydantic reads the name only when told to
        for alias in (field.alias, field.validation_alias):
            choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
            for choice in choices:
                if isinstance(choice, str):
                    known.add(choice)
                elif choice is not None:  # an AliasPath: keys nested in others, not checked here
                    return []
    return sorted(str(key) for key in options if str(key) not in known)


def plugin_config(cls: Any, options: dict[str, Any], url_path_secret: bool = False) -> BaseModel:
    """Validate ``options`` against the plugin's own ``Config`` model, refusing keys it has no
    field for whatever the model says about extra keys. ``url_path_secret``: the plugin is a
    sink, whose ``url`` may carry a token in its path (errors then quote it without one)."""
    config_model: type[BaseModel] | None = getattr(cls, "Config", None)
    if config_model is None:
        if options:
            raise ConfigError(f"plugin {cls.__name__} takes no options, got {sorted(options)}")
        return NoOptions()
    booleans = boolean_numbers(config_model, options)
    unknown = [
        f"{key}: unknown key (`monitor config schema` lists the valid ones; a plugin's under x-plugin-options)"
        for key in _unknown_keys(config_model, options)
    ]
    try:
        config = config_model.model_validate(options)
    except ValidationError as exc:
        # Re-raised with the plugin's name; described like the config file's errors, so a
        # bad `secret` or header is named without printing its value. Every problem at once,
        # the booleans taken for numbers included.
        # `unknown` is empty where pydantic itself refuses extra keys: no line comes twice.
        problems = "; ".join(booleans + unknown + describe_errors(exc, url_path_secret))
        raise ConfigError(f"invalid options for plugin {cls.__name__}: {problems}") from exc
    except Exception as exc:  # a plugin's own validation code failing some other way
        raise ConfigError(f"invalid options for plugin {cls.__name__}: {'; '.join([*booleans, str(exc)])}") from exc
    if booleans or unknown:
        raise ConfigError(f"invalid options for plugin {cls.__name__}: {'; '.join(booleans + unknown)}")
    return config

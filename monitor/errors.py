"""The monitor's exceptions; each says whether retrying can help."""

from __future__ import annotations


class MonitorError(Exception):
    """Base error. ``retryable`` tells supervisors whether to try again."""

    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable


class ConfigError(MonitorError):
    """The configuration or a request is invalid; retrying will not help."""


class InputError(MonitorError, ValueError):
    """Bad input to an offline command: a manifest, dataset, pack or option. The message
    names the file (and line) at fault; retrying will not help."""


class SourceError(MonitorError):
    """A source failed to open or read. Network failures are retryable, bad input is not.
    ``kind``, if set, names what failed underneath (the ``source_errors`` metric's label) when
    the original exception is not chained."""

    retryable = True
    kind: str | None = None


class SourceEnded(MonitorError):
    """The source has no more frames (end of file, or closed)."""


class StreamExists(MonitorError):
    """A stream with that id is already running."""


class StreamNotFound(MonitorError):
    """No stream with that id."""


class StreamStartFailed(MonitorError):
    """A stream could not start: its detector, face stage or source failed as it was built.
    Retrying may help (memory, a model file being replaced); the message names the failure."""

    retryable = True


class ShuttingDown(MonitorError):
    """The service is stopping and takes no new streams."""


class RejectedEvent(MonitorError):
    """An alert sink's receiver refused this particular event for good (e.g. HTTP 400, 413,
    415, 422), so retrying it cannot help. Never raise it for failures that would apply to
    every event (auth, a wrong URL, config): the runner skips rejected events, so that would
    skip every alert."""

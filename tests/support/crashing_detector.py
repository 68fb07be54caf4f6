"""A detector factory for worker-process tests: picklable, and it kills its own process
(as a native crash in a decoder would) when it sees a frame of the marked width."""

from __future__ import annotations

import os
from typing import Any, ClassVar

from monitor.detect.baseline import LandmarkBaselineDetector
from monitor.types import FaceObservation

CRASH_WIDTH = 330  # frame width that makes the detector end its process


class CrashOnWidth(LandmarkBaselineDetector):
    name: ClassVar[str] = "crash-on-width"

    def features(self, obs: FaceObservation) -> Any:
        if obs.frame_size[0] == CRASH_WIDTH:
            os._exit(3)  # no cleanup, no exception: what a segfault looks like to the parent
        return super().features(obs)


def make() -> CrashOnWidth:
    return CrashOnWidth()


def _refuse() -> None:
    raise RuntimeError("this factory cannot be rebuilt in another process")


class ParentOnlyFactory:
    """Works in the process that made it; a worker cannot unpickle it (as a factory defined in
    a notebook or on stdin cannot be imported by a spawned worker)."""

    def __call__(self) -> CrashOnWidth:
        return make()

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (_refuse, ())

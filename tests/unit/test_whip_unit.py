"""WHIP's session bookkeeping at its seams, with fakes for aiortc's peer connection and the
sinks (the real ones run in tests/integration/test_whip_*.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.api.whip import WhipSession, WhipSessions
from monitor.config import load_settings
from monitor.metrics import Metrics


async def test_a_failing_close_never_replaces_the_reason_a_session_ended(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # aiortc's close can fail on a transceiver it half built from an odd offer; raised from the
    # cleanup, that error turned the refusal (a 422) into a 500. Here the teardown itself: no
    # exception escapes it, and the failure is logged. The refusal a client gets for such an
    # offer is checked against a real service in tests/integration/test_whip_errors.py
    # (test_whip_refusals_and_health, "BUNDLE names a missing mid").
    class BrokenClose:
        async def close(self) -> None:
            raise AttributeError("'NoneType' object has no attribute 'stop'")

    class BrokenSink:
        async def aclose(self) -> None:
            raise RuntimeError("already closed")

    settings = load_settings(None, data_dir=tmp_path / "data", demo=False)
    sessions = WhipSessions(settings, manager=None, metrics=Metrics())  # type: ignore[arg-type]
    session = WhipSession("s1", "cam", BrokenClose(), "etag")  # type: ignore[arg-type]
    session.blackholes.append(BrokenSink())  # type: ignore[arg-type]
    await sessions._teardown(session)
    assert session.closed and "closing its peer connection failed" in caplog.text

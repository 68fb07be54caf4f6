"""The metrics' own promises (monitor/metrics.py): types, label sets created at zero, and
per-stream series that leave with their stream."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from monitor import __version__
from monitor.metrics import STAGES, Metrics
from monitor.types import EventType, Severity, TrackState


def test_every_total_is_a_counter_and_every_counter_a_total() -> None:
    # A gauge named x_total breaks rate() and increase() over it, and promtool flags it.
    text = generate_latest(Metrics().registry).decode()
    typed = dict(line.split()[2:4] for line in text.splitlines() if line.startswith("# TYPE"))
    assert len(typed) > 30
    for name, kind in typed.items():
        assert (kind == "counter") == name.endswith("_total"), (name, kind)


def test_every_fixed_label_set_exists_at_zero_from_the_start() -> None:
    # The shipped rules take increase() over these: a series born at 1 after a restart looks
    # like no increase, so the first alert after a restart would go unseen.
    value = Metrics().registry.get_sample_value
    for severity in Severity:
        assert value("deepfake_monitor_alerts_total", {"severity": severity.value}) == 0, severity
    for event_type in EventType:
        assert value("deepfake_monitor_events_total", {"type": event_type.value}) == 0, event_type
    for state in TrackState:
        assert value("deepfake_monitor_verdicts_total", {"state": state.value}) == 0, state
        assert value("deepfake_monitor_tracks", {"state": state.value}) == 0, state
    for stage in STAGES:
        assert value("deepfake_monitor_stage_duration_seconds_count", {"stage": stage}) == 0, stage
    assert value("deepfake_monitor_work_skipped_total", {"stage": "detect"}) == 0
    for result in ("saved", "failed"):
        assert value("deepfake_monitor_evidence_total", {"result": result}) == 0, result
    for reason in ("unauthorized", "too_large", "timeout", "forbidden_origin", "too_many_clients"):
        assert value("deepfake_monitor_http_rejected_total", {"reason": reason}) == 0, reason


def touch_stream(m: Metrics, stream: str) -> None:
    m.frames_received.labels(stream).inc()
    m.frames_analysed.labels(stream).inc()
    m.frames_dropped.labels(stream, "stale").inc()
    m.frames_dropped.labels(stream, "decode_error").inc()
    m.reconnects.labels(stream).inc()
    m.source_errors.labels(stream, "timeout").inc()
    m.stream_up.labels(stream).set(1)
    m.faces_tracked.labels(stream).set(2)


def test_forget_stream_removes_every_series_of_that_stream_and_only_those() -> None:
    m = Metrics()
    touch_stream(m, "gone")
    touch_stream(m, "kept")
    before = generate_latest(m.registry).decode()
    m.forget_stream("gone")
    m.forget_stream("never-seen")  # no error for a stream without series
    after = generate_latest(m.registry).decode()
    assert 'stream="gone"' in before and 'stream="gone"' not in after
    kept = [line for line in before.splitlines() if 'stream="kept"' in line and "_created" not in line]
    assert len(kept) == 8 and all(line in after for line in kept)


def test_no_histogram_is_labelled_by_stream() -> None:
    # Stream ids are unbounded: a histogram per stream multiplies its buckets by every stream.
    m = Metrics()
    histograms = [h for h in vars(m).values() if isinstance(h, Histogram)]
    assert len(histograms) >= 3
    for h in histograms:
        names = h._labelnames  # noqa: SLF001 - as forget_stream: client_python has no public lookup
        (h.labels(*["x"] * len(names)) if names else h).observe(0.01)
    for family in m.registry.collect():
        if family.type == "histogram":
            assert all("stream" not in sample.labels for sample in family.samples), family.name


def test_build_info_names_the_version_in_the_registry_given() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry)
    assert m.registry is registry
    assert registry.get_sample_value("deepfake_monitor_build_info", {"version": __version__}) == 1

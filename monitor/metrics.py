"""Every Prometheus metric the monitor exports, on an injected registry.

Base units, ``_total`` counters, histograms for latency. Stream ids are unbounded, so they
appear only on per-stream gauges and counters that are removed when the stream ends, never
on histograms.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector

from monitor import __version__
from monitor.types import EventType, Severity, TrackState

# Latency buckets from 1 ms to 5 s: a frame->verdict path is ~10-100 ms when healthy.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)
# Stage times start far lower: converting a frame takes microseconds and the policy tens of
# them; with LATENCY_BUCKETS both sat in the first bucket and every p95 read about 0.95 ms.
STAGE_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005) + LATENCY_BUCKETS
STAGES = ("convert", "faces", "detect", "policy")


class Metrics:
    """Holds every metric; pass one instance to every component."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.build_info = Info("deepfake_monitor_build", "Version of the running monitor.", registry=r)
        self.build_info.info({"version": __version__})
        # process_resident_memory_bytes, process_open_fds, process_cpu_seconds_total...: what a
        # long run's memory and descriptors do (benchmarks/soak.py), as client_python's default
        # registry has them. Read from /proc, so present on Linux only.
        ProcessCollector(registry=r)

        self.frames_received = Counter(
            "deepfake_monitor_frames_received_total", "Frames decoded by sources.", ["stream"], registry=r
        )
        self.frames_analysed = Counter(
            "deepfake_monitor_frames_analysed_total", "Frames that went through face tracking.", ["stream"], registry=r
        )
        self.frames_dropped = Counter(
            "deepfake_monitor_frames_dropped_total",
            "Frames not analysed, by reason (not_sampled: skipped to hold the analysis fps; "
            "superseded: replaced by a newer frame while analysis was busy; stale: too old when "
            "analysis could start; decode_error: corrupt data; analysis_error: analysis raised).",
            ["stream", "reason"],
            registry=r,
        )
        self.detector_errors = Counter(
            "deepfake_monitor_detector_errors_total",
            "Faces the detector raised on while other faces of the same frame were judged (that face went without a score, "
            "reason detector_error); a frame on which it failed for every face counts as frames_dropped{reason=\"analysis_error\"}.",
            ["stream"],
            registry=r,
        )
        self.work_skipped = Counter(
            "deepfake_monitor_work_skipped_total",
            "Analysis work skipped to stay within the latency budget, by stage.",
            ["stage"],
            registry=r,
        )
        self.evidence_saved = Counter(
            "deepfake_monitor_evidence_total",
            "Alert evidence bundles (frame, face crops, scores) written to data_dir/evidence, by result (saved, failed).",
            ["result"],
            registry=r,
        )
        self.reconnects = Counter(
            "deepfake_monitor_source_reconnects_total", "Times a source reconnected after an error.", ["stream"], registry=r
        )
        self.source_errors = Counter(
            "deepfake_monitor_source_errors_total", "Source errors by kind.", ["stream", "kind"], registry=r
        )
        self.stage_seconds = Histogram(
            "deepfake_monitor_stage_duration_seconds",
            "Wall time of each analysis stage per analysed frame.",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.frame_to_verdict_seconds = Histogram(
            "deepfake_monitor_frame_to_verdict_seconds",
            "Time from a frame leaving the decoder to its verdict.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.frame_age_seconds = Histogram(
            "deepfake_monitor_frame_age_seconds",
            "Age of a frame (since it left the decoder) when analysis started.",
            ["source"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.streams_active = Gauge(
            "deepfake_monitor_streams_active", "Streams currently watched, by source kind.", ["source"], registry=r
        )
        self.stream_up = Gauge(
            "deepfake_monitor_stream_up", "1 while the stream delivers frames, else 0.", ["stream"], registry=r
        )
        self.faces_tracked = Gauge(
            "deepfake_monitor_faces_tracked", "Face tracks currently alive.", ["stream"], registry=r
        )
        self.track_states = Gauge(
            "deepfake_monitor_tracks", "Face tracks by current verdict state.", ["state"], registry=r
        )
        self.verdicts = Counter(
            "deepfake_monitor_verdicts_total", "Verdicts produced, by resulting state.", ["state"], registry=r
        )
        self.alerts = Counter(
            "deepfake_monitor_alerts_total", "Alerts opened, by severity.", ["severity"], registry=r
        )
        self.events = Counter(
            "deepfake_monitor_events_total", "Events written to the event log, by type.", ["type"], registry=r
        )
        self.event_log_replaced = Counter(
            "deepfake_monitor_event_log_replaced_total",
            "Times the event log was found damaged while running and replaced by a new one (the "
            "damaged file is kept as events.sqlite3.corrupt-<time>; clients and sinks start again "
            "from the new log's first event).",
            registry=r,
        )
        self.event_log_errors = Counter(
            "deepfake_monitor_event_log_errors_total",
            "Failed attempts to write events to the event log (disk full, I/O error, database "
            "locked). A stream retries until the write succeeds, its analysis paused meanwhile; "
            "events are dropped only if the stream is stopped before then.",
            registry=r,
        )
        self.ws_clients = Gauge(
            "deepfake_monitor_websocket_clients", "Connected alert websocket clients.", registry=r
        )
        self.ws_evictions = Counter(
            "deepfake_monitor_websocket_evictions_total",
            "Alert websocket clients closed (1013) because they fell behind, or dropped because "
            "they stopped reading (a send waited 10 s).",
            registry=r,
        )
        self.sink_failures = Counter(
            "deepfake_monitor_sink_failures_total", "Failed deliveries to alert sinks.", ["sink"], registry=r
        )
        self.sink_rejected = Counter(
            "deepfake_monitor_sink_rejected_total",
            "Events an alert sink's receiver refused for good (e.g. HTTP 422) and that were skipped "
            "after retries; they stay in the event log.",
            ["sink"],
            registry=r,
        )
        self.sink_lag = Gauge(
            "deepfake_monitor_sink_lag_events",
            "Events in the event log that an alert sink has not delivered yet (newest id minus its cursor).",
            ["sink"],
            registry=r,
        )
        self.http_rejections = Counter(
            "deepfake_monitor_http_rejected_total",
            "HTTP requests rejected before handling, by reason (unauthorized, too_large, timeout, forbidden_origin, too_many_clients, too_many_connections).",
            ["reason"],
            registry=r,
        )

        # --- webrtc: WHIP sessions and ICE/connection states (monitor/api/whip.py, sources/webrtc.py)
        # Received frame age for WebRTC streams is frame_age_seconds{source="whip"|"whep"}.
        self.whip_sessions_active = Gauge(
            "deepfake_monitor_whip_sessions_active", "WHIP sessions currently open.", registry=r
        )
        self.whip_sessions_created = Counter(
            "deepfake_monitor_whip_sessions_created_total", "WHIP sessions answered with 201.", registry=r
        )
        self.whip_sessions_failed = Counter(
            "deepfake_monitor_whip_sessions_failed_total",
            "WHIP requests refused or sessions that failed, by reason (unauthorized, forbidden, "
            "unsupported_media_type, too_large, malformed_sdp, unanswerable_sdp, bad_stream_id, "
            "conflict, capacity, too_many_tracks, too_many_candidates, unknown_mid, ice_restart, "
            "candidates_ended, precondition_failed, ice_failed, ice_timeout, no_video, track_failed, start_failed). Bodies over server.max_body_bytes are "
            "refused before WHIP sees them and count in http_rejected_total{reason=\"too_large\"}.",
            ["reason"],
            registry=r,
        )
        self.webrtc_ice_states = Counter(
            "deepfake_monitor_webrtc_ice_state_changes_total",
            "ICE connection state changes, by role (whip, whep) and new state.",
            ["role", "state"],
            registry=r,
        )
        self.webrtc_connection_states = Counter(
            "deepfake_monitor_webrtc_connection_state_changes_total",
            "Peer connection state changes, by role (whip, whep) and new state.",
            ["role", "state"],
            registry=r,
        )
        # --- end webrtc

        self._create_known_series()

    def _create_known_series(self) -> None:
        """Create every fixed label set at zero, so rate()/increase() see the first event
        after a restart (a series born at 1 looks like no increase)."""
        for severity in Severity:
            self.alerts.labels(severity.value)
        for event_type in EventType:
            self.events.labels(event_type.value)
        for state in TrackState:
            self.verdicts.labels(state.value)
            self.track_states.labels(state.value)
        for stage in STAGES:
            self.stage_seconds.labels(stage)
        self.work_skipped.labels("detect")
        for result in ("saved", "failed"):
            self.evidence_saved.labels(result)
        for reason in ("unauthorized", "too_large", "timeout", "forbidden_origin", "too_many_clients", "too_many_connections"):
            self.http_rejections.labels(reason)

    def forget_stream(self, stream_id: str) -> None:
        """Remove every per-stream series so ended streams do not linger in scrapes."""
        for metric in (self.frames_received, self.frames_analysed, self.reconnects, self.stream_up, self.faces_tracked, self.detector_errors):
            try:
                metric.remove(stream_id)
            except KeyError:
                pass
        for metric in (self.frames_dropped, self.source_errors):
            for labels in list(metric._metrics):  # noqa: SLF001 - client_python has no public lookup
                if labels[0] == stream_id:
                    metric.remove(*labels)

"""Verdict policy, the durable event log, fan-out to subscribers and sinks."""

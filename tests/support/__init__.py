"""Test harness: real loopback servers (RTSP, Prometheus) and generated media fixtures."""

"""Frame sources: files, RTSP, the built-in demo, and (later) WebRTC."""

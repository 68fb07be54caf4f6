"""The HTTP and websocket API (FastAPI); never imports torch."""

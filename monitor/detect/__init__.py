"""Detectors: per-track scoring of face windows (the built-in landmark baseline lives here)."""

"""deepfake-monitor: watch live video streams for deepfaked faces, self-hosted."""

__version__ = "0.1.0"

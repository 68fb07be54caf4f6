"""Face stage: MediaPipe face-mesh tracking, stable track ids, aligned crops and quality."""

from monitor.faces.align import CANONICAL_TEMPLATE, align_face, alignment_matrix
from monitor.faces.tracker import FaceTracker

__all__ = ["CANONICAL_TEMPLATE", "FaceTracker", "align_face", "alignment_matrix"]

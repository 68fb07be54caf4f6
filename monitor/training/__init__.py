"""Training and evaluation of the detector: dataset readers, face extraction, self-blending, training loops, evaluation."""

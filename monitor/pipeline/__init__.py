"""Per-stream pipelines: latest-frame hand-off, analysis under a budget, supervision."""

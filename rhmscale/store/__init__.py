"""The run store: run and sweep folders (every path), atomic writes, run state, the one lock,
and the W&B mirror of a run. The bottom layer: it imports nothing of rhmscale but config."""

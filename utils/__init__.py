"""Shared machinery of the entry scripts: runs, data and the PU split, the training loop, checkpointing,
sampling and evaluation."""

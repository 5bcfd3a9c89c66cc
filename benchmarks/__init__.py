"""Throughput benchmark of the training loop and the sampler: benchmarks/throughput.py."""

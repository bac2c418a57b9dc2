"""Benchmarks, run on demand: `python -m bench.serving` (not part of the test suite)."""

"""Benchmarks of the pipeline (not part of the DVC stages)."""

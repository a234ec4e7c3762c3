"""Benchmarks of the real service code paths, each figure printed next to a baseline from the same run."""

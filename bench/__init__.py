"""Benchmarks (`make bench`): figures and ratios measured in one run, never timed tests."""

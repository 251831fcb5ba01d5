"""Benchmarks of Context Store: `python -m bench.run` (see bench/README.md)."""

"""Benchmark suite of stadapter-fast: ``pytest benchmarks/ --benchmark-only``; report: ``python -m benchmarks.report``."""

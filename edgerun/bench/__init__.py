"""Benchmark harness: workloads, per-artifact worker subprocesses, results, comparison."""

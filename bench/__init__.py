"""Benchmark scripts: each prints a table, writes JSON and a PNG plot; see BENCHMARKS.md."""

"""Benchmark harness: scheme comparison, peer libraries, environment record, tables and plots."""

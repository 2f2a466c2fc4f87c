"""Benchmarks: one module per measurement, each printing a Markdown section for
BENCHMARKS.md together with the command that produced it."""

"""Benchmark programs (run them as ``python -m bench.<name> --help``).

Each program prints a table of medians and ratios measured side by side in one
run; the published figures and the exact commands live in ``BENCHMARKS.md``.
"""

"""Benchmark suite for conversation-codec: ``python -m benchmarks`` from the repo root.

Modules named ``bench_<thing>.py`` each measure one thing and say in their docstring what,
on which data, against which peers. ``__main__`` runs them all and writes
``benchmarks/results/`` (markdown table with ratios to every peer, raw JSON, PNG plots).
"""

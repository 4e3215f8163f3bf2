"""Benchmarks of Orion's engine-neutral core on deterministic synthetic data. Each
benchmark writes its own section of BENCHMARKS.md at the repository root.

    make bench                                  # every benchmark
    .venv/bin/python -m benchmarks.bench_evaluator --help
"""

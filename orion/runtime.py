"""Process settings for the workers that evaluate activities (Beam DoFns, Flink functions).

Evaluation allocates a new, small lead state per activity (states are never mutated),
and a worker holds many of them. With CPython's default first-generation threshold (700
allocations) the garbage collector runs every few activities and rescans the young
states each time: a quarter of the evaluator's time at 1,000 campaigns. Raising the
threshold makes young collections rare and larger; nothing is collected less surely,
and the memory they defer is a few megabytes.

    python -c "from orion.runtime import tune_gc; tune_gc(); import gc; print(gc.get_threshold())"
"""
from __future__ import annotations

import gc

GC_THRESHOLDS = (50_000, 20, 20)  # measured with `make bench-evaluator`, see BENCHMARKS.md


def tune_gc() -> None:
    """Set the collector's thresholds for an evaluating worker (idempotent, process-wide)."""
    if gc.get_threshold() != GC_THRESHOLDS:
        gc.set_threshold(*GC_THRESHOLDS)

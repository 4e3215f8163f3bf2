"""Evaluating workers run with the collector thresholds the evaluator benchmark measured
(orion/runtime.py): the DoFn that evaluates sets them when it starts.

    .venv/bin/python -m pytest -q tests/test_runtime.py
"""
from __future__ import annotations

import gc

from conftest import SAMPLE_RULES

from orion.runtime import GC_THRESHOLDS
from orion.transforms.evaluate import LeadSteps, _LeadStepFn


def test_the_evaluating_dofn_sets_the_collector_thresholds():
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    try:
        fn = _LeadStepFn(LeadSteps(str(SAMPLE_RULES)).settings, one_watermark_per_stage=False)
        fn.setup()
        assert gc.get_threshold() == GC_THRESHOLDS
        fn.teardown()
    finally:
        gc.set_threshold(*before)

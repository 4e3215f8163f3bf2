"""The benchmarks' own code stays runnable: every benchmark module imports, and the
synthetic data they all share (benchmarks/synthetic.py) still loads and parses against
the current rules compiler and activity types. A change to either (a new built-in type,
a stricter rule check) that would stop `make bench` fails here, not on the next
benchmark run. The benchmarks themselves are never timed in tests.

    .venv/bin/python -m pytest -q tests/test_benchmarks_data.py
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from benchmarks.synthetic import event_lines, write_rules
from orion.activities import parse_activity
from orion.rules import load_rules

BENCHMARKS = sorted(p.stem for p in (Path(__file__).resolve().parent.parent / "benchmarks").glob("*.py")
                    if p.stem != "__init__")


@pytest.mark.parametrize("module", BENCHMARKS)
def test_every_benchmark_module_imports(module):
    assert importlib.import_module(f"benchmarks.{module}") is not None


def test_the_synthetic_rules_load_and_the_synthetic_events_parse(tmp_path):
    manifest = write_rules(tmp_path, 200)
    rules = load_rules(tmp_path)
    assert manifest.active_trigger_campaigns == 200
    assert sum(len(rules.tenants[tenant].campaigns) for tenant in rules.tenants) == 200 + manifest.other_campaigns
    lines = event_lines(2000)
    parsed = [parse_activity(json.loads(line), rules.activity_types) for line in lines]
    assert len(parsed) == 2000 and len({a.type for a in parsed}) >= 10

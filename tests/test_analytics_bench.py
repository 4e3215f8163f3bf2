"""`make bench-analytics ARGS="--only query"`: only the query rows of BENCHMARKS.md's
Analytics section are replaced (with a line saying when), every other line is kept.

    .venv/bin/python -m pytest -q tests/test_analytics_bench.py
"""
from __future__ import annotations

import pytest

from benchmarks.bench_analytics import main, query_rows, render, replace_rows, sketch_rows

GRAPH = {"events": 20_000, "per_minute": None, "rows": 39_731, "segments": 252, "load": 0.7, "ratio": 0.63,
         "ratios": [0.61, 0.63, 0.65],
         "with": 5_457.0,
         "without": 8_644.0, "cpu_ratio": 0.63, "added_cpu": 1.25, "upsert_cpu": 0.24,
         "upsert_bound": 0.88}
SKETCH = {"estimate": 1_004_089.0, "low": 972_177.0, "high": 1_037_098.0, "error": 0.0041, "merge_ms": 6.0,
          "bytes": 3_000_000}


def query_figures(p50: float) -> dict:
    layout = {"events": (p50, p50 + 20, p50 + 20), "unique_leads": (p50 + 5, p50 + 25, p50 + 25)}
    return {"stored": 43_200, "load": 0.9, "segments": layout, "rows": layout}


def test_only_the_query_rows_are_replaced_and_stamped():
    section = render("make bench-analytics", [GRAPH], query_figures(38.7), [1.44, 1.58], SKETCH)
    again = replace_rows(section, {"query": query_rows(query_figures(12.0))}, "Command: `make bench-analytics "
                                                                                 'ARGS="--only query"` · now')
    old, new = section.splitlines(), again.splitlines()
    assert [line for line in new if line.startswith("| query:")] == query_rows(query_figures(12.0))
    assert "p50 12.0 ms, p99 32.0 ms" in again and "p50 38.7 ms" not in again
    # Everything else is kept, in its place; one stamp line under the section's own Command line.
    assert [line for line in new if not line.startswith(("| query:", "- rows `query`"))] == \
           [line for line in old if not line.startswith("| query:")]
    assert new[new.index(next(line for line in new if line.startswith("Command: "))) + 1].startswith(
        "- rows `query` measured again: Command: `make bench-analytics ARGS=\"--only query\"`")
    # Measured again: the rows and the stamp are replaced, not added.
    third = replace_rows(again, {"query": query_rows(query_figures(11.0))}, "later")
    assert third.count("| query:") == 4 and third.count("measured again") == 1 and "p50 11.0 ms" in third
    assert len(third.splitlines()) == len(old) + 1


def test_a_figure_with_no_rows_yet_is_added_to_the_table():
    section = render("make bench-analytics", [GRAPH], query_figures(38.7), None, SKETCH)
    without_sketch = "\n".join(line for line in section.splitlines() if not line.startswith("| unique leads:"))
    added = replace_rows(without_sketch, {"sketch": sketch_rows(SKETCH)}, "now").splitlines()
    table = [line for line in added if line.startswith("| ")]
    assert table[-1] == sketch_rows(SKETCH)[0]


def test_only_takes_the_figures_it_knows(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--only", "everything"])
    assert exit_.value.code == 2
    assert "invalid choice: 'everything'" in capsys.readouterr().err


def test_a_whole_run_keeps_the_instruction_rows_measured_apart(tmp_path):
    import benchmarks.bench_analytics as bench
    from benchmarks.report import section_markers

    instructions = (f"{bench.ROW_PREFIXES['instructions']}(callgrind, 20,000 events as generated) | 0.905 (552.3 vs "
                    "610.3 thousand instructions an event) | >= 0.9 |")
    old = render("make bench-analytics", [GRAPH], query_figures(38.7), None, SKETCH)
    old = replace_rows(old, {"instructions": [instructions]}, "Command: `make bench-analytics-instructions` · then")
    start, end = section_markers("analytics")
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(f"# Benchmarks\n\n{start}\n{old}\n{end}\n", encoding="utf-8")
    new = bench.kept_instruction_rows(render("make bench-analytics", [GRAPH], query_figures(12.0), None, SKETCH),
                                      path)
    lines = new.splitlines()
    assert lines.count(instructions) == 1
    graph_rows = [i for i, line in enumerate(lines) if line.startswith(bench.ROW_PREFIXES["graph"])]
    assert lines.index(instructions) == 1 + max(graph_rows)
    assert sum(line.startswith("- rows `instructions` measured again: ") for line in lines) == 1
    assert "p50 12.0 ms" in new

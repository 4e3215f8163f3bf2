"""The bootstrap graph: the legacy MySQL activities table -> the Bigtable store, verified.

```
 id ranges ─► ReadLegacyActivities ─┬─► WriteToStore (Bigtable) ─┬─► IndexActivities
 (Create)     (parallel, chunked)   │        │ refused            └─► CountProgress
                                    │        ▼
                                    ├─► dead letters ─► dead_letter_sink
                                    └─► source checksums ─┐
 row-key ranges ─► ChecksumTarget (after every write) ────┴─► CompareRanges ─► report
```

The core (row conversion, checksums, the plan, the report) is orion.migration; this
module builds the graph and runs it locally with a progress line every few seconds.

    orion bootstrap --from mysql://root@127.0.0.1:3306/legacy --to bigtable://my-project/my-instance/activities --splits 32
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from orion.migration import (
    DEFAULT_CHUNK_ROWS,
    PROGRESS_EVERY_SECONDS,
    BootstrapPlan,
    ProgressPrinter,
    Verification,
    late_row_sums,
    ranges_from_json,
    ranges_to_json,
    read_progress,
    with_late_rows,
    progress_line,
    target_scan_ranges,
)
from orion.transforms.intake import orion_counters
from orion.transforms.legacy import ChecksumTarget, CompareRanges, CountProgress, ReadLegacyActivities
from orion.transforms.sinks import DEFAULT_BATCH_SIZE, IndexActivities, WriteJsonLines, WriteToStore


class BootstrapSettings(NamedTuple):
    dead_letter_prefix: str
    copy: bool = True  # False: verify only
    verify: bool = True  # False: copy only, no report (the benchmark times the copy alone)
    workers: int = 1  # local worker processes (DirectRunner), unless beam_args say otherwise
    progress_every: float = PROGRESS_EVERY_SECONDS
    beam_args: tuple[str, ...] = ()
    batch_size: int = DEFAULT_BATCH_SIZE
    chunk_rows: int = DEFAULT_CHUNK_ROWS


class _WriteComparisonsFn(beam.DoFn):
    """All RangeComparisons (one list) -> a JSON file the driver reads after the run."""

    def __init__(self, path: str):
        self.path = path

    def process(self, comparisons: list):
        Path(self.path).write_text(ranges_to_json(comparisons), encoding="utf-8")
        return ()


def build_bootstrap(
    pipeline: beam.Pipeline,
    plan: BootstrapPlan,
    *,
    copy: bool,
    report_path: str | None,
    dead_letter_sink: beam.PTransform,
    progress_dir: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> None:
    """Wire the bootstrap (copy=True) or the verification alone (copy=False) into
    `pipeline`; the comparisons of every lead range end in `report_path` as JSON (no
    verification at all when report_path is None)."""
    splits = pipeline | "IdRanges" >> beam.Create(list(plan.splits))
    activities, bad_rows, source_sums = splits | "ReadLegacyActivities" >> ReadLegacyActivities(
        plan.source_uri, chunk_rows, progress_dir, plan.tenant)
    dead_letter_parts = [bad_rows]
    writes_done = None
    if copy:
        refused, written = activities | "WriteActivities" >> WriteToStore(plan.target_uri, batch_size)
        written | "IndexActivities" >> IndexActivities(plan.target_uri)
        if progress_dir is not None:
            written | "CountWritten" >> CountProgress(progress_dir, "written")
            refused | "CountRefused" >> CountProgress(progress_dir, "dead")
        dead_letter_parts.append(refused)
        # Exists only once the write stage has finished: the target scan waits for it.
        writes_done = refused | "WritesDone" >> beam.combiners.Count.Globally()
    tuple(dead_letter_parts) | "AllDeadLetters" >> beam.Flatten() | "WriteDeadLetters" >> dead_letter_sink
    if report_path is None:
        return
    target_sums = (
        pipeline
        | "RowKeyRanges" >> beam.Create(target_scan_ranges(plan.tenants, whole_table=plan.tenant is None))
        | "ChecksumTarget" >> ChecksumTarget(plan.target_uri, after=writes_done)
    )
    (
        (source_sums, target_sums)
        | "CompareRanges" >> CompareRanges()
        | "AllRanges" >> beam.combiners.ToList()
        | "WriteReport" >> beam.ParDo(_WriteComparisonsFn(report_path))
    )


def pipeline_options(settings: BootstrapSettings) -> PipelineOptions:
    """The Beam options: the given ones, and on the local runner `workers` processes."""
    options = PipelineOptions(list(settings.beam_args))
    standard = options.view_as(StandardOptions)
    direct = options.view_as(DirectOptions)
    if standard.runner in (None, "DirectRunner") and not any(
            a.startswith("--direct_num_workers") for a in settings.beam_args):
        direct.direct_num_workers = settings.workers
        direct.direct_running_mode = "multi_processing" if settings.workers > 1 else "in_memory"
    return options


def clear_dead_letters(prefix: str) -> None:
    """A rerun replaces the dead-letter files of the previous run."""
    folder = Path(prefix).parent
    for old in folder.glob(Path(prefix).name + "-*.jsonl"):
        old.unlink()


def run_bootstrap(plan: BootstrapPlan, settings: BootstrapSettings, out=sys.stderr) -> tuple[Verification, dict[str, int]]:
    """Run the bootstrap (or the verification alone) to the end, printing progress to
    `out`; returns the verification and Orion's counters."""
    workdir = Path(tempfile.mkdtemp(prefix="orion-bootstrap-"))
    try:
        progress_dir = workdir / "progress"
        progress_dir.mkdir()
        report_path = workdir / "ranges.json"
        clear_dead_letters(settings.dead_letter_prefix)
        pipeline = beam.Pipeline(options=pipeline_options(settings))
        build_bootstrap(
            pipeline, plan,
            copy=settings.copy,
            report_path=str(report_path) if settings.verify else None,
            dead_letter_sink=WriteJsonLines(settings.dead_letter_prefix, "dead_letters_written"),
            progress_dir=str(progress_dir),
            batch_size=settings.batch_size,
            chunk_rows=settings.chunk_rows,
        )
        with ProgressPrinter(str(progress_dir), plan.legacy_rows, settings.progress_every, out) as printer:
            result = pipeline.run()
            result.wait_until_finish()
        print(progress_line(read_progress(str(progress_dir)), plan.legacy_rows, printer.clock() - printer.started),
              file=out, flush=True)
        totals = orion_counters(result)
        dead = {name.split(":", 1)[1]: n for name, n in totals.items() if name.startswith("dead_letters:")}
        ranges, late = (ranges_from_json(report_path.read_text(encoding="utf-8")) if settings.verify else []), 0
        if settings.verify:
            # Rows the legacy store got since the plan (a running job's): the target was
            # scanned after the copy, so those the job wrote to both stores are there too.
            late_sums, late = late_row_sums(plan.source_uri, plan.max_id, plan.tenant)
            ranges = with_late_rows(ranges, late_sums)
        verification = Verification(
            ranges=ranges,
            rows_read=totals.get("legacy_rows_read", 0),
            converted=totals.get("legacy_rows_converted", 0),
            refused=totals.get("legacy_rows_refused", 0),
            store_failed=totals.get("store_failed", 0),
            dead_letters=dead,
            late_rows=late,
        )
        return verification, totals
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

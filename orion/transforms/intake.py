"""Sources into activities: `ReadActivityFiles` (JSONL files, bounded) and
`ParseActivities` (message payloads, e.g. from Pub/Sub). Both are thin over
`orion.intake`; both return (activities, dead letters) and count what they see.

    orion run --events 'data/*.jsonl'
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Iterable

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.metrics import Metrics

from orion.activities import Activity
from orion.deadletters import DeadLetter
from orion.intake import decompressing, parse_payload, read_lines

METRICS_NAMESPACE = "orion"


def orion_counters(result) -> dict[str, int]:
    """Orion's counters of a pipeline result (its namespace), summed over the steps that
    report them; committed values where the runner has them, else attempted."""
    totals: dict[str, int] = {}
    for found in result.metrics().query()["counters"]:
        if found.key.metric.namespace == METRICS_NAMESPACE:
            value = found.committed if found.committed is not None else found.attempted
            totals[found.key.metric.name] = totals.get(found.key.metric.name, 0) + (value or 0)
    return totals
DEAD = "dead_letters"
PROGRESS_EVERY_SECONDS = 5.0


def load_activity_types(rules_dir: str, template_dirs: tuple[str, ...]):
    from orion.rules.shared import shared_rules

    return shared_rules(rules_dir, template_dirs).activity_types


class _Progress:
    """Prints a progress line to stderr every few seconds of a long read."""

    def __init__(self, what: str, clock: Callable[[], float] = time.monotonic):
        self.what, self.clock = what, clock
        self.started = self.last = clock()
        self.count = 0

    def tick(self) -> None:
        self.count += 1
        if self.count & 1023 == 0:
            now = self.clock()
            if now - self.last >= PROGRESS_EVERY_SECONDS:
                self.last = now
                rate = self.count / (now - self.started)
                print(f"... {self.what}: {self.count:,} events ({rate:,.0f}/s)", file=sys.stderr, flush=True)


class _ParseFn(beam.DoFn):
    """Base of the parsing DoFns: rules are loaded in setup (only the rules directory is
    pickled), results are split into activities and tagged dead letters, and counted."""

    def __init__(self, rules_dir: str, template_dirs: tuple[str, ...]):
        self.rules_dir = rules_dir
        self.template_dirs = template_dirs
        self.read = Metrics.counter(METRICS_NAMESPACE, "events_read")
        self.parsed = Metrics.counter(METRICS_NAMESPACE, "activities_parsed")
        self.dead = Metrics.counter(METRICS_NAMESPACE, "dead_letters")

    def setup(self) -> None:
        from orion.runners import direct_metrics
        from orion.transforms import dofn_specs

        direct_metrics.install()  # the first stage of every graph; see that module
        dofn_specs.install()  # so do the worker's next bundle processors
        self.types = load_activity_types(self.rules_dir, self.template_dirs)
        self.progress = _Progress(type(self).__name__)

    def emit(self, found: Iterable[Activity | DeadLetter]):
        read = parsed = 0
        for item in found:
            read += 1
            self.progress.tick()
            if isinstance(item, Activity):
                parsed += 1
                yield beam.window.TimestampedValue(item, item.occurred_at / 1000)
            else:
                Metrics.counter(METRICS_NAMESPACE, f"dead_letters:{item.reason}").inc()
                self.dead.inc()
                yield beam.pvalue.TaggedOutput(DEAD, item)
        self.read.inc(read)
        self.parsed.inc(parsed)


class _ReadFileFn(_ParseFn):
    def __init__(self, rules_dir: str, template_dirs: tuple[str, ...], allowed_lateness_ms: int):
        super().__init__(rules_dir, template_dirs)
        self.allowed_lateness_ms = allowed_lateness_ms

    def process(self, readable: fileio.ReadableFile):
        path = readable.metadata.path
        # Decompressed here, not by Beam: Beam's compressed files inflate large blocks
        # with no bound on what one block gives.
        with readable.open(compression_type=fileio.CompressionTypes.UNCOMPRESSED) as raw:
            with decompressing(raw, path) as lines:
                yield from self.emit(read_lines(lines, self.types, path, self.allowed_lateness_ms))


class _ParsePayloadFn(_ParseFn):
    def __init__(self, rules_dir: str, template_dirs: tuple[str, ...], source: str):
        super().__init__(rules_dir, template_dirs)
        self.source = source

    def process(self, payload: bytes):
        yield from self.emit(parse_payload(payload, self.types, self.source))


class ReadActivityFiles(beam.PTransform):
    """JSONL files matching a pattern -> (activities, dead letters).

    Each file is read in order, so a line far older than the lines before it is `late`,
    as it would be on a live stream; files are read in parallel. Compressed files (.gz,
    .bz2) are read by their suffix.
    """

    def __init__(self, pattern: str, rules_dir: str, template_dirs: tuple[str, ...] = (),
                 allowed_lateness_ms: int = 60_000):
        super().__init__()
        self.pattern = pattern
        self.rules_dir = rules_dir
        self.template_dirs = tuple(template_dirs)
        self.allowed_lateness_ms = allowed_lateness_ms

    def expand(self, begin):
        results = (
            begin
            | "MatchFiles" >> fileio.MatchFiles(self.pattern)
            | "ReadMatches" >> fileio.ReadMatches()
            | "Reshuffle" >> beam.Reshuffle()
            | "ParseLines" >> beam.ParDo(
                _ReadFileFn(self.rules_dir, self.template_dirs, self.allowed_lateness_ms)
            ).with_outputs(DEAD, main="activities")
        )
        return results.activities, results[DEAD]


class ParseActivities(beam.PTransform):
    """Message payloads (one activity, a JSON array, or JSONL lines) -> (activities,
    dead letters)."""

    def __init__(self, rules_dir: str, template_dirs: tuple[str, ...] = (), source: str = "message"):
        super().__init__()
        self.rules_dir = rules_dir
        self.template_dirs = tuple(template_dirs)
        self.source = source

    def expand(self, payloads):
        results = payloads | "Parse" >> beam.ParDo(
            _ParsePayloadFn(self.rules_dir, self.template_dirs, self.source)
        ).with_outputs(DEAD, main="activities")
        return results.activities, results[DEAD]

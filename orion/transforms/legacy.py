"""The bootstrap's Beam transforms, thin over orion.migration:

- `ReadLegacyActivities`: id ranges -> (activities, dead letters, per-lead-range
  checksums of what was read). Each range is read with parameterized keyset SQL in
  chunks, so no cursor stays open across a whole range and a lost connection retries one
  chunk.
- `ChecksumTarget`: row-key ranges of the Bigtable target -> per-lead-range checksums of
  what it holds, scanned only once `after` (a side input) is ready, i.e. after every
  write.
- `CompareRanges`: source and target checksums -> one RangeComparison per lead range.
- `CountProgress`: counts written batches into the progress files the driver prints.

    orion bootstrap --from mysql://root@127.0.0.1:3306/legacy --to bigtable://my-project/my-instance/activities
"""
from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics

from orion.activities import BadActivity
from orion.deadletters import DeadLetter
from orion.migration import (
    DEFAULT_CHUNK_ROWS,
    LEGACY_COLUMNS,
    ProgressFile,
    RangeChecksum,
    RangeSums,
    LegacyRow,
    activity_from_legacy,
    compare_ranges,
    connect_legacy,
)
from orion.store.base import close_quietly
from orion.transforms.intake import DEAD, METRICS_NAMESPACE

CHECKSUMS = "checksums"
LEGACY_SOURCE = "legacy"  # DeadLetter.source prefix: "legacy activities id=N"

_READ_CHUNK = (f"SELECT {', '.join(LEGACY_COLUMNS)} FROM activities "
               "WHERE id >= %s AND id <= %s ORDER BY id LIMIT %s")
# One tenant's rows (orion bootstrap --tenant): the same id ranges, filtered.
_READ_TENANT_CHUNK = (f"SELECT {', '.join(LEGACY_COLUMNS)} FROM activities "
                      "WHERE id >= %s AND id <= %s AND tenant = %s ORDER BY id LIMIT %s")


class _ReadSplitFn(beam.DoFn):
    """One inclusive id range per element; emits activities (main), dead letters (DEAD)
    and, when the range is done, its checksums by lead range (CHECKSUMS)."""

    def __init__(self, source_uri: str, chunk_rows: int, progress_dir: str | None, tenant: str | None = None):
        self.source_uri = source_uri
        self.chunk_rows = chunk_rows
        self.progress_dir = progress_dir
        self.tenant = tenant
        self.read = Metrics.counter(METRICS_NAMESPACE, "legacy_rows_read")
        self.converted = Metrics.counter(METRICS_NAMESPACE, "legacy_rows_converted")
        self.refused = Metrics.counter(METRICS_NAMESPACE, "legacy_rows_refused")
        self.dead = Metrics.counter(METRICS_NAMESPACE, "dead_letters")
        self.splits = Metrics.counter(METRICS_NAMESPACE, "legacy_splits_read")

    def setup(self) -> None:
        self.connection = None
        self.progress = ProgressFile.of(self.progress_dir) if self.progress_dir else None

    def _fetch(self, low: int, high: int) -> list[tuple]:
        from orion.store.base import with_backoff
        from orion.store.mysql import _is_transient

        def attempt():
            if self.connection is None:
                self.connection = connect_legacy(self.source_uri)
            try:
                with self.connection.cursor() as cursor:
                    if self.tenant is None:
                        cursor.execute(_READ_CHUNK, (low, high, self.chunk_rows))
                    else:
                        cursor.execute(_READ_TENANT_CHUNK, (low, high, self.tenant, self.chunk_rows))
                    return cursor.fetchall()
            except Exception:
                self._close()  # a broken connection is reopened by the next attempt
                raise

        return with_backoff(attempt, _is_transient)

    def process(self, split: tuple[int, int]):
        low, high = split
        sums = RangeSums()
        while low <= high:
            rows = self._fetch(low, high)
            if not rows:
                break
            if self.progress is not None:
                self.progress.add("read", len(rows))
            converted = refused = 0
            for values in rows:
                row = LegacyRow(*values)
                try:
                    activity, attributes_text = activity_from_legacy(row)
                except BadActivity as bad:
                    refused += 1
                    Metrics.counter(METRICS_NAMESPACE, f"dead_letters:{bad.reason}").inc()
                    yield beam.pvalue.TaggedOutput(
                        DEAD, DeadLetter(row.to_json_dict(), bad.reason, bad.detail, f"{LEGACY_SOURCE} activities id={row.id}"))
                    continue
                converted += 1
                sums.add(activity, attributes_text)
                yield activity
            self.read.inc(len(rows))
            self.converted.inc(converted)
            if refused:
                self.refused.inc(refused)
                self.dead.inc(refused)
            if refused and self.progress is not None:
                self.progress.add("dead", refused)
            low = rows[-1][0] + 1
        self.splits.inc()
        for key, checksum in sums.items():
            yield beam.pvalue.TaggedOutput(CHECKSUMS, (key, checksum))

    def finish_bundle(self) -> None:
        if self.progress is not None:
            self.progress.flush()

    def _close(self) -> None:
        close_quietly(self.connection)
        self.connection = None

    def teardown(self) -> None:
        self._close()


class ReadLegacyActivities(beam.PTransform):
    """Inclusive id ranges of the legacy activities table -> (activities, dead letters,
    ((tenant, salt), RangeChecksum) per range read). The ranges are redistributed first,
    so workers read them in parallel. With `tenant`, only that tenant's rows."""

    def __init__(self, source_uri: str, chunk_rows: int = DEFAULT_CHUNK_ROWS, progress_dir: str | None = None,
                 tenant: str | None = None):
        super().__init__()
        self.source_uri = source_uri
        self.chunk_rows = chunk_rows
        self.progress_dir = progress_dir
        self.tenant = tenant

    def expand(self, splits):
        results = (
            splits
            | "SpreadSplits" >> beam.Reshuffle()
            | "ReadSplits" >> beam.ParDo(_ReadSplitFn(self.source_uri, self.chunk_rows, self.progress_dir,
                                                      self.tenant))
            .with_outputs(DEAD, CHECKSUMS, main="activities")
        )
        return results.activities, results[DEAD], results[CHECKSUMS]


class _ChecksumTargetFn(beam.DoFn):
    """One row-key range of the target per element -> its checksums by lead range."""

    def __init__(self, target_uri: str):
        self.target_uri = target_uri
        self.scanned = Metrics.counter(METRICS_NAMESPACE, "target_rows_scanned")

    def setup(self) -> None:
        from orion.store import open_store

        self.store = open_store(self.target_uri)

    def process(self, key_range: tuple[bytes | None, bytes | None], after=None):
        start, end = key_range
        sums = RangeSums()
        for activity in self.store.scan(start, end):
            sums.add(activity)
        self.scanned.inc(sum(checksum.count for _, checksum in sums.items()))
        yield from sums.items()

    def teardown(self) -> None:
        store = getattr(self, "store", None)
        if store is not None:
            store.close()


class ChecksumTarget(beam.PTransform):
    """Row-key ranges of a Bigtable store -> ((tenant, salt), RangeChecksum), scanned in
    parallel once the side input `after` is complete (pass something that only exists
    when every write has finished)."""

    def __init__(self, target_uri: str, after: beam.PCollection | None = None):
        super().__init__()
        self.target_uri = target_uri
        self.after = after

    def expand(self, key_ranges):
        extra = {} if self.after is None else {"after": beam.pvalue.AsSingleton(self.after)}
        return (
            key_ranges
            | "SpreadRanges" >> beam.Reshuffle()
            | "ScanTarget" >> beam.ParDo(_ChecksumTargetFn(self.target_uri), **extra)
        )


class _SumChecksums(beam.CombineFn):
    def create_accumulator(self) -> RangeChecksum:
        return RangeChecksum(0, 0)

    def add_input(self, accumulator: RangeChecksum, checksum: RangeChecksum) -> RangeChecksum:
        return accumulator + checksum

    def merge_accumulators(self, accumulators) -> RangeChecksum:
        total = RangeChecksum(0, 0)
        for accumulator in accumulators:
            total = total + accumulator
        return total

    def extract_output(self, accumulator: RangeChecksum) -> RangeChecksum:
        return accumulator


class CompareRanges(beam.PTransform):
    """(source checksums, target checksums), each ((tenant, salt), RangeChecksum) ->
    RangeComparison per lead range found on either side."""

    def expand(self, sides):
        source, target = sides
        return (
            {
                "source": source | "SumSource" >> beam.CombinePerKey(_SumChecksums()),
                "target": target | "SumTarget" >> beam.CombinePerKey(_SumChecksums()),
            }
            | "JoinSides" >> beam.CoGroupByKey()
            | "Compare" >> beam.MapTuple(lambda key, sides: compare_ranges(key, sides["source"], sides["target"]))
        )


class _CountProgressFn(beam.DoFn):
    def __init__(self, progress_dir: str, name: str):
        self.progress_dir = progress_dir
        self.name = name

    def setup(self) -> None:
        self.progress = ProgressFile.of(self.progress_dir)

    def process(self, batch):
        self.progress.add(self.name, len(batch) if isinstance(batch, (tuple, list)) else 1)
        return ()

    def finish_bundle(self) -> None:
        self.progress.flush()


class CountProgress(beam.PTransform):
    """Elements (or batches, counted by length) -> the count `name` in the progress files."""

    def __init__(self, progress_dir: str, name: str):
        super().__init__()
        self.progress_dir = progress_dir
        self.name = name

    def expand(self, elements):
        return elements | "Count" >> beam.ParDo(_CountProgressFn(self.progress_dir, self.name))

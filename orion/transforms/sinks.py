"""Sinks: `WriteActivities` into an activity store, `WriteJsonLines` into JSONL files.

Both pickle only their configuration, open their client in setup, write in batches,
flush in finish_bundle and count what they wrote. Store writes are idempotent, so a
retried bundle rewrites the same rows. `WriteActivities` returns the dead letters of the
rows the store refused (the graph flattens them with the others) and feeds what it wrote
to `IndexActivities`.

    orion run --store sqlite:///orion-data/activities.db
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import GlobalWindow, GlobalWindows
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from orion.deadletters import DeadLetter
from orion.transforms.intake import METRICS_NAMESPACE

DEFAULT_BATCH_SIZE = 500
STORE_SOURCE = "store"  # DeadLetter.source of rows the store refused
WRITTEN = "written"  # the output tag of written batches (what IndexActivities indexes)
_GLOBAL_WINDOW = GlobalWindow()


class _WriteActivitiesFn(beam.DoFn):
    """Buffers a bundle's activities and writes them with `store.write_with_failures`
    every `batch_size` and at the end of the bundle.

    Outputs: each written batch, as a tuple of activities (tag WRITTEN, for
    IndexActivities), and a DeadLetter per activity the store refused (main output),
    with the store's reason code and detail. Both are emitted in the global window at
    the event time of the activities they come from (their occurred_at), so the flush
    in finish_bundle emits exactly what a flush in process would. Counters: `stored`,
    `store_failed`, and `dead_letters` / `dead_letters:REASON` as every stage counts
    its dead letters.

    This is the global-window DoFn: it asks Beam for no window or timestamp, since
    either puts every element on the SDK's slower per-window path (about a sixth of
    the whole graph's time in-process). Windowed input takes _WriteWindowedActivitiesFn.
    """

    def __init__(self, store_uri: str, batch_size: int, emit_written: bool):
        self.store_uri = store_uri
        self.batch_size = batch_size
        self.emit_written = emit_written
        self.stored = Metrics.counter(METRICS_NAMESPACE, "stored")
        self.failed = Metrics.counter(METRICS_NAMESPACE, "store_failed")
        self.dead = Metrics.counter(METRICS_NAMESPACE, "dead_letters")

    def setup(self) -> None:
        from orion.store import open_store

        self.store = open_store(self.store_uri)
        self.store.init()

    def start_bundle(self) -> None:
        self.batch: list[tuple] = []  # (activity, timestamp, window); None: the global window

    def process(self, activity):
        self.batch.append((activity, None, None))
        if len(self.batch) >= self.batch_size:
            yield from self._flush()

    def finish_bundle(self):
        yield from self._flush()

    def _flush(self):
        if not self.batch:
            return
        batch, self.batch = self.batch, []
        result = self.store.write_with_failures([activity for activity, _, _ in batch])
        self.stored.inc(result.written)
        refused = {id(f.activity): f for f in result.failed}
        if refused:
            self.failed.inc(len(refused))
            self.dead.inc(len(refused))
        written_by_window: dict = {}  # window (None: global) -> (activities, first timestamp)
        for activity, timestamp, window in batch:
            failure = refused.get(id(activity))
            if failure is None:
                if self.emit_written:
                    found = written_by_window.get(window)
                    if found is None:
                        found = written_by_window[window] = ([], _timestamp(activity, timestamp))
                    found[0].append(activity)
                continue
            Metrics.counter(METRICS_NAMESPACE, f"dead_letters:{failure.reason}").inc()
            yield WindowedValue(
                DeadLetter(activity.to_json_dict(), failure.reason, failure.detail, STORE_SOURCE),
                _timestamp(activity, timestamp), (window or _GLOBAL_WINDOW,))
        for window, (activities, first_timestamp) in written_by_window.items():
            yield TaggedOutput(WRITTEN, WindowedValue(tuple(activities), first_timestamp, (window or _GLOBAL_WINDOW,)))

    def teardown(self) -> None:
        store = getattr(self, "store", None)
        if store is not None:
            store.close()


class _WriteWindowedActivitiesFn(_WriteActivitiesFn):
    """_WriteActivitiesFn for input in windows other than the global window: what it
    emits goes in the window and at the timestamp of the activities it comes from."""

    def process(self, activity, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        self.batch.append((activity, timestamp, window))
        if len(self.batch) >= self.batch_size:
            yield from self._flush()


def _timestamp(activity, timestamp: Timestamp | None) -> Timestamp:
    """The timestamp the input gave an activity or, from the global-window DoFn, which
    asks for none, its event time."""
    return timestamp if timestamp is not None else Timestamp(micros=activity.occurred_at * 1000)


class _IndexActivitiesFn(beam.DoFn):
    """Brings the activity index up to date for each written batch (idempotent: the
    store sets index entries, it never blindly increments them). Counter: `indexed`,
    the index entries set."""

    def __init__(self, store_uri: str):
        self.store_uri = store_uri
        self.indexed = Metrics.counter(METRICS_NAMESPACE, "indexed")

    def setup(self) -> None:
        from orion.store import open_store

        self.store = open_store(self.store_uri)

    def process(self, written: tuple):
        # A store that cannot index raises StoreError: the runner retries the bundle,
        # and rewriting the index entries of a batch is harmless.
        self.indexed.inc(self.store.index_activities(written))
        return ()

    def teardown(self) -> None:
        store = getattr(self, "store", None)
        if store is not None:
            store.close()


class IndexActivities(beam.PTransform):
    """Written batches (tuples of activities) -> the activity index of `store_uri`."""

    def __init__(self, store_uri: str):
        super().__init__()
        self.store_uri = store_uri

    def expand(self, written_batches):
        return written_batches | "IndexBatches" >> beam.ParDo(_IndexActivitiesFn(self.store_uri))


class WriteToStore(beam.PTransform):
    """Activities -> the activity store named by `store_uri` (idempotent); returns
    (dead letters of the refused rows, written batches as tuples of activities). With
    `emit_written=False` the second PCollection stays empty (nothing to index)."""

    def __init__(self, store_uri: str, batch_size: int = DEFAULT_BATCH_SIZE, emit_written: bool = True):
        super().__init__()
        self.store_uri = store_uri
        self.batch_size = batch_size
        self.emit_written = emit_written

    def expand(self, activities):
        windowed = not isinstance(activities.windowing.windowfn, GlobalWindows)
        write_fn = _WriteWindowedActivitiesFn if windowed else _WriteActivitiesFn
        results = activities | "Write" >> beam.ParDo(
            write_fn(self.store_uri, self.batch_size, self.emit_written)
        ).with_outputs(WRITTEN, main="dead_letters")
        return results.dead_letters, results[WRITTEN]


class WriteActivities(beam.PTransform):
    """Activities -> the activity store named by `store_uri` (idempotent), then the
    activity index (IndexActivities) for what was written, unless `index` is False.

    Returns the dead letters: one DeadLetter (reason `unstorable` or
    `store_write_failed`, source "store") per activity the store refused, so the graph
    flattens them with its other dead letters; nothing the store refuses vanishes. A
    store that cannot be reached at all raises StoreError, and the runner retries the
    bundle.
    """

    def __init__(self, store_uri: str, batch_size: int = DEFAULT_BATCH_SIZE, index: bool = True):
        super().__init__()
        self.store_uri = store_uri
        self.batch_size = batch_size
        self.index = index

    def expand(self, activities):
        dead_letters, written = activities | "WriteToStore" >> WriteToStore(
            self.store_uri, self.batch_size, emit_written=self.index)
        if self.index:
            written | "IndexActivities" >> IndexActivities(self.store_uri)
        return dead_letters


class _WriteJsonLinesFn(beam.DoFn):
    """Appends to one file per DoFn instance, `<prefix>-<unique>.jsonl`; works the same
    for bounded and streaming input, with no windowing needed."""

    def __init__(self, prefix: str, counter: str):
        self.prefix = prefix
        self.written = Metrics.counter(METRICS_NAMESPACE, counter)

    def setup(self) -> None:
        path = Path(f"{self.prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.file = None

    def process(self, record):
        if self.file is None:
            self.file = open(self.path, "a", encoding="utf-8")
        self.file.write(_to_json(record) + "\n")
        self.written.inc()
        return ()

    def finish_bundle(self) -> None:
        if self.file is not None:
            self.file.flush()

    def teardown(self) -> None:
        if getattr(self, "file", None) is not None:
            self.file.close()
            self.file = None


def _to_json(record) -> str:
    to_json = getattr(record, "to_json", None)
    if to_json is not None:
        return to_json()
    to_dict = getattr(record, "to_json_dict", None)
    return json.dumps(to_dict() if to_dict else record, ensure_ascii=False, default=str)


class WriteJsonLines(beam.PTransform):
    """Records (with to_json / to_json_dict, or plain JSON values) -> JSONL files named
    `<prefix>-<pid>-<id>.jsonl`."""

    def __init__(self, prefix: str, counter: str = "written"):
        super().__init__()
        self.prefix = prefix
        self.counter = counter

    def expand(self, records):
        return records | "WriteJsonLines" >> beam.ParDo(_WriteJsonLinesFn(self.prefix, self.counter))


class _WriteProfilesFn(beam.DoFn):
    """Buffers a bundle's lead profiles (the last one of each lead wins) and writes them
    to the store every `batch_size` leads and at the end of the bundle. Writing a
    profile is an upsert of the whole profile, so a retried bundle writes the same rows.
    Counter: `profiles_written`."""

    def __init__(self, store_uri: str, batch_size: int):
        self.store_uri = store_uri
        self.batch_size = batch_size
        self.written = Metrics.counter(METRICS_NAMESPACE, "profiles_written")

    def setup(self) -> None:
        from orion.seeding import open_initialised_store

        self.store = open_initialised_store(self.store_uri)

    def start_bundle(self) -> None:
        self.batch: dict = {}

    def process(self, profile):
        self.batch[(profile.tenant, profile.lead_id)] = profile
        if len(self.batch) >= self.batch_size:
            self._flush()
        return ()

    def finish_bundle(self) -> None:
        self._flush()

    def _flush(self) -> None:
        if self.batch:
            profiles, self.batch = list(self.batch.values()), {}
            self.written.inc(self.store.write_profiles(profiles))

    def teardown(self) -> None:
        store = getattr(self, "store", None)
        if store is not None:
            store.close()


class WriteProfiles(beam.PTransform):
    """StoredProfiles (orion.store.base) -> the lead profiles of the store at
    `store_uri`, in batches, idempotently."""

    def __init__(self, store_uri: str, batch_size: int = DEFAULT_BATCH_SIZE):
        super().__init__()
        self.store_uri = store_uri
        self.batch_size = batch_size

    def expand(self, profiles):
        return profiles | "WriteProfiles" >> beam.ParDo(_WriteProfilesFn(self.store_uri, self.batch_size))

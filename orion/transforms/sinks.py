"""Sinks: `WriteActivities` into an activity store, `WriteJsonLines` into JSONL files.

The store sinks pickle only their configuration, open their client in setup, write in
batches, flush in finish_bundle and count what they wrote. Store writes are idempotent,
so a retried bundle rewrites the same rows. `WriteActivities` returns the dead letters of
the rows the store refused (the graph flattens them with the others) and feeds what it
wrote to `IndexActivities`. `WriteJsonLines` writes through Beam's `fileio.WriteToFiles`,
which moves a bundle's file into place only once the bundle has committed, so a retried
bundle writes no line twice, on a local disk or in Cloud Storage.

    orion run --store sqlite:///orion-data/activities.db --out-dir orion-data
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Callable

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.value_provider import StaticValueProvider
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import FixedWindows, GlobalWindow, GlobalWindows, TimestampedValue
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from orion.store.base import write_batch, write_profile_batch
from orion.transforms.intake import METRICS_NAMESPACE

DEFAULT_BATCH_SIZE = 500
WRITTEN = "written"  # the output tag of written batches (what IndexActivities indexes)
_GLOBAL_WINDOW = GlobalWindow()
JSONL_SUFFIX = ".jsonl"
DEFAULT_WINDOW_SECONDS = 10.0  # WriteJsonLines, unbounded input: one set of files per window


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
        done = write_batch(self.store, [activity for activity, _, _ in batch])
        for name, n in done.counts.items():
            Metrics.counter(METRICS_NAMESPACE, name).inc(n)
        refused = done.refused
        written_by_window: dict = {}  # window (None: global) -> (activities, first timestamp)
        for activity, timestamp, window in batch:
            letter = refused.get(id(activity))
            if letter is None:
                if self.emit_written:
                    found = written_by_window.get(window)
                    if found is None:
                        found = written_by_window[window] = ([], _timestamp(activity, timestamp))
                    found[0].append(activity)
                continue
            yield WindowedValue(letter, _timestamp(activity, timestamp), (window or _GLOBAL_WINDOW,))
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


class _JsonLinesFn(beam.DoFn):
    """Records -> their JSON lines (`_to_json`), counted under the counter's name.

    This is the global-window DoFn: it asks Beam for no window or timestamp (see
    _WriteActivitiesFn), so bounded runs keep the SDK's fast per-element path."""

    def __init__(self, counter: str):
        self.written = Metrics.counter(METRICS_NAMESPACE, counter)

    def process(self, record):
        self.written.inc()
        yield _to_json(record)


class _AtWriteTimeFn(beam.DoFn):
    """Unbounded input: each line at the later of its own timestamp and `clock()`.

    A record's own timestamp may be far behind the watermark (a late activity's dead
    letter carries its event time; a Pub/Sub message its publish time), and a window
    the watermark has passed drops what enters it. The wall clock is never behind the
    watermark of a real source, so a line stamped with it always finds its window
    open; where the records' own times run ahead of the clock (a TestStream's, or a
    clock that returns 0), the files follow them."""

    def __init__(self, clock: Callable[[], float]):
        self.clock = clock

    def process(self, line, timestamp=beam.DoFn.TimestampParam):
        now = Timestamp.of(self.clock())
        yield TimestampedValue(line, timestamp if timestamp > now else now)


class _RemoveTempDirectoryFn(beam.DoFn):
    """Bounded input, once every file is written: checks that each is in place, then
    deletes the temporary directory with whatever a failed attempt of a retried bundle
    left there (the retry wrote those lines again, into a file that was moved).

    WriteToFiles logs a move that failed only at debug level (a retried move fails
    harmlessly); a file missing here fails the run instead, and its lines stay in the
    temporary directory."""

    def __init__(self, directory: str, temp_directory: str):
        self.directory = directory
        self.temp_directory = temp_directory

    def process(self, file_names: list[str]):
        missing = [name for name in file_names if not FileSystems.exists(FileSystems.join(self.directory, name))]
        if missing:
            raise OSError(f"{len(missing)} file(s) were not moved into {self.directory} "
                          f"(e.g. {missing[0]}); their lines are in {self.temp_directory}")
        left = FileSystems.match([FileSystems.join(self.temp_directory, "*")])[0].metadata_list
        if left:
            FileSystems.delete([found.path for found in left])
        # The directory itself: a local one is removed; Cloud Storage has no directories.
        if FileSystems.match([self.temp_directory])[0].metadata_list:
            FileSystems.delete([self.temp_directory])
        return ()


def _to_json(record) -> str:
    to_json = getattr(record, "to_json", None)
    if to_json is not None:
        return to_json()
    to_dict = getattr(record, "to_json_dict", None)
    return json.dumps(to_dict() if to_dict else record, ensure_ascii=False, default=str)


class WriteJsonLines(beam.PTransform):
    """Records (with to_json / to_json_dict, or plain JSON values) -> JSONL files
    `<prefix>-*.jsonl`, written through Beam's file systems (a local path, gs://...)
    with `fileio.WriteToFiles`: each bundle writes a temporary file, and a file is
    moved into place only once the bundle that wrote it has committed. So a retried
    bundle writes no line twice, and a line is in the output once or, before its
    files are committed, not yet.

    Bounded input is written in the global window, as `<prefix>-SSSSS-of-NNNNN.jsonl`,
    once the input is done; then the temporary directory is deleted. Unbounded input
    is cut into windows of `window_s` seconds by when its lines are written (see
    _AtWriteTimeFn) and each window is written once the watermark passes its end, as
    `<prefix>-<start>-<end>-SSSSS-of-NNNNN.jsonl`: a job stopped without a drain
    loses the lines of the windows still open (the store, the profiles and the
    outbox have them all).

    The temporary directory is `temp_directory` if given, else `.temp-<name>-<unique>`
    beside the files, never Beam's --temp_location: a local rename cannot cross file
    systems, and Beam logs a move that failed only at debug level. Counter: `counter`,
    the lines handed to the files. Returns the written files (fileio.FileResult)."""

    def __init__(self, prefix: str, counter: str = "written", window_s: float = DEFAULT_WINDOW_SECONDS,
                 clock: Callable[[], float] = time.time, temp_directory: str | None = None):
        super().__init__()
        self.prefix = str(prefix)
        self.counter = counter
        self.window_s = window_s
        self.clock = clock
        self.temp_directory = temp_directory

    def expand(self, records):
        directory, name = FileSystems.split(self.prefix)
        temp_directory = self.temp_directory or FileSystems.join(directory, f".temp-{name}-{uuid.uuid4().hex}")
        lines = records | "ToJsonLines" >> beam.ParDo(_JsonLinesFn(self.counter))
        if records.is_bounded:
            if not isinstance(records.windowing.windowfn, GlobalWindows):
                lines = lines | "IntoGlobalWindow" >> beam.WindowInto(GlobalWindows())
        else:
            lines = (lines
                     | "AtWriteTime" >> beam.ParDo(_AtWriteTimeFn(self.clock))
                     | "IntoWriteWindows" >> beam.WindowInto(FixedWindows(self.window_s)))
        written = lines | "WriteToFiles" >> fileio.WriteToFiles(
            path=directory,
            file_naming=fileio.default_file_naming(prefix=name, suffix=JSONL_SUFFIX),
            temp_directory=StaticValueProvider(str, temp_directory),
        )
        if records.is_bounded:
            (written
             | "FileNames" >> beam.Map(lambda written_file: written_file.file_name)
             | "AllFileNames" >> beam.combiners.ToList()
             | "RemoveTempDirectory" >> beam.ParDo(_RemoveTempDirectoryFn(directory, temp_directory)))
        return written


class _WriteProfilesFn(beam.DoFn):
    """Buffers a bundle's lead profiles (the last one of each lead wins) and writes them
    to the store every `batch_size` leads and at the end of the bundle. Writing a
    profile is an upsert of the whole profile, so a retried bundle writes the same rows.
    A profile the store cannot hold is a dead letter (the output), the others are
    written (orion.store.base.write_profile_batch). Counter: `profiles_written`."""

    def __init__(self, store_uri: str, batch_size: int):
        self.store_uri = store_uri
        self.batch_size = batch_size

    def setup(self) -> None:
        from orion.seeding import open_initialised_store

        self.store = open_initialised_store(self.store_uri)

    def start_bundle(self) -> None:
        self.batch: dict = {}

    def process(self, profile):
        self.batch[(profile.tenant, profile.lead_id)] = profile
        if len(self.batch) >= self.batch_size:
            yield from self._flush()

    def finish_bundle(self):
        # A profile has no event time of its own: the dead letter of one refused at the
        # end of a bundle is stamped now (WriteJsonLines writes it by its own clock).
        for letter in self._flush():
            yield WindowedValue(letter, Timestamp.now(), (_GLOBAL_WINDOW,))

    def _flush(self):
        if not self.batch:
            return
        profiles, self.batch = list(self.batch.values()), {}
        letters, counts = write_profile_batch(self.store, profiles)
        for name, n in counts.items():
            Metrics.counter(METRICS_NAMESPACE, name).inc(n)
        yield from letters

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

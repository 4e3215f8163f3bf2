"""Sinks: `WriteActivities` into an activity store, `WriteJsonLines` into JSONL files.

Both pickle only their configuration, open their client in setup, write in batches,
flush in finish_bundle and count what they wrote. Store writes are idempotent, so a
retried bundle rewrites the same rows.

    orion run --store sqlite:///orion-data/activities.db
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import apache_beam as beam
from apache_beam.metrics import Metrics

from orion.transforms.intake import METRICS_NAMESPACE

DEFAULT_BATCH_SIZE = 500


class _WriteActivitiesFn(beam.DoFn):
    def __init__(self, store_uri: str, batch_size: int):
        self.store_uri = store_uri
        self.batch_size = batch_size
        self.stored = Metrics.counter(METRICS_NAMESPACE, "stored")

    def setup(self) -> None:
        from orion.store import open_store

        self.store = open_store(self.store_uri)
        self.store.init()

    def start_bundle(self) -> None:
        self.batch = []

    def process(self, activity):
        self.batch.append(activity)
        if len(self.batch) >= self.batch_size:
            self._flush()

    def finish_bundle(self) -> None:
        self._flush()

    def _flush(self) -> None:
        if self.batch:
            self.stored.inc(self.store.write(self.batch))
            self.batch = []

    def teardown(self) -> None:
        store = getattr(self, "store", None)
        if store is not None:
            store.close()


class WriteActivities(beam.PTransform):
    """Activities -> the activity store named by `store_uri` (idempotent)."""

    def __init__(self, store_uri: str, batch_size: int = DEFAULT_BATCH_SIZE):
        super().__init__()
        self.store_uri = store_uri
        self.batch_size = batch_size

    def expand(self, activities):
        return activities | "WriteToStore" >> beam.ParDo(_WriteActivitiesFn(self.store_uri, self.batch_size))


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

"""The ceiling of the graph benchmark: the same runner reading the same input, parsing
each event's JSON, keying it by (tenant, lead) and running a bare stateful DoFn that reads
and writes one value state per element. A module of its own so Beam pickles its functions
by reference (the benchmark itself runs as __main__).

    python -m benchmarks.bench_graph
"""
from __future__ import annotations

import json
import threading
from typing import Tuple

import apache_beam as beam
from apache_beam.coders import VarIntCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

CEILING_NAMESPACE = "ceiling"

# Elements the bare DoFn processed in this process. The bundle-based DirectRunner (the
# streaming runner here) runs in the benchmark's process, and without the fix in
# orion.runners.direct_metrics it stops updating a streaming pipeline's counters after
# its first bundles; streaming progress is read from here, relying on neither.
_processed_here = [0]
_processed_lock = threading.Lock()


def processed_in_this_process() -> int:
    with _processed_lock:
        return _processed_here[0]


def _key(event: dict) -> tuple[tuple[str, str], dict]:
    return (event["tenant"], event["lead_id"]), event


def _key_line(line: str) -> tuple[tuple[str, str], dict]:
    return _key(json.loads(line))


def _key_payload(payload: bytes) -> list[tuple[tuple[str, str], dict]]:
    return [_key(event) for event in json.loads(payload)]


class BareStatefulFn(beam.DoFn):
    """Reads and writes one value state per element: the floor of any per-lead stage."""

    COUNT = ReadModifyWriteStateSpec("count", VarIntCoder())

    def __init__(self):
        self.processed = Metrics.counter(CEILING_NAMESPACE, "processed")

    def setup(self) -> None:
        from orion.transforms import state_sizing

        state_sizing.install()  # what Orion's stateful DoFn installs, so both weigh state alike

    def process(self, element, count=beam.DoFn.StateParam(COUNT)):
        count.write((count.read() or 0) + 1)
        self.processed.inc()
        with _processed_lock:
            _processed_here[0] += 1
        return ()


def build_ceiling_files(pipeline: beam.Pipeline, pattern: str) -> None:
    (pipeline
     | "Read" >> beam.io.ReadFromText(pattern)
     | "Key" >> beam.Map(_key_line).with_output_types(Tuple[Tuple[str, str], dict])
     | "Bare" >> beam.ParDo(BareStatefulFn()))


def build_ceiling_pubsub(pipeline: beam.Pipeline, subscription: str) -> None:
    (pipeline
     | "Read" >> beam.io.ReadFromPubSub(subscription=subscription)
     | "Key" >> beam.FlatMap(_key_payload).with_output_types(
         Tuple[Tuple[str, str], dict])
     | "Bare" >> beam.ParDo(BareStatefulFn()))


def ceiling_count(result) -> int:
    return sum((c.committed or c.attempted or 0) for c in result.metrics().query()["counters"]
               if c.key.metric.namespace == CEILING_NAMESPACE)

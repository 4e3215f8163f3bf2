"""The Beam graph's Kafka intake: `ReadKafkaPayloads` reads a topic's records through Beam's
ReadFromKafka (a Java cross-language transform: Beam's expansion service expands it into
KafkaIO, and Beam's Java SDK harness runs it) and hands on their values, the same
payloads the Flink job reads (one activity, a JSON array as `orion collect
--kafka-servers` publishes, or JSONL), for `ParseActivities` (orion.intake.parse_payload,
as on Flink and Pub/Sub). The services it needs and the runner that can run it are
started by orion/runners/beam_kafka.py.

    orion run --kafka-servers 127.0.0.1:9092 --kafka-topic activities --duration 60

The read is bounded: it ends after `max_records` records or `max_read_s` seconds of
reading, so the graph then finishes as over files (every lead released, every file
written). It reads on from the consumer group's committed offsets (the earliest for a
new group), and commits the offsets it read when the runner finalizes the reading
bundles, so the next run reads on from there.
"""
from __future__ import annotations

from typing import NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics

from orion.transforms.intake import METRICS_NAMESPACE

DEFAULT_GROUP = "orion"


class KafkaIntake(NamedTuple):
    """Where and how much the graph reads from Kafka."""

    servers: str  # bootstrap servers, HOST:PORT[,...]
    topic: str
    group: str = DEFAULT_GROUP  # the consumer group whose offsets the run reads on from and commits
    max_records: int | None = None  # stop after this many records ...
    max_read_s: float | None = None  # ... or after reading this long (one of the two is needed)

    @property
    def source(self) -> str:
        """How dead letters name where a record came from."""
        return f"kafka:{self.topic}"


class ReadKafkaPayloads(beam.PTransform):
    """A Kafka topic -> its records' values (bytes), bounded by `intake.max_records` or
    `intake.max_read_s`; `expansion_service` is the HOST:PORT of Beam's expansion service
    with KafkaIO (orion/runners/beam_kafka.py starts one)."""

    def __init__(self, intake: KafkaIntake, expansion_service: str):
        super().__init__()
        if intake.max_records is None and intake.max_read_s is None:
            raise ValueError("the Beam graph reads Kafka for a bounded time or number of records: "
                             "give max_read_s (--duration) or max_records")
        self.intake = intake
        self.expansion_service = expansion_service

    def expand(self, pipeline):
        from apache_beam.io.kafka import ReadFromKafka

        intake = self.intake
        records = pipeline | "ReadFromKafka" >> ReadFromKafka(
            consumer_config={
                "bootstrap.servers": intake.servers,
                "group.id": intake.group,
                "auto.offset.reset": "earliest",
                # Offsets are committed when the runner finalizes a bundle, not on a timer.
                "enable.auto.commit": "false",
            },
            topics=[intake.topic],
            max_num_records=intake.max_records,
            max_read_time=None if intake.max_read_s is None else max(1, round(intake.max_read_s)),
            commit_offset_in_finalize=True,
            expansion_service=self.expansion_service,
        )
        return records | "RecordValues" >> beam.ParDo(_RecordValueFn())


class _RecordValueFn(beam.DoFn):
    """(key, value) -> value, counting the records read. A record without a value (a
    tombstone) goes on as an empty payload, which the parser makes a dead letter."""

    def __init__(self):
        self.read = Metrics.counter(METRICS_NAMESPACE, "kafka_records_read")

    def process(self, record):
        self.read.inc()
        yield record[1] or b""

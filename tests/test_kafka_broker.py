"""The test Kafka broker (orion.testing.kafka) is a real Kafka: keyed records keep their
partition and order, topics are only made on purpose, transactions (what Flink's
exactly-once sink uses) commit and abort on a single node, and stop() leaves nothing
running.

    .venv/bin/python -m pytest -q tests/test_kafka_broker.py
"""
from __future__ import annotations

import socket
import time
from collections import defaultdict

import pytest
from confluent_kafka import Consumer, KafkaError, Producer

from kafka_services import new_topic_name
from orion.testing.kafka import KafkaBroker, KafkaUnavailable


def consume(bootstrap_servers: str, topic: str, expected: int, timeout_s: float = 60,
            settings: dict | None = None) -> list:
    """Messages of `topic` from the earliest offset, until `expected` have come or the
    time is up (then the test's own assertion reports what is missing)."""
    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": new_topic_name("group"),
                         "auto.offset.reset": "earliest", "enable.auto.commit": False, **(settings or {})})
    messages = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout_s
        while len(messages) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error() is not None and \
                    message.error().code() == KafkaError._PARTITION_EOF:
                continue
            assert message.error() is None, message.error()
            messages.append(message)
    finally:
        consumer.close()
    return messages


def test_records_with_one_key_stay_in_one_partition_in_the_order_produced(kafka_broker):
    topic = new_topic_name("keyed")
    kafka_broker.create_topic(topic, partitions=3)
    delivered = {}

    def on_delivery(error, message):
        assert error is None, error
        delivered[message.value()] = message.partition()

    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap_servers, "enable.idempotence": True,
                         "linger.ms": 5})
    leads = [f"acme/L{n}" for n in range(12)]
    sent = 0
    for sequence in range(25):
        for lead in leads:
            producer.produce(topic, key=lead.encode(), value=f"{lead}#{sequence:03d}".encode(),
                             on_delivery=on_delivery)
            sent += 1
    assert producer.flush(30) == 0, "records still unsent after 30 s"
    assert len(delivered) == sent

    messages = consume(kafka_broker.bootstrap_servers, topic, sent)

    assert len(messages) == sent
    partitions_of, sequences_of = defaultdict(set), defaultdict(list)
    for message in messages:
        lead = message.key().decode()
        value = message.value().decode()
        assert value.startswith(lead + "#")
        assert message.partition() == delivered[message.value()]
        partitions_of[lead].add(message.partition())
        sequences_of[lead].append(int(value.rsplit("#", 1)[1]))
    assert all(len(found) == 1 for found in partitions_of.values()), dict(partitions_of)
    assert all(found == list(range(25)) for found in sequences_of.values()), dict(sequences_of)
    # The keys spread over the topic: a broker or producer that put everything into one
    # partition would make the checks above trivially true.
    assert len(set().union(*partitions_of.values())) == 3


def test_a_topic_nobody_created_is_not_made_by_producing_to_it(kafka_broker):
    topic = new_topic_name("never-created")
    failures = []
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap_servers, "message.timeout.ms": 3000})
    producer.produce(topic, value=b"x", on_delivery=lambda error, message: failures.append(error))
    producer.flush(15)

    assert len(failures) == 1 and failures[0] is not None
    assert topic not in kafka_broker.admin().list_topics(timeout=10).topics


def test_transactions_commit_and_abort_on_a_single_broker(kafka_broker):
    topic = new_topic_name("transactional")
    kafka_broker.create_topic(topic, partitions=2)
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap_servers,
                         "transactional.id": new_topic_name("writer")})
    producer.init_transactions(60)
    producer.begin_transaction()
    for n in range(5):
        producer.produce(topic, key=b"k", value=f"aborted-{n}".encode())
    producer.abort_transaction(60)
    producer.begin_transaction()
    for n in range(5):
        producer.produce(topic, key=b"k", value=f"committed-{n}".encode())
    producer.commit_transaction(60)

    read_committed = {"isolation.level": "read_committed"}
    messages = consume(kafka_broker.bootstrap_servers, topic, 5, settings=read_committed)
    # A second reader, waiting 3 s for a sixth record, would find an aborted one let through.
    messages += consume(kafka_broker.bootstrap_servers, topic, 6, timeout_s=3, settings=read_committed)[5:]

    assert [m.value().decode() for m in messages] == [f"committed-{n}" for n in range(5)]


def test_stop_ends_the_broker_and_deletes_its_data(tmp_path):
    broker = KafkaBroker(tmp_path / "kafka")
    try:
        broker.start()
        process, port = broker.process, broker.port
        assert broker.data_dir.is_dir() and broker.log_file.is_file()
    finally:
        broker.stop()

    assert process.poll() is not None
    assert not broker.data_dir.exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    broker.stop()  # a second stop is harmless


def test_without_java_the_broker_says_what_to_install(tmp_path, monkeypatch):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("JAVA_HOME", raising=False)

    with pytest.raises(KafkaUnavailable, match="openjdk-17"):
        KafkaBroker(tmp_path / "kafka").start()

"""The Kafka broker the Kafka tests use, as a session fixture (conftest.py imports it):
`kafka_broker`, one real single-node KRaft broker (orion.testing.kafka.KafkaBroker, from
Apache Kafka's jars fetched once from Maven Central) on a free port, stopped at the end of
the session. Without Java 17, Maven (for the first fetch) or confluent-kafka the tests
fail and say what to install. Nothing is skipped.

    .venv/bin/python -m pytest -q tests/test_kafka_broker.py
"""
from __future__ import annotations

import itertools
import os

import pytest

from orion.testing.kafka import KafkaBroker, KafkaUnavailable

_topics = itertools.count()


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
    """A started KafkaBroker: `kafka_broker.bootstrap_servers`, `kafka_broker.create_topic(name, n)`."""
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"))
    # pytest.fail outside the except clause, so the report is the message alone.
    failure = None
    try:
        broker.start()
    except KafkaUnavailable as error:
        failure = f"the Kafka tests need a Kafka broker: {error}"
    if failure is not None:
        broker.stop()
        pytest.fail(failure, pytrace=False)
    try:
        yield broker
    finally:
        broker.stop()


def new_topic_name(prefix: str = "topic") -> str:
    """A topic name no other test of this session uses (the broker is shared)."""
    return f"{prefix}-{os.getpid()}-{next(_topics)}"

"""Pub/Sub helpers for tests and benchmarks against the emulator: make a topic with a
subscription, and drain a subscription (pull and acknowledge until it stays empty).

    python -c "from orion.testing.pubsub import drain; help(drain)"
"""
from __future__ import annotations

import time
import warnings


def create_topic_and_subscription(topic: str, subscription: str) -> None:
    """Both on the emulator named by PUBSUB_EMULATOR_HOST (read when called)."""
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    try:
        publisher.create_topic(name=topic)
        subscriber.create_subscription(name=subscription, topic=topic, ack_deadline_seconds=60)
    finally:
        subscriber.close()
        publisher.transport.close()


def drain(subscription: str, quiet_seconds: float = 1.0, max_messages: int = 1000) -> list:
    """Every message left on `subscription`, acknowledged, as PubsubMessage objects; stops
    once pulls have found nothing for `quiet_seconds`."""
    from google.cloud import pubsub_v1

    subscriber = pubsub_v1.SubscriberClient()
    messages = []
    try:
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < quiet_seconds:
            with warnings.catch_warnings():  # deprecated, yet the way to poll without a 90 s hold
                warnings.simplefilter("ignore", DeprecationWarning)
                response = subscriber.pull(subscription=subscription, max_messages=max_messages,
                                           return_immediately=True, timeout=30)
            if not response.received_messages:
                time.sleep(0.05)
                continue
            quiet_since = time.monotonic()
            messages.extend(received.message for received in response.received_messages)
            subscriber.acknowledge(subscription=subscription,
                                   ack_ids=[received.ack_id for received in response.received_messages])
    finally:
        subscriber.close()
    return messages

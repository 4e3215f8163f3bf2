"""Stopping a streaming run on Beam's local DirectRunner without losing what it pulled.

That runner acknowledges Pub/Sub messages as it pulls them, before the graph has
processed them, and a lead's activities wait in its state until the watermark passes
them plus the allowed lateness. Cancelling the run at once therefore lost every activity
pulled in the last allowed-lateness of the run: acknowledged, so gone from the
subscription, and never released.

`stop_pulling()` makes the runner's Pub/Sub reads return nothing from then on: no
message is pulled, so none is acknowledged, and what is published later stays on the
subscription for the next run. The source's watermark still follows the wall clock, so
within the allowed lateness every activity already pulled is released, evaluated and
stored; `orion run` waits for that (draining) before it cancels the pipeline.
Its reads also pull with a short wait (PULL_TIMEOUT_S): the runner's own pull waits up to
30 s on an idle subscription, and the watermark, so every release timer, stands still
meanwhile. `install()` patches the runner once per process (idempotent); runners that
acknowledge after processing (Dataflow, Flink) are unaffected.

    python -c "from orion.runners.direct_pubsub import install; install()"
"""
from __future__ import annotations

import threading

_lock = threading.Lock()
_installed = [False]
_stopped = threading.Event()


# How long one pull waits for messages. The runner's own pull waits up to 30 s on an
# idle subscription, and its watermark (so every release timer) stands still meanwhile:
# a stop could not drain, and an idle stream released late.
PULL_TIMEOUT_S = 2.0


MAX_MESSAGES = 10  # per pull, as the runner's own read


def install() -> None:
    with _lock:
        if _installed[0]:
            return
        from apache_beam.runners.direct import transform_evaluator

        evaluator = transform_evaluator._PubSubReadEvaluator
        original = evaluator._read_from_pubsub

        def read_from_pubsub(self, timestamp_attribute):
            if _stopped.is_set():
                return []  # nothing pulled: nothing acknowledged
            if timestamp_attribute:
                return original(self, timestamp_attribute)  # not a read Orion makes
            return _read_briefly(self._sub_name)

        evaluator._read_from_pubsub = read_from_pubsub
        _installed[0] = True


def _read_briefly(subscription: str) -> list:
    """What the runner's read returns, (publish time, message) of each message pulled,
    acknowledged as the runner does, but from a pull that waits at most PULL_TIMEOUT_S
    (an idle subscription reads nothing)."""
    from apache_beam.io.gcp.pubsub import PubsubMessage
    from apache_beam.utils.timestamp import Timestamp
    from google.api_core import exceptions
    from google.cloud import pubsub

    client = pubsub.SubscriberClient()
    try:
        try:
            response = client.pull(subscription=subscription, max_messages=MAX_MESSAGES, timeout=PULL_TIMEOUT_S)
        except exceptions.DeadlineExceeded:
            return []
        found = [(Timestamp.from_utc_datetime(received.message.publish_time),
                  PubsubMessage._from_message(received.message)) for received in response.received_messages]
        ack_ids = [received.ack_id for received in response.received_messages]
        if ack_ids:
            client.acknowledge(subscription=subscription, ack_ids=ack_ids)
        return found
    finally:
        client.close()


def stop_pulling() -> None:
    """No more pulls in this process (see the module doc)."""
    _stopped.set()


def pulling() -> bool:
    return not _stopped.is_set()


def resume_pulling() -> None:
    """For a second run in the same process (tests)."""
    _stopped.clear()

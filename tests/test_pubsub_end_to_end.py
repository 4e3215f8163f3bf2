"""End to end through the real Pub/Sub emulator: publish single, aggregated (JSON array and
JSONL) and bad messages; `orion run --subscription` stores every good activity, fires the
trigger and dead-letters the bad message."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orion.store import open_store
from orion.testing.emulators import EmulatorMissing, PubSubEmulator, emulator_environment

ORION = Path(sys.executable).with_name("orion")
PROJECT = "orion-test"

RULES = """
tenant: shop
campaigns:
  - name: Pricing interest
    qualification: every_time
    triggers:
      - activity: visit_web_page
        where: {url: {starts_with: "https://shop.example/pricing"}}
"""


@pytest.fixture
def pubsub():
    try:
        emulator = PubSubEmulator.start()
    except EmulatorMissing as missing:
        pytest.fail(str(missing))
    yield emulator
    emulator.stop()


def topic_and_subscription(name: str, ordered: bool = True):
    """A publisher and a new topic and subscription on the emulator (PUBSUB_EMULATOR_HOST);
    ordered: messages with one ordering key are delivered in order."""
    from google.cloud import pubsub_v1

    topic, subscription = f"projects/{PROJECT}/topics/{name}", f"projects/{PROJECT}/subscriptions/{name}"
    publisher = pubsub_v1.PublisherClient(
        publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=ordered))
    publisher.create_topic(name=topic)
    pubsub_v1.SubscriberClient().create_subscription(
        request={"name": subscription, "topic": topic, "enable_message_ordering": ordered})
    return publisher, topic, subscription


def rules_folder(tmp_path: Path) -> Path:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "shop.yaml").write_text(RULES)
    return rules


def test_activities_published_to_pubsub_are_stored_and_fire_triggers(pubsub, tmp_path, monkeypatch):
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub.host)
    # Ordered delivery: the events are ten minutes old, behind the watermark (wall-clock
    # time), so a message Pub/Sub delivered after a later one of the same lead would be
    # dead-lettered as late. More messages than one pull takes (10), so the run's counters
    # must add up over several bundles.
    publisher, topic, subscription = topic_and_subscription("activities")
    rules = rules_folder(tmp_path)
    now_ms = int(time.time() * 1000) - 600_000  # ten minutes ago: the watermark is wall-clock time

    def event(n: int, url: str) -> dict:
        return {"event_id": f"e{n}", "tenant": "shop", "lead_id": f"L{n % 7}", "type": "visit_web_page",
                "occurred_at": now_ms + n * 1000, "attributes": {"url": url}}

    events = [event(n, "https://shop.example/pricing" if n % 3 == 0 else "https://shop.example/") for n in range(30)]
    payloads = [json.dumps(e).encode() for e in events[:15]]
    payloads.append(json.dumps(events[15:25]).encode())  # one aggregated array
    payloads.append("\n".join(json.dumps(e) for e in events[25:]).encode())  # JSONL
    payloads.append(b'{"event_id": "broken"')
    futures = [publisher.publish(topic, payload, ordering_key="test") for payload in payloads]
    for future in futures:
        future.result(timeout=30)

    store_uri = f"sqlite:///{tmp_path / 'store.db'}"
    result = subprocess.run(
        [str(ORION), "run", "--rules", str(rules), "--subscription", subscription, "--store", store_uri,
         "--out-dir", str(tmp_path / "out"), "--allowed-lateness", "1", "--duration", "45"],
        env=emulator_environment(pubsub), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    with open_store(store_uri) as store:
        assert store.count() == len(events)
        history = store.history("shop", "L0")
    assert [a.event_id for a in history] == [e["event_id"] for e in reversed(events) if e["lead_id"] == "L0"]

    outcomes = [json.loads(line) for f in (tmp_path / "out").glob("outcomes-*.jsonl")
                for line in f.read_text().splitlines()]
    fired = sorted(o["event_id"] for o in outcomes if o["qualified"])
    assert fired == sorted(e["event_id"] for e in events if "pricing" in e["attributes"]["url"])
    dead = [json.loads(line) for f in (tmp_path / "out").glob("dead-letters-*.jsonl")
            for line in f.read_text().splitlines()]
    assert [d["reason"] for d in dead] == ["malformed_json"]
    assert "events read:      31" in result.stdout
    assert "stored:           30" in result.stdout


def test_a_poison_message_is_a_dead_letter_and_the_messages_pulled_with_it_are_stored(pubsub, tmp_path, monkeypatch):
    """A message of JSON nested 1,500 levels deep (3 KB) among good ones: it becomes a
    malformed_json dead letter, and every good message of the same pulls is stored."""
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub.host)
    publisher, topic, subscription = topic_and_subscription("poison")
    rules = rules_folder(tmp_path)
    base = int(time.time() * 1000) - 600_000
    good = [{"event_id": f"g{n}", "tenant": "shop", "lead_id": f"L{n}", "type": "visit_web_page",
             "occurred_at": base + n * 1000, "attributes": {"url": "https://shop.example/pricing"}} for n in range(6)]
    poison = b'{"event_id": "deep", "attributes": ' + b"[" * 1500 + b"]" * 1500 + b"}"
    payloads = [json.dumps(e).encode() for e in good[:3]] + [poison] + [json.dumps(e).encode() for e in good[3:]]
    for future in [publisher.publish(topic, payload, ordering_key="test") for payload in payloads]:
        future.result(timeout=30)

    store_uri = f"sqlite:///{tmp_path / 'store.db'}"
    result = subprocess.run(
        [str(ORION), "run", "--rules", str(rules), "--subscription", subscription, "--store", store_uri,
         "--out-dir", str(tmp_path / "out"), "--outbox", "none", "--allowed-lateness", "1", "--duration", "30"],
        env=emulator_environment(pubsub), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open_store(store_uri) as store:
        assert store.count() == len(good)
    dead = [json.loads(line) for f in (tmp_path / "out").glob("dead-letters-*.jsonl")
            for line in f.read_text().splitlines()]
    assert [(d["reason"], "depth" in d["detail"]) for d in dead] == [("malformed_json", True)]


def test_a_run_stopped_by_duration_releases_what_it_pulled_before_it_stops(pubsub, tmp_path, monkeypatch):
    """Two events happening now, and a run whose --duration ends before the allowed
    lateness has passed them: the local runner has acknowledged them, so the stop drains
    (no more pulls, the watermark passes them) and both are stored, not lost."""
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub.host)
    publisher, topic, subscription = topic_and_subscription("stop", ordered=False)
    rules = rules_folder(tmp_path)
    now = int(time.time() * 1000)
    events = [{"event_id": f"now{n}", "tenant": "shop", "lead_id": f"L{n}", "type": "visit_web_page",
               "occurred_at": now + n, "attributes": {"url": "https://shop.example/"}} for n in range(2)]
    for future in [publisher.publish(topic, json.dumps(e).encode()) for e in events]:
        future.result(timeout=30)

    store_uri = f"sqlite:///{tmp_path / 'store.db'}"
    result = subprocess.run(
        [str(ORION), "run", "--rules", str(rules), "--subscription", subscription, "--store", store_uri,
         "--out-dir", str(tmp_path / "out"), "--outbox", "none", "--allowed-lateness", "15", "--duration", "6"],
        env=emulator_environment(pubsub), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "draining" in result.stdout and "drained" in result.stdout
    with open_store(store_uri) as store:
        assert sorted(a.event_id for lead in ("L0", "L1") for a in store.history("shop", lead)) == ["now0", "now1"]

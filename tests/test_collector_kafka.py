"""The collector publishing to a real Kafka broker (`orion collect --kafka-servers ...
--kafka-topic ...`): events of many leads become JSON-array records, a lead's events all in
the partition Kafka's own partitioner gives its key, in the order they were posted; no
record over Kafka's size limit; a missing topic, a closed port and wrong options refused
at start with the reason; a broker that hangs or goes away means 503s with Retry-After
and bounded pending bytes, never a 500, and the collector recovers when it is back; a
SIGTERM publishes and flushes what was accepted before the process exits.

    .venv/bin/python -m pytest -q tests/test_collector_kafka.py
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from collector_services import (CollectorThread, answers_by_code, event, keys, metric_samples,  # noqa: F401
                                request, rules_dir)
from kafka_services import new_topic_name
from orion.activities import MAX_ACTIVITY_BYTES, Activity, ActivityTypes
from orion.collector.app import CollectorSettings, load_types
from orion.collector.commands import KafkaDestination, main
from orion.collector.kafka import lead_partition, murmur2
from orion.intake import parse_payload
from orion.testing.emulators import free_port
from orion.testing.kafka import KafkaBroker


@pytest.fixture
def start_collector(kafka_broker, rules_dir, keys):
    """`collector = start_collector(topic, **settings)` publishing to the session's broker
    (or `servers`); stopped after the test."""
    started = []
    types = load_types(rules_dir)

    def start(topic: str, servers: str | None = None, create_topic: bool = False, partitions: int | None = None,
              **settings) -> CollectorThread:
        destination = KafkaDestination(servers or kafka_broker.bootstrap_servers, topic, partitions)
        collector = CollectorThread(destination, keys.path, types, CollectorSettings(**settings), create_topic)
        started.append(collector)
        return collector

    yield start
    for collector in started:
        collector.stop()


def new_topic(broker: KafkaBroker, partitions: int) -> str:
    name = new_topic_name("collector")
    broker.create_topic(name, partitions)
    return name


def consume(servers: str, topic: str, records: int | None = None, quiet_s: float = 1.0,
            timeout_s: float = 60.0) -> list[dict]:
    """Every record of every partition of `topic`, from the beginning, as dicts (partition,
    offset, headers, value), in (partition, offset) order: until `records` have come, or
    nothing came for `quiet_s`. Each value must be one the graph's parsers read without a
    dead letter."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": servers, "group.id": f"test-{os.getpid()}-{time.monotonic_ns()}",
                         "enable.auto.commit": False, "log_level": 3})
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        found, deadline, last = [], time.monotonic() + timeout_s, time.monotonic()
        while time.monotonic() < deadline and (records is None or len(found) < records):
            message = consumer.poll(0.2)
            if message is None:
                if records is None and time.monotonic() - last > quiet_s:
                    break
                continue
            assert message.error() is None, message.error()
            last = time.monotonic()
            found.append({"partition": message.partition(), "offset": message.offset(),
                          "headers": dict(message.headers() or []), "value": message.value()})
    finally:
        consumer.close()
    for record in found:
        for parsed in parse_payload(record["value"], ActivityTypes(), "test"):
            assert isinstance(parsed, Activity), parsed
    return sorted(found, key=lambda r: (r["partition"], r["offset"]))


def events_of(records: list[dict]) -> list[dict]:
    return [e for record in records for e in json.loads(record["value"])]


def test_murmur2_is_kafkas():
    """Java's Utils.murmur2, whose values Kafka's own tests and other clients pin."""
    assert [murmur2(text.encode()) for text in ("1", "12", "123", "1234", "12345")] == [
        -1993445489, 126087238, -267702483, -1614185708, -1188365604]


def test_a_lead_goes_to_the_partition_kafkas_default_partitioner_gives_its_key(kafka_broker):
    """A Java-compatible producer (librdkafka's murmur2_random) writing records keyed
    tenant/lead_id puts each lead where the collector puts its events."""
    from confluent_kafka import Producer

    topic = new_topic(kafka_broker, 7)
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap_servers, "partitioner": "murmur2_random",
                         "log_level": 3})
    placed: dict[str, int] = {}
    leads = [f"shop/L{n}" for n in range(60)] + ["rival/Zoë-1", "rival/价格", "shop/" + "x" * 37]
    for lead in leads:
        producer.produce(topic, key=lead.encode(), value=b"{}",
                         on_delivery=lambda err, msg: placed.__setitem__(msg.key().decode(), msg.partition()))
    assert producer.flush(30) == 0
    assert placed == {lead: lead_partition(lead, 7) for lead in leads}
    assert len(set(placed.values())) == 7


def test_events_of_many_leads_land_each_lead_in_one_partition_in_post_order(start_collector, kafka_broker, keys):
    topic = new_topic(kafka_broker, 4)
    collector = start_collector(topic, flush_seconds=0.2, flush_events=10_000, rate_limit=0)
    clients = 6  # each client posts for its own three leads, one request after the other

    def post_as_client(client: int) -> list[tuple[int, dict]]:
        key, tenant = (keys.shop, "shop") if client % 2 else (keys.rival, "rival")
        answers = []
        for n in range(8):
            body = [event(client * 1000 + n * 10 + i, tenant=tenant, lead_id=f"C{client}-L{i % 3}",
                          url="https://shop.example/") for i in range(5)]
            answers.append(collector.post(body, key=key)[:3:2])
        return answers

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        answers = [a for found in pool.map(post_as_client, range(clients)) for a in found]
    assert [status for status, _ in answers] == [200] * (clients * 8)
    records = consume(kafka_broker.bootstrap_servers, topic)
    posted = clients * 8 * 5
    assert sum(int(r["headers"]["events"]) for r in records) == posted
    assert all(int(r["headers"]["events"]) == len(json.loads(r["value"])) for r in records)
    assert len(records) < clients * 8  # many requests' events share a record
    by_lead: dict[str, list[str]] = {}
    for record in records:
        for found in json.loads(record["value"]):
            lead = f"{found['tenant']}/{found['lead_id']}"
            assert record["partition"] == lead_partition(lead, 4), (lead, record["partition"])
            by_lead.setdefault(lead, []).append(found["event_id"])
    assert len(by_lead) == clients * 3 and len({lead_partition(lead, 4) for lead in by_lead}) > 1
    for lead, event_ids in by_lead.items():  # event ids grow in the order each client posted them
        assert event_ids == sorted(event_ids, key=lambda e: int(e[1:])), lead
    assert sorted(e for ids in by_lead.values() for e in ids) == sorted(
        f"e{c * 1000 + n * 10 + i}" for c in range(clients) for n in range(8) for i in range(5))
    samples = metric_samples(collector)
    assert samples[("orion_collector_published_events_total", ())] == posted
    assert samples[("orion_collector_published_messages_total", (("result", "ok"),))] == len(records)
    assert samples[("orion_collector_events_accepted_total", (("tenant", "shop"),))] == posted // 2
    assert collector.get("/healthz")[2]["kafka"] == "ok"


def test_no_record_is_larger_than_kafka_takes(start_collector, kafka_broker, keys):
    """A lead's events that together pass Kafka's 1 MB message limit are cut into several
    records, in order, in the lead's partition; a largest single event is one record."""
    topic = new_topic(kafka_broker, 3)
    collector = start_collector(topic, max_body_bytes=4_000_000, flush_seconds=0.2)
    base = len(json.dumps(event(0, lead_id="Big"), separators=(",", ":")).encode()) - len("https://shop.example/")
    body = [event(n, lead_id="Big", url="https://shop.example/" + "x" * 700_000) for n in range(4)]
    body.append(event(4, lead_id="Big", url="x" * (MAX_ACTIVITY_BYTES - base)))  # exactly the event limit
    status, _, answer = collector.post(body, key=keys.shop)
    assert (status, answer["accepted"]) == (200, 5)
    records = consume(kafka_broker.bootstrap_servers, topic, records=5)
    assert [len(json.loads(r["value"])) for r in records] == [1] * 5
    assert max(len(r["value"]) for r in records) == MAX_ACTIVITY_BYTES + 2
    assert {r["partition"] for r in records} == {lead_partition("shop/Big", 3)}
    assert [e["event_id"] for e in events_of(records)] == [f"e{n}" for n in range(5)]


def test_a_missing_topic_is_refused_at_start_unless_it_may_be_created(start_collector, kafka_broker, keys):
    missing = new_topic_name("missing")
    with pytest.raises(LookupError, match=f"Kafka topic {missing} does not exist on .*--create-topic"):
        start_collector(missing)
    collector = start_collector(missing, create_topic=True, partitions=3)
    assert collector.post([event(1)], key=keys.shop)[0] == 200
    metadata = kafka_broker.admin().list_topics(missing, timeout=30)
    assert len(metadata.topics[missing].partitions) == 3
    assert [e["event_id"] for e in events_of(consume(kafka_broker.bootstrap_servers, missing, records=1))] == ["e1"]


def test_options_name_one_destination_and_a_closed_kafka_port_fails_the_start(keys, rules_dir, capsys):
    common = ["--keys", str(keys.path), "--rules", str(rules_dir), "--port", "0"]
    for options, message in [
        (["--topic", "projects/p/topics/t", "--kafka-servers", "127.0.0.1:9092", "--kafka-topic", "t"], "not both"),
        (["--kafka-servers", "127.0.0.1:9092"], "--kafka-servers and --kafka-topic go together"),
        (["--kafka-topic", "t"], "--kafka-servers and --kafka-topic go together"),
        ([], "collect needs --topic projects/P/topics/T (Pub/Sub) or --kafka-servers"),
        (["--topic", "projects/p/topics/t", "--kafka-partitions", "3"], "--kafka-partitions is for Kafka topics"),
    ]:
        assert main(options + common) == 2, options
        assert message in capsys.readouterr().err, options
    for options, message in [(["--kafka-servers", "nohost", "--kafka-topic", "t"], "is not HOST:PORT"),
                             (["--kafka-servers", "h:1", "--kafka-topic", "a/b"], "is not a Kafka topic name")]:
        with pytest.raises(SystemExit) as exited:
            main(options + common)
        assert exited.value.code == 2 and message in capsys.readouterr().err
    closed = f"127.0.0.1:{free_port()}"
    done = subprocess.run([sys.executable, "-m", "orion.collector", "--kafka-servers", closed, "--kafka-topic",
                           "activities", "--publish-timeout", "2", *common], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"no Kafka broker at {closed} answered within 2 s" in done.stderr
    assert "listening" not in done.stdout


def test_a_hung_or_stopped_broker_means_503s_and_bounded_pending_never_a_500(start_collector, keys, tmp_path):
    """A broker of its own: paused (SIGSTOP: connections open, no answers), resumed, then
    stopped for good. While it does not answer, a request waits at most the publish
    timeout, further ones are refused at once once the pending bytes are at their bound,
    and the collector publishes again as soon as the broker is back."""
    broker = KafkaBroker(tmp_path / "kafka")
    try:
        broker.start()
    except Exception as error:  # noqa: BLE001 - reported as what it is
        pytest.fail(f"the test's own Kafka broker did not start: {error}", pytrace=False)
    try:
        topic = new_topic(broker, 2)
        collector = start_collector(topic, servers=broker.bootstrap_servers, publish_timeout=2.0,
                                    max_pending_bytes=2000, retry_after=3)
        assert collector.post([event(1)], key=keys.shop)[0] == 200

        broker.process.send_signal(signal.SIGSTOP)
        try:
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                first = pool.submit(collector.post, [event(n) for n in range(10, 20)], keys.shop)  # ~1.3 KB waiting
                time.sleep(0.3)
                status, headers, answer = collector.post([event(n) for n in range(20, 30)], key=keys.shop)
                assert (status, answer["accepted"]) == (503, 0) and "already waiting for Kafka" in answer["detail"]
                assert not first.done()  # refused at once, not queued behind the first
                status, headers, answer = first.result()
            assert (status, answer["error"], answer["accepted"]) == (503, "unavailable", 0)
            assert "Kafka did not answer within 2 s" in answer["detail"] and headers["Retry-After"] == "3"
            assert collector.get("/healthz")[2]["kafka"].startswith("failing")
        finally:
            broker.process.send_signal(signal.SIGCONT)
        accepted_after = None
        for attempt in range(40):  # as a client would: again after Retry-After (shortened here)
            status, _, answer = collector.post([event(100 + attempt)], key=keys.shop)
            if status == 200:
                accepted_after = f"e{100 + attempt}"
                break
            assert status == 503, answer
            time.sleep(0.5)
        assert accepted_after, "the collector did not publish again once the broker was back"
        published = {e["event_id"] for e in events_of(consume(broker.bootstrap_servers, topic))}
        assert {"e1", accepted_after} <= published
        assert not published & {f"e{n}" for n in range(20, 30)}  # refused at once: never sent

        broker.stop()  # gone for good
        statuses = [collector.post([event(200 + n)], key=keys.shop)[0] for n in range(3)]
        assert statuses == [503] * 3
        samples = metric_samples(collector)
        assert samples[("orion_collector_events_accepted_total", (("tenant", "shop"),))] == 2
        assert samples[("orion_collector_events_refused_total", (("reason", "unavailable"), ("tenant", "shop")))] \
            == 10 + 10 + 3 + int(accepted_after[1:]) - 100
        assert not [code for (_, code) in answers_by_code(collector) if code.startswith("5") and code != "503"]
        assert samples[("orion_collector_pending_events", ())] == 0
    finally:
        broker.stop()


def test_sigterm_publishes_and_flushes_what_was_accepted_before_exiting(kafka_broker, keys, rules_dir, tmp_path):
    topic = new_topic(kafka_broker, 2)
    log = tmp_path / "collector.log"
    collector = subprocess.Popen(
        [sys.executable, "-m", "orion.collector", "--kafka-servers", kafka_broker.bootstrap_servers,
         "--kafka-topic", topic, "--keys", str(keys.path), "--rules", str(rules_dir), "--port", "0",
         "--flush-ms", "60000", "--flush-events", "100000"],  # nothing is sent until the stop
        stdout=subprocess.PIPE, stderr=open(log, "w"), text=True)
    try:
        line = collector.stdout.readline()
        found = re.search(r"listening on http://127\.0\.0\.1:(\d+)/.*Kafka topic (\S+) on", line)
        assert found and found.group(2) == topic, line + log.read_text()[-3000:]
        port = int(found.group(1))
        answers: list = []
        posts = [threading.Thread(target=lambda n=n: answers.append(
            request("POST", port, "/v1/events", [event(n * 10 + i, lead_id=f"L{n}") for i in range(3)],
                    keys.shop)[0])) for n in range(4)]
        for post in posts:
            post.start()
        time.sleep(1.0)  # the requests are waiting for their flush, a minute away
        assert answers == []
        collector.send_signal(signal.SIGTERM)
        for post in posts:
            post.join(60)
        assert answers == [200] * 4
        assert collector.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if collector.poll() is None:
            collector.kill()
        collector.stdout.close()
    records = consume(kafka_broker.bootstrap_servers, topic)
    assert sorted(e["event_id"] for e in events_of(records)) == sorted(f"e{n * 10 + i}" for n in range(4)
                                                                        for i in range(3))


def test_the_kafka_sink_module_imports_no_kafka_client_until_used():
    """`orion collect --topic ...` (Pub/Sub) runs where confluent-kafka is not installed."""
    code = ("import sys; import orion.collector.commands, orion.collector.kafka, orion.collector.app; "
            "print('confluent_kafka' in sys.modules)")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           cwd=Path(__file__).parent)
    assert shown.stdout.strip() == "False"

"""The Beam graph reading a Kafka topic (orion/transforms/kafka.py on Beam's Prism runner,
with Beam's expansion service and Java worker pool, orion/runners/beam_kafka.py): records
of the session's broker (`kafka_broker`, tests/kafka_services.py) holding JSON arrays of
activities, single activities and malformed payloads are read, and the store, the lead
profiles, the outcomes and the outbox are those of the same activities read from a file;
the malformed records are dead letters citing the topic; the offsets read are committed
to the consumer group.

Needs Java 17, Maven (the `beam-kafka` and `kafka` jars, fetched once) and Go (Prism,
built once); without them these tests fail and say what to install.

    .venv/bin/python -m pytest -q tests/test_beam_kafka.py
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from kafka_services import new_topic_name
from test_flink_parity import FLOW_RULES, SAMPLES, config_for, flow_lines, outbox_rows, outputs, scenario_lines

from orion.runners import direct
from orion.transforms.kafka import KafkaIntake

PER_RECORD = 4  # activities per JSON-array record
MALFORMED = b'{"event_id": "k-1", "tenant": "acme"'


def _activity_files() -> dict[str, list[str]]:
    """Activities for the sample rules (out of order, a redelivery, an unknown type) and
    for campaign flows (emails, a wait, held and refused emails), a file each. None is
    late: a file judges lateness line by line (so the two are apart), a bounded read of
    a topic only at its end."""
    scenario = [line for line in scenario_lines() if '"p-4"' not in line and '"p-5"' not in line]
    return {"scenario.jsonl": scenario, "flows.jsonl": flow_lines()}


def _records(lines: list[str]) -> list[bytes | None]:
    """The first activity alone (not in an array), then arrays of PER_RECORD, with a
    malformed record and a record without a value (a tombstone) among them."""
    arrays = [("[" + ",".join(lines[n:n + PER_RECORD]) + "]").encode() for n in range(1, len(lines), PER_RECORD)]
    return [lines[0].encode(), MALFORMED, *arrays[:2], None, *arrays[2:]]


def _rules(base: Path) -> Path:
    rules = base / "rules"
    shutil.copytree(SAMPLES / "rules", rules)
    (rules / "flowco.yaml").write_text(FLOW_RULES, encoding="utf-8")
    return rules


@pytest.fixture(scope="module")
def runs(kafka_broker, tmp_path_factory):
    """The graph over a topic (on Prism) and over a file of the same activities."""
    base = tmp_path_factory.mktemp("beam-kafka")
    rules = _rules(base)
    files = _activity_files()
    lines = [line for name in sorted(files) for line in files[name]]
    topic = new_topic_name("beam-activities")
    kafka_broker.create_topic(topic, 1)
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap_servers, "enable.idempotence": True})
    records = _records(lines)
    for value in records:
        producer.produce(topic, value=value)
    assert producer.flush(30) == 0, "every record was delivered"
    (base / "in").mkdir()
    for name, file_lines in files.items():
        (base / "in" / name).write_text("\n".join(file_lines) + "\n", encoding="utf-8")

    group = f"orion-{topic}"
    kafka = KafkaIntake(kafka_broker.bootstrap_servers, topic, group=group, max_records=len(records))
    kafka_totals = direct.run(config_for(None, rules, base / "kafka", base / "kafka.db", base / "kafka-outbox.db"),
                              kafka=kafka)
    file_totals = direct.run(config_for(str(base / "in" / "*.jsonl"), rules, base / "file", base / "file.db",
                                        base / "file-outbox.db"))
    return {"base": base, "topic": topic, "group": group, "servers": kafka_broker.bootstrap_servers,
            "records": records, "lines": lines, "kafka_totals": kafka_totals, "file_totals": file_totals}


def test_a_topic_gives_the_store_outcomes_and_outbox_of_the_same_activities_from_a_file(runs):
    base = runs["base"]
    from_kafka, from_file = outputs(base / "kafka", base / "kafka.db"), outputs(base / "file", base / "file.db")
    assert from_kafka["activities"], "the Kafka run stored activities"
    for part in ("outcomes", "activities", "index", "profiles"):
        assert from_kafka[part] == from_file[part], f"{part} differ between Kafka and the file"
    kafka_outbox = outbox_rows(base / "kafka-outbox.db")
    assert kafka_outbox, "the flows queued emails"
    assert kafka_outbox == outbox_rows(base / "file-outbox.db")
    kafka_totals, file_totals = runs["kafka_totals"], runs["file_totals"]
    assert kafka_totals["kafka_records_read"] == len(runs["records"])
    for counter in ("evaluated", "stored", "duplicates", "qualified", "emails_assembled", "outbox_queued"):
        assert kafka_totals.get(counter, 0) == file_totals.get(counter, 0), counter


def test_malformed_records_and_tombstones_are_dead_letters_citing_the_topic(runs):
    base = runs["base"]
    kafka_dead = [json.loads(line) for line in outputs(base / "kafka", base / "kafka.db")["dead_letters"]]
    file_dead = [json.loads(line) for line in outputs(base / "file", base / "file.db")["dead_letters"]]
    source = f"kafka:{runs['topic']}"
    from_records = [d for d in kafka_dead if d["source"] == source]
    assert sorted(d["reason"] for d in from_records) == ["malformed_json", "malformed_json"], from_records
    assert any(d["element"].startswith('{"event_id": "k-1"') for d in from_records), from_records
    # The rest are what the file's activities give (their sources name the record, not the line).
    def reasons_and_elements(letters):
        return sorted((d["reason"], json.dumps(d["element"], sort_keys=True)) for d in letters)

    assert reasons_and_elements(d for d in kafka_dead if d["source"] != source) == reasons_and_elements(file_dead)
    assert file_dead, "the activities give dead letters of their own (an unknown type, refused emails)"


def test_the_offsets_read_are_committed_to_the_consumer_group(runs):
    consumer = Consumer({"bootstrap.servers": runs["servers"], "group.id": runs["group"],
                         "enable.auto.commit": False})
    try:
        partition = TopicPartition(runs["topic"], 0)
        committed = consumer.committed([partition], timeout=10)[0].offset
        end = consumer.get_watermark_offsets(partition, timeout=10)[1]
    finally:
        consumer.close()
    assert committed == end == len(runs["records"])


def test_orion_run_on_a_topic_without_a_duration_says_how_to_bound_it(tmp_path):
    from test_cli import run_orion

    result = run_orion("run", "--kafka-servers", "127.0.0.1:9", "--kafka-topic", "activities", cwd=tmp_path)
    assert result.returncode == 2
    assert "--duration SECONDS" in result.stderr and "--runner flink" in result.stderr
    assert not (tmp_path / "orion-data").exists()  # refused before anything ran


def test_orion_run_on_a_missing_topic_or_broker_says_so_before_starting_anything(kafka_broker, tmp_path):
    from test_cli import run_orion

    missing = run_orion("run", "--kafka-servers", kafka_broker.bootstrap_servers, "--kafka-topic",
                        new_topic_name("missing"), "--duration", "5", "--out-dir", str(tmp_path / "out"),
                        "--store", f"sqlite:///{tmp_path / 's.db'}", cwd=tmp_path)
    assert missing.returncode == 1 and "does not exist" in missing.stderr, missing.stderr[-2000:]
    assert "Exception" not in missing.stderr  # Orion's words, not a Java stack trace
    nobody = run_orion("run", "--kafka-servers", "127.0.0.1:9", "--kafka-topic", "activities", "--duration", "5",
                       "--out-dir", str(tmp_path / "out"), "--store", f"sqlite:///{tmp_path / 's.db'}", cwd=tmp_path)
    assert nobody.returncode == 1 and "no Kafka broker at 127.0.0.1:9" in nobody.stderr, nobody.stderr[-2000:]


def test_orion_run_reads_a_topic_for_its_duration_into_the_store(kafka_broker, tmp_path):
    topic = new_topic_name("beam-cli")
    kafka_broker.create_topic(topic, 2)
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap_servers})
    lines = flow_lines()
    for n in range(0, len(lines), 3):  # JSONL records
        producer.produce(topic, value="\n".join(lines[n:n + 3]).encode())
    assert producer.flush(30) == 0
    rules = _rules(tmp_path)
    from test_cli import run_orion

    result = run_orion("run", "--kafka-servers", kafka_broker.bootstrap_servers, "--kafka-topic", topic,
                       "--duration", "5", "--rules", str(rules), "--store", f"sqlite:///{tmp_path / 's.db'}",
                       "--outbox", f"sqlite:///{tmp_path / 'o.db'}", "--out-dir", str(tmp_path / "out"),
                       cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"events read:      {len(lines)}" in result.stdout, result.stdout
    stored = outputs(tmp_path / "out", tmp_path / "s.db")["activities"]
    assert {row for row in stored if "f-4" in str(row)}, "the signup of the topic is stored"
    assert outbox_rows(tmp_path / "o.db"), "its flow queued the welcome"


def test_beam_options_alone_read_the_topic_with_a_group_of_their_own(runs, tmp_path):
    from orion.runners.beam_options import main

    base = runs["base"]
    status = main([f"--kafka_servers={runs['servers']}", f"--kafka_topic={runs['topic']}",
                   f"--kafka_group=beam-options-{runs['topic']}", f"--kafka_max_records={len(runs['records'])}",
                   f"--rules={base / 'rules'}", f"--store=sqlite:///{tmp_path / 'store.db'}",
                   f"--outbox=sqlite:///{tmp_path / 'outbox.db'}", f"--out_dir={tmp_path / 'out'}"])

    assert status == 0
    again, first = outputs(tmp_path / "out", tmp_path / "store.db"), outputs(base / "kafka", base / "kafka.db")
    for part in ("outcomes", "dead_letters", "activities", "index", "profiles"):
        assert again[part] == first[part], part


def test_beam_options_refuse_an_unbounded_or_half_named_topic():
    from apache_beam.options.pipeline_options import PipelineOptions

    from orion.runners.beam_options import kafka_intake, run_config

    with pytest.raises(ValueError, match="--kafka_max_read_s SECONDS or --kafka_max_records N"):
        kafka_intake(PipelineOptions(["--kafka_servers=h:1", "--kafka_topic=t"]))
    with pytest.raises(ValueError, match="go together"):
        kafka_intake(PipelineOptions(["--kafka_topic=t", "--kafka_max_records=5"]))
    with pytest.raises(ValueError, match="not both"):
        run_config(PipelineOptions(["--kafka_servers=h:1", "--kafka_topic=t", "--kafka_max_records=5",
                                    "--events=in.jsonl"]))
    intake = kafka_intake(PipelineOptions(["--kafka_servers=h:1", "--kafka_topic=t", "--kafka_max_read_s=30"]))
    assert intake == KafkaIntake("h:1", "t", "orion", max_records=None, max_read_s=30.0)
    assert run_config(PipelineOptions(["--kafka_servers=h:1", "--kafka_topic=t", "--kafka_max_read_s=30"])).events \
        is None

"""Failover of the Flink job on the session's standalone cluster (`flink_cluster`, one
JobManager and two TaskManagers, tests/flink_services.py), and the job reading Kafka:

- a job over a watched directory, checkpointing into a --checkpoint-dir, is cancelled
  mid-run, after a checkpoint and after more input; started again from the newest
  retained checkpoint in that directory, it redoes what followed the checkpoint, and its
  store, lead profiles, outcome and dead-letter files and outbox are those of a run that
  was never interrupted: no line, row or email twice, none missing;
- a job reading a Kafka topic (the session's `kafka_broker`, tests/kafka_services.py;
  records are JSON arrays of activities, or one activity) on the cluster stores,
  evaluates, writes its files and queues its emails, and commits its offsets;
- the same job, a TaskManager it runs on killed with SIGKILL while events are still
  being produced, restarts under its restart strategy from its last checkpoint on the
  TaskManager left, and ends with what the run without the fault has.

Needs Java 17, apache-flink (PyFlink), and for Kafka what tests/kafka_services.py names;
without them these tests fail and say so.

    .venv/bin/python -m pytest -q tests/test_flink_recovery.py
"""
from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from flink_services import flink_cluster  # noqa: F401  (the session's cluster)
from kafka_services import new_topic_name
from test_flink_parity import (
    LATENESS_MS, LEADS, RULES_V1, SECOND, T0, _event, address_lines, config_for, drop_file, output_lines, outbox_rows,
    outputs, queued_emails, released_before, stored_event_ids, visit_lines, wait_for,
)

from orion import cli
from orion.flink import cluster as rest

VISITS = 120
FIRST, SECOND_FILE = range(0, 60), range(60, VISITS)
REDELIVERED = [3, 58, 59]  # visits of the first file sent again in the second
# A lead the input first names after the first file (and after the checkpoint a failover
# restores): in the cancelled or killed run, its profile is written after that checkpoint.
NEWCOMER = "L9"
NEWCOMER_VISITS = 6
# The test triggers the checkpoint it cancels after itself (REST), so that what follows
# it is known; the periodic ones are far apart.
RARE_CHECKPOINTS_S = 600.0


def _rules(base: Path) -> Path:
    rules = base / "rules"
    rules.mkdir(parents=True)
    (rules / "acme.yaml").write_text(RULES_V1, encoding="utf-8")
    return rules


def _inputs(base: Path) -> tuple[Path, Path]:
    """The rules, and the directory the job watches."""
    rules = _rules(base)
    watched = base / "incoming"
    watched.mkdir()
    return rules, watched


def _welcomes() -> list[tuple[str, str, int]]:
    return sorted((f"L{n}", f"v-{n:04d}#0", T0 + n * 10 * SECOND) for n in range(LEADS))


def _follow_ups() -> list[tuple[str, str, int]]:
    # RULES_V1's flow: the welcome, a score change, a 10-minute wait, the follow-up
    return sorted((lead, run.replace("#0", "#3"), at + 600 * SECOND) for lead, run, at in _welcomes())


def newcomer_lines() -> list[str]:
    """The newcomer's visits, amid the second file's (605 s ... 655 s of event time)."""
    return [_event(f"n-{k}", NEWCOMER, "visit_web_page", T0 + (605 + 10 * k) * SECOND,
                   url=f"https://acme.example/n{k}") for k in range(NEWCOMER_VISITS)]


def _every_visit() -> Counter:
    """Each visit's "Every visit" outcome, once: the newcomer's included."""
    return Counter([f"v-{n:04d}" for n in range(VISITS)] + [f"n-{k}" for k in range(NEWCOMER_VISITS)])


def _mailed(outbox: Path) -> list[tuple[str, str, int]]:
    """The queued emails of the leads the first file names (the newcomer has no address:
    its welcome is held, and compared with the other outbox rows)."""
    return [email for email in queued_emails(outbox) if email[0] != NEWCOMER]


def _first_file(watched: Path) -> None:
    drop_file(watched, "part-1.jsonl", address_lines() + visit_lines(FIRST))


def _second_file(watched: Path) -> None:
    drop_file(watched, "part-2.jsonl", visit_lines(SECOND_FILE) + newcomer_lines() + visit_lines(REDELIVERED))


def _first_file_done(db: Path, outbox: Path) -> None:
    released = released_before(FIRST, newest=FIRST[-1])
    wait_for(lambda: released <= set(stored_event_ids(db)), "the first file's released visits")
    wait_for(lambda: _mailed(outbox) == _welcomes(), "the welcome emails")


def _second_file_done(db: Path, outbox: Path, newest: int = VISITS - 1) -> None:
    released = released_before(range(VISITS), newest=newest) | {f"n-{k}" for k in range(NEWCOMER_VISITS)}
    wait_for(lambda: released <= set(stored_event_ids(db)), "the second file's released visits")
    wait_for(lambda: _has_profile(db, NEWCOMER), "the newcomer's profile")
    # Its held welcome reaches the outbox from another operator than its profile's, and
    # may come later: a job cancelled before it would offer it anew, not a second time.
    wait_for(lambda: _held_welcome(outbox), "the newcomer's held welcome")
    wait_for(lambda: _mailed(outbox) == sorted(_welcomes() + _follow_ups()), "the follow-ups after the wait")


def _held_welcome(outbox: Path) -> bool:
    return any(row[2] == NEWCOMER and row[5] == "held" for row in outbox_rows(outbox))


def _has_profile(db: Path, lead: str) -> bool:
    with contextlib.closing(sqlite3.connect(db)) as connection:
        try:
            return connection.execute("SELECT 1 FROM lead_profiles WHERE tenant = 'acme' AND lead_id = ?",
                                      (lead,)).fetchone() is not None
        except sqlite3.OperationalError:  # the job has not created the table yet
            return False


def test_a_job_cancelled_mid_run_resumes_from_its_newest_retained_checkpoint_and_repeats_nothing(
        flink, flink_cluster, tmp_path, capsys):
    address = flink_cluster.rest_address
    streaming = flink.FlinkOptions(flink_master=address, watch=True, monitor_interval_s=0.5, flush_after_ms=200,
                                   idle_release_s=1.0)

    # The run that is never interrupted: both files, then a drain (every buffered visit
    # released, the files committed).
    rules, watched = _inputs(tmp_path / "whole")
    whole_db, whole_outbox, whole_out = (tmp_path / "whole" / name for name in ("store.db", "outbox.db", "out"))
    config = config_for(str(watched), rules, whole_out, whole_db, whole_outbox)._replace(
        allowed_lateness_ms=LATENESS_MS)
    _first_file(watched)
    job = flink.start_flink(config, streaming)
    _first_file_done(whole_db, whole_outbox)
    _second_file(watched)
    _second_file_done(whole_db, whole_outbox)
    job.stop_with_savepoint(str(tmp_path / "whole" / "savepoints"), drain=True)

    # The same input, the job cancelled after a checkpoint and after the second file.
    rules, watched = _inputs(tmp_path / "failed")
    db, outbox, out_dir = (tmp_path / "failed" / name for name in ("store.db", "outbox.db", "out"))
    checkpoints = tmp_path / "failed" / "checkpoints"
    run_args = ["run", "--runner", "flink", "--events", str(watched), "--watch", "--rules", str(rules),
                "--store", f"sqlite:///{db}", "--outbox", f"sqlite:///{outbox}", "--out-dir", str(out_dir),
                "--allowed-lateness", str(LATENESS_MS // 1000), "--flink-master", address, "--detach",
                "--checkpoint-dir", str(checkpoints), "--checkpoint-interval", str(RARE_CHECKPOINTS_S),
                "--restart-attempts", "2", "--restart-delay", "1"]
    config = config_for(str(watched), rules, out_dir, db, outbox)._replace(allowed_lateness_ms=LATENESS_MS)
    options = streaming._replace(checkpoint_dir=str(checkpoints), checkpoint_interval_s=RARE_CHECKPOINTS_S)
    _first_file(watched)
    first_job = flink.start_flink(config, options).job_id
    _first_file_done(db, outbox)
    checkpoint = rest.trigger_checkpoint(address, first_job)
    # The checkpoint committed the outcome files of what it covers.
    wait_for(lambda: output_lines(out_dir, "outcomes-*.jsonl"), "outcome files committed by the checkpoint")
    _second_file(watched)
    _second_file_done(db, outbox)
    assert rest.cancel_job(address, first_job) == "CANCELED"

    assert cli.main(["flink", "newest-checkpoint", str(checkpoints)]) == 0
    newest = Path(capsys.readouterr().out.strip())
    assert newest == checkpoints / first_job / f"chk-{checkpoint}" and (newest / "_metadata").is_file(), \
        "the checkpoint is retained after the cancel"
    committed = {json.loads(line)["event_id"] for line in output_lines(out_dir, "outcomes-*.jsonl")}
    assert committed and committed <= {f"v-{n:04d}" for n in FIRST}, \
        "the cancelled job's lines after the checkpoint (the second file's) were never committed"
    counts_before = flink.read_counters(out_dir)

    # Started again from the directory: its newest checkpoint.
    assert cli.main(run_args + ["--from-savepoint", str(checkpoints)]) == 0
    second_job = re.search(r"job id:\s+([0-9a-f]{32})", capsys.readouterr().out).group(1)
    # What followed the checkpoint is done again: the second file read anew, its follow-up
    # emails offered to the outbox a second time (which keeps the first).
    # ... and the newcomer's held welcome with them. Waited for before the stop: the
    # counts reach their file once a second, and a job stopped with a savepoint may end
    # before the last second's are written (see orion.flink.functions.Counts).
    wait_for(lambda: flink.read_counters(out_dir).get("outbox_duplicates", 0) >= LEADS + 1,
             "the restored job's second pass over the second file")
    config_on_cluster = rest.rest_call(address, f"/jobs/{second_job}/checkpoints/config")
    assert config_on_cluster["externalization"]["enabled"] and \
        not config_on_cluster["externalization"]["delete_on_cancellation"], config_on_cluster
    rest.stop_job(address, second_job, str(tmp_path / "failed" / "savepoints"), drain=True)

    assert outputs(out_dir, db) == outputs(whole_out, whole_db), \
        "store, profiles, outcome and dead-letter lines differ from the uninterrupted run's"
    assert outbox_rows(outbox) == outbox_rows(whole_outbox)
    assert _mailed(outbox) == sorted(_welcomes() + _follow_ups()), "one welcome and one follow-up per lead"
    outcomes = [json.loads(line) for line in output_lines(out_dir, "outcomes-*.jsonl")]
    every = Counter(o["event_id"] for o in outcomes if o["campaign"] == "Every visit")
    assert every == _every_visit(), "each visit's outcome line is there once, the newcomer's too (its lead was " \
        "first met after the checkpoint: the restored job redid its visits from what its profile was before)"
    counts = flink.read_counters(out_dir)
    assert counts["outbox_duplicates"] - counts_before.get("outbox_duplicates", 0) == LEADS + 1, \
        "the follow-ups, and the newcomer's held welcome (its lead redone from before the checkpoint), were " \
        "requested again after the restore and queued once"


# --- Kafka -------------------------------------------------------------------------------

PARTITIONS = 2  # and the job's parallelism: a reader per partition, on each TaskManager
PER_RECORD = 4  # activities per record, as the collector aggregates them
MALFORMED = '{"event_id": "bad-1", "tenant": "acme"'
# Produced in three batches (the failover run waits between them); the redeliveries at
# the end of the last are duplicates.
BATCHES = (address_lines() + visit_lines(range(0, 40)), visit_lines(range(40, 80)),
           visit_lines(range(80, VISITS)) + newcomer_lines() + visit_lines(REDELIVERED))
EVENTS = sum(len(batch) for batch in BATCHES) + 1  # and the malformed one


def _partition(line: str) -> int:
    """A lead's records go to one partition (as the collector's do), so its activities
    are read in order; the leads alternate between the two."""
    return int(json.loads(line)["lead_id"][1:]) % PARTITIONS


def _newest_everywhere(numbers) -> int:
    """The newest visit every partition has passed: each reader's watermark follows its
    own partition's newest, and the job's is the least of them."""
    return min(max(n for n in numbers if n % LEADS % PARTITIONS == partition) for partition in range(PARTITIONS))


def _records(batch: list[str], first: bool) -> list[tuple[int, str]]:
    """(partition, value) of a batch's records: each partition's activities in the order
    given, PER_RECORD to a JSON array; the first batch begins with a record of one
    activity (not an array) and a malformed one."""
    records = []
    for partition in range(PARTITIONS):
        lines = [line for line in batch if _partition(line) == partition]
        if first and partition == 0:
            records += [(0, MALFORMED), (0, lines[0])]
            lines = lines[1:]
        records += [(partition, "[" + ",".join(lines[n:n + PER_RECORD]) + "]")
                    for n in range(0, len(lines), PER_RECORD)]
    return records


def _produce(servers: str, topic: str, batch_index: int) -> None:
    producer = Producer({"bootstrap.servers": servers, "enable.idempotence": True, "linger.ms": 5})
    for partition, value in _records(BATCHES[batch_index], first=batch_index == 0):
        producer.produce(topic, value=value.encode("utf-8"), partition=partition)
    assert producer.flush(30) == 0, "every record was delivered"


def _consumed_everything(servers: str, topic: str, group: str) -> bool:
    """The job's consumer group has committed (at a checkpoint) the end of every partition."""
    consumer = Consumer({"bootstrap.servers": servers, "group.id": group, "enable.auto.commit": False})
    try:
        partitions = [TopicPartition(topic, n) for n in range(PARTITIONS)]
        committed = consumer.committed(partitions, timeout=10)
        ends = [consumer.get_watermark_offsets(partition, timeout=10)[1] for partition in partitions]
        return [partition.offset for partition in committed] == ends
    except KafkaException as error:
        if error.args[0].retriable() or error.args[0].code() == KafkaError.NOT_COORDINATOR:
            return False  # the group's coordinator is still loading (a fresh broker)
        raise
    finally:
        consumer.close()


class KafkaRun:
    """One run of the job over a topic, on the cluster; where it left its outputs."""

    def __init__(self, base: Path, servers: str, topic: str):
        self.rules = _rules(base)
        self.db, self.outbox, self.out_dir = base / "store.db", base / "outbox.db", base / "out"
        self.servers, self.topic, self.group = servers, topic, f"orion-{topic}"
        self.config = config_for(None, self.rules, self.out_dir, self.db, self.outbox)._replace(
            allowed_lateness_ms=LATENESS_MS)

    def options(self, flink, address: str, **changes):
        return flink.FlinkOptions(flink_master=address, parallelism=PARTITIONS, kafka_servers=self.servers,
                                  kafka_topic=self.topic, kafka_group=self.group, checkpoint_interval_s=2.0,
                                  flush_after_ms=200, idle_release_s=1.0, **changes)

    def consumed_everything(self) -> bool:
        return _consumed_everything(self.servers, self.topic, self.group)

    def wait_until_done(self) -> None:
        """Everything consumed (up to a checkpoint), every released visit stored, every
        email queued: a drain then leaves nothing unread."""
        wait_for(self.consumed_everything, "the whole topic consumed", timeout_s=180)
        _second_file_done(self.db, self.outbox, newest=_newest_everywhere(range(VISITS)))

    def outputs(self) -> dict[str, list]:
        """What the run left, order-free; the dead letters cite the topic as `kafka:TOPIC`."""
        found = {**outputs(self.out_dir, self.db), "outbox": outbox_rows(self.outbox)}
        found["dead_letters"] = [line.replace(f"kafka:{self.topic}", "kafka:TOPIC") for line in found["dead_letters"]]
        return found


@contextlib.contextmanager
def _one_taskmanager_killed(cluster):
    """The first TaskManager killed (SIGKILL); its REST id. Afterwards, pass or fail, the
    session's cluster gets a second TaskManager again, for the tests after this one."""
    try:
        yield cluster.kill_taskmanager(0)
    finally:
        cluster.start_taskmanager()
        cluster.wait_for_taskmanagers(len(cluster.taskmanager_processes()))


@pytest.fixture(scope="module")
def kafka_run_without_fault(flink, flink_cluster, kafka_broker, tmp_path_factory):
    """The job over a topic holding every batch, run to the end and drained: the run the
    failover test compares with."""
    address = flink_cluster.rest_address
    topic = new_topic_name("activities")
    kafka_broker.create_topic(topic, PARTITIONS)
    for batch in range(len(BATCHES)):
        _produce(kafka_broker.bootstrap_servers, topic, batch)
    run = KafkaRun(tmp_path_factory.mktemp("kafka-whole"), kafka_broker.bootstrap_servers, topic)
    started = time.monotonic()
    job_id = flink.start_flink(run.config, run.options(flink, address)).job_id
    run.wait_until_done()
    run.taskmanagers = rest.job_taskmanagers(address, job_id)
    rest.stop_job(address, job_id, str(run.out_dir.parent / "savepoints"), drain=True)
    run.seconds = time.monotonic() - started
    run.counters = flink.read_counters(run.out_dir)
    return run


def test_the_job_reads_a_kafka_topic_on_the_cluster_into_store_outcomes_and_outbox(flink_cluster,
                                                                                    kafka_run_without_fault):
    run = kafka_run_without_fault
    assert run.taskmanagers == {manager["id"] for manager in rest.taskmanagers(flink_cluster.rest_address)}, \
        "a reader on each TaskManager"
    stored = stored_event_ids(run.db)
    assert sorted(e for e in stored if e.startswith("v-")) == [f"v-{n:04d}" for n in range(VISITS)]
    assert sorted(e for e in stored if e.startswith("n-")) == [f"n-{k}" for k in range(NEWCOMER_VISITS)]
    assert sorted(e for e in stored if e.startswith("a-")) == [f"a-{n}" for n in range(LEADS)], \
        "the record of one activity and those in arrays alike"
    assert _mailed(run.outbox) == sorted(_welcomes() + _follow_ups())
    outcomes = [json.loads(line) for line in output_lines(run.out_dir, "outcomes-*.jsonl")]
    assert Counter(o["event_id"] for o in outcomes if o["campaign"] == "Every visit") == _every_visit(), \
        "each visit evaluated once, the redeliveries not again"
    dead = [json.loads(line) for line in output_lines(run.out_dir, "dead-letters-*.jsonl")]
    assert [(d["reason"], d["source"]) for d in dead] == [("malformed_json", f"kafka:{run.topic}")]
    counts = run.counters
    assert counts["events_read"] == EVENTS and counts["duplicates"] == len(REDELIVERED), counts
    assert counts["events_read"] == (counts["stored"] - counts["flow_activities"]) + counts["dead_letters"] + \
        counts["duplicates"], "every event consumed is stored, a dead letter or a duplicate"
    assert run.consumed_everything(), "the offsets are committed to the consumer group at checkpoints"


def test_a_taskmanager_killed_mid_run_the_job_restarts_and_ends_as_the_run_without_the_fault(
        flink, flink_cluster, kafka_broker, kafka_run_without_fault, tmp_path):
    address = flink_cluster.rest_address
    topic = new_topic_name("activities")
    kafka_broker.create_topic(topic, PARTITIONS)
    run = KafkaRun(tmp_path, kafka_broker.bootstrap_servers, topic)
    job_id = flink.start_flink(run.config, run.options(flink, address, restart_attempts=3,
                                                        restart_delay_s=2.0)).job_id
    _produce(run.servers, topic, 0)
    released = released_before(range(40), newest=_newest_everywhere(range(40)))
    wait_for(lambda: released <= set(stored_event_ids(run.db)), "the first batch's released visits")
    _produce(run.servers, topic, 1)
    released = released_before(range(80), newest=_newest_everywhere(range(80)))
    wait_for(lambda: released <= set(stored_event_ids(run.db)), "the second batch's released visits")
    checkpoints = rest.completed_checkpoints(address, job_id)
    wait_for(lambda: rest.completed_checkpoints(address, job_id) > checkpoints, "a checkpoint after them")
    on_taskmanagers = rest.job_taskmanagers(address, job_id)

    # The last batch is produced, and a TaskManager the job runs on dies while the job reads it.
    _produce(run.servers, topic, 2)
    with _one_taskmanager_killed(flink_cluster) as killed:
        assert killed in on_taskmanagers and len(on_taskmanagers) == 2
        wait_for(lambda: rest.job_restarts(address, job_id) >= 1, "the job's restart", timeout_s=120)
        wait_for(lambda: rest.job_state(address, job_id) == "RUNNING", "the restarted job running", timeout_s=120)
        assert killed not in rest.job_taskmanagers(address, job_id), "it runs on the TaskManager left"
    assert len(rest.taskmanagers(address)) == 2, "a new TaskManager took the place of the one killed"
    run.wait_until_done()
    restarts = rest.job_restarts(address, job_id)
    rest.stop_job(address, job_id, str(tmp_path / "savepoints"), drain=True)

    assert 1 <= restarts <= 3, "within the restart strategy's attempts"
    whole = kafka_run_without_fault
    mine, theirs = run.outputs(), whole.outputs()
    for part in ("outcomes", "dead_letters", "activities", "index", "profiles", "outbox"):
        assert mine[part] == theirs[part], f"{part} differ from the run without the fault"
    # Every event consumed is, once, a stored activity, a dead letter or a duplicate (the
    # redeliveries the test produced); the counters count work done, including what the
    # restart redid since its checkpoint.
    input_activities = [e for e in stored_event_ids(run.db) if not e.startswith("flow-")]
    assert EVENTS == len(input_activities) + len(mine["dead_letters"]) + len(REDELIVERED)
    counts = flink.read_counters(run.out_dir)
    assert counts["events_read"] >= EVENTS and counts["duplicates"] >= len(REDELIVERED), counts

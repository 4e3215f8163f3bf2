"""`orion run --runner flink` through the command line, on a real PyFlink mini-cluster:
the options reach the job, which stores, writes outcomes and dead letters, runs the
campaign flows and queues their emails.

Needs Java 17 and apache-flink (PyFlink); without them this test fails and says so.

    .venv/bin/python -m pytest tests/test_flink_cli.py -q
"""
from __future__ import annotations

import json
import sqlite3

import pytest

from orion import cli
from orion.activities import format_timestamp, parse_timestamp

T0 = parse_timestamp("2026-11-22T10:00:00Z")


def _line(event_id: str, type_: str, at: int, **attributes) -> str:
    return json.dumps({"event_id": event_id, "tenant": "acme", "lead_id": "C1", "type": type_,
                       "occurred_at": format_timestamp(at), "attributes": attributes})


def test_orion_run_runner_flink_runs_the_job_with_flows_from_the_command_line(flink, tmp_path, capsys):
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join([
        _line("c-1", "data_value_changes", T0, attribute="email", new_value="c1@acme.example"),
        _line("c-2", "fill_out_form", T0 + 1000, form="Signup"),  # the sample rules' welcome flow
        _line("c-3", "teleport", T0 + 2000),  # an unknown type: a dead letter
    ]) + "\n", encoding="utf-8")
    out_dir, db, outbox = tmp_path / "out", tmp_path / "store.db", tmp_path / "outbox.db"

    status = cli.main(["run", "--runner", "flink", "--events", str(events), "--store", f"sqlite:///{db}",
                       "--out-dir", str(out_dir), "--outbox", f"sqlite:///{outbox}", "--parallelism", "1"])

    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "events read:      3" in printed and "dead letters:     1" in printed
    with sqlite3.connect(db) as connection:
        stored = sorted(row[0] for row in connection.execute("SELECT type FROM activities"))
    # the two activities read, and the two the welcome flow generated (list, score)
    assert stored == ["added_to_list", "change_score", "data_value_changes", "fill_out_form"]
    outcomes = [json.loads(line) for f in out_dir.glob("outcomes-*.jsonl") for line in f.read_text().splitlines()]
    assert any(o["campaign"] == "Welcome new signups" and o["qualified"] for o in outcomes)
    dead = [json.loads(line) for f in out_dir.glob("dead-letters-*.jsonl") for line in f.read_text().splitlines()]
    assert [d["reason"] for d in dead] == ["unknown_type"]
    with sqlite3.connect(outbox) as connection:
        queued = connection.execute("SELECT campaign, lead_id, recipient, template, status FROM outbox").fetchall()
    assert queued == [("Welcome new signups", "C1", "c1@acme.example", "welcome", "queued")]


def test_parallelism_goes_to_beam_when_the_runner_is_a_beam_runner():
    from orion.runners.flink_options import beam_runner_args, flink_options_from

    parser = cli.build_parser()
    args, unknown = parser.parse_known_args(["run", "--runner", "FlinkRunner", "--flink_master=jm:8081",
                                             "--parallelism", "4"])
    assert beam_runner_args(args) == ("--parallelism=4",) and unknown == ["--flink_master=jm:8081"]
    assert flink_options_from(args).parallelism == 4
    args, _ = parser.parse_known_args(["run", "--runner", "flink"])
    assert beam_runner_args(args) == () and flink_options_from(args).parallelism == 1


def test_restart_strategy_checkpoints_and_the_kafka_connector_reach_the_flink_configuration(flink, tmp_path):
    from orion.runners.flink_options import flink_options_from

    parser = cli.build_parser()
    args, _ = parser.parse_known_args(["run", "--runner", "flink", "--watch", "--checkpoint-dir", str(tmp_path / "chk"),
                                       "--restart-attempts", "5", "--restart-delay", "2.5"])
    options = flink_options_from(args)
    conf = flink.flink_configuration(options, tmp_path / "out")
    assert conf.get_string("restart-strategy.type", "") == "fixed-delay"
    assert conf.get_string("restart-strategy.fixed-delay.attempts", "") == "5"
    assert conf.get_string("restart-strategy.fixed-delay.delay", "") == "2500 ms"
    assert conf.get_string("execution.checkpointing.interval", "") == "10000 ms", "unbounded: checkpoints by default"
    assert conf.get_string("execution.checkpointing.dir", "") == (tmp_path / "chk").as_uri()
    assert conf.get_string("execution.checkpointing.externalized-checkpoint-retention", "") == \
        "RETAIN_ON_CANCELLATION"

    defaults = flink.flink_configuration(flink.FlinkOptions(), tmp_path / "out")
    assert defaults.get_string("restart-strategy.fixed-delay.attempts", "") == "3"
    assert defaults.get_string("execution.checkpointing.interval", "none") == "none", \
        "bounded input commits its files at its end, without checkpoints"
    streaming = flink.flink_configuration(flink.FlinkOptions(watch=True), tmp_path / "out")
    assert streaming.get_string("execution.checkpointing.dir", "") == (tmp_path / "out" / ".flink-checkpoints").as_uri()
    assert flink.flink_configuration(flink.FlinkOptions(restart_attempts=0)).get_string(
        "restart-strategy.type", "") == "none"

    kafka = flink.FlinkOptions(kafka_servers="127.0.0.1:9092", kafka_topic="activities")
    jars = flink.flink_configuration(kafka).get_string("pipeline.jars", "")
    assert "flink-sql-connector-kafka" in jars, "the connector comes from orion.jars without --jars"
    given = tmp_path / "flink-sql-connector-kafka-9.9.9.jar"
    assert flink.flink_configuration(kafka._replace(jars=(str(given),))).get_string("pipeline.jars", "") == \
        given.as_uri(), "a connector named with --jars is the only one"


def test_from_savepoint_takes_the_newest_complete_checkpoint_of_a_checkpoint_directory(flink, tmp_path, capsys):
    import os

    checkpoints = tmp_path / "checkpoints"
    for job, number, complete, age in (("job-a", 9, True, 300), ("job-b", 4, True, 100), ("job-b", 5, False, 0)):
        checkpoint = checkpoints / job / f"chk-{number}"
        checkpoint.mkdir(parents=True)
        if complete:
            (checkpoint / "_metadata").write_bytes(b"\0")
            os.utime(checkpoint / "_metadata", (1_800_000_000 - age,) * 2)
    newest = checkpoints / "job-b" / "chk-4"  # chk-5 has no _metadata: still being written
    assert cli.main(["flink", "newest-checkpoint", str(checkpoints)]) == 0
    assert capsys.readouterr().out.strip() == str(newest)
    conf = flink.flink_configuration(flink.FlinkOptions(from_savepoint=str(checkpoints)))
    assert conf.get_string("execution.state-recovery.path", "") == str(newest)
    savepoint = newest  # a savepoint or checkpoint named directly is taken as it is, as Flink names it too
    for named in (str(savepoint), f"file:{savepoint}", savepoint.as_uri()):
        assert flink.flink_configuration(flink.FlinkOptions(from_savepoint=named)).get_string(
            "execution.state-recovery.path", "") == str(savepoint), named

    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["flink", "newest-checkpoint", str(empty)]) == 1
    status = cli.main(["run", "--runner", "flink", "--events", str(empty), "--watch", "--out-dir", str(tmp_path / "out"),
                       "--from-savepoint", str(empty)])
    assert status == 2 and "holds no complete checkpoint" in capsys.readouterr().err


def test_a_restore_resolves_its_checkpoint_directory_once(flink, tmp_path):
    """The newest checkpoint of a --from-savepoint directory is found once, before the
    job is built (start_flink calls `restoring`): the state it restores and the lineage
    it continues come from that checkpoint even when a newer one completes meanwhile,
    so the directory is not listed again."""
    import os

    from orion.flink.cluster import keep_lineage

    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "job-b" / "chk-4").mkdir(parents=True)
    (checkpoints / "job-b" / "chk-4" / "_metadata").write_bytes(b"\0")
    os.utime(checkpoints / "job-b" / "chk-4" / "_metadata", (1_700_000_000,) * 2)  # older than what follows
    keep_lineage(checkpoints, "job-b", "b" * 32)
    options = flink.restoring(flink.FlinkOptions(watch=True, from_savepoint=str(checkpoints)))
    restored = options.from_savepoint
    assert restored == str(checkpoints / "job-b" / "chk-4")

    # Another job's checkpoint completes after the resolution: a second listing would take it.
    (checkpoints / "job-c" / "chk-9").mkdir(parents=True)
    (checkpoints / "job-c" / "chk-9" / "_metadata").write_bytes(b"\0")
    keep_lineage(checkpoints, "job-c", "c" * 32)
    assert flink.newest_checkpoint(str(checkpoints)) == str(checkpoints / "job-c" / "chk-9")
    assert flink.flink_configuration(options).get_string("execution.state-recovery.path", "") == restored
    assert flink.job_lineage(options) == "b" * 32, "the lineage kept beside the checkpoint restored"


def test_a_job_restored_from_a_savepoint_continues_the_lineage_its_job_kept(flink, tmp_path):
    """A savepoint taken while the job ran (`flink savepoint JOB_ID`) holds no lineage;
    restored with the job's --checkpoint-dir, the new job continues the lineage kept
    there, so the profiles the old job wrote after the savepoint are rolled back, not
    taken for the leads' own."""
    from orion.flink.cluster import keep_lineage

    lineage, job = "ab" * 16, "3f9a2c" + "0" * 26
    keep_lineage(tmp_path / "checkpoints", job, lineage)
    savepoint = tmp_path / "savepoints" / "savepoint-3f9a2c-0123456789ab"
    savepoint.mkdir(parents=True)
    (savepoint / "_metadata").write_bytes(b"\0")
    options = flink.FlinkOptions(watch=True, from_savepoint=str(savepoint),
                                 checkpoint_dir=str(tmp_path / "checkpoints"))
    assert flink.job_lineage(options) == lineage
    assert flink.job_lineage(options._replace(checkpoint_dir=None)) != lineage, "nowhere to look: a new lineage"

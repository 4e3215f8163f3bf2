"""The Flink job on a real standalone cluster: one JobManager and two TaskManagers started
from the apache-flink package's own scripts by the session fixture `flink_cluster`
(tests/flink_services.py). Submitted with --flink-master, the job runs on the cluster and
gives what the in-process mini-cluster gives; --detach returns a job id the cluster
lists; a job over a watched directory stopped with a savepoint (`orion flink stop`) and
resumed from it on the cluster loses and repeats nothing; the TaskManagers run the Python
of an archive shipped with the job; `orion flink cluster status` shows the cluster.

Needs Java 17 and apache-flink (PyFlink); without them these tests fail and say so.

    .venv/bin/python -m pytest tests/test_flink_cluster.py -q
"""
from __future__ import annotations

import json
import re
import shutil
import stat
import sys
import sysconfig
import zipfile
from collections import Counter
from pathlib import Path

import pytest
import yaml
from flink_services import flink_cluster  # noqa: F401  (the session's cluster)
from test_flink_parity import (
    FLOW_RULES, LEADS, RULES_V1, RULES_V2, SAMPLES, T0, address_lines, config_for, drop_file, flow_lines,
    output_lines, outbox_rows, outputs, queued_emails, released_before, scenario_lines, stored_event_ids,
    visit_lines, wait_for,
)

from orion import cli
from orion.flink import cluster as rest

SECOND = 1000


def _new_jobs(cluster, before: set[str]) -> list[dict]:
    return [job for job in rest.jobs(cluster.rest_address) if job["jid"] not in before]


def _job_ids(cluster) -> set[str]:
    return {job["jid"] for job in rest.jobs(cluster.rest_address)}


def _run_args(events: str, rules: Path, out_dir: Path, db: Path, outbox: Path) -> list[str]:
    return ["run", "--runner", "flink", "--events", events, "--rules", str(rules), "--store", f"sqlite:///{db}",
            "--out-dir", str(out_dir), "--outbox", f"sqlite:///{outbox}"]


def _flow_inputs(tmp_path: Path) -> tuple[str, Path]:
    """The parity scenario: the samples, out-of-order, duplicate, late and bad events, and
    a tenant whose flows send, wait two days, send again and call a webhook."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(SAMPLES / "events.jsonl", inputs / "samples.jsonl")
    (inputs / "scenario.jsonl").write_text("\n".join(scenario_lines()) + "\n", encoding="utf-8")
    (inputs / "flows.jsonl").write_text("\n".join(flow_lines()) + "\n", encoding="utf-8")
    rules = tmp_path / "rules"
    shutil.copytree(SAMPLES / "rules", rules)
    (rules / "flowco.yaml").write_text(FLOW_RULES, encoding="utf-8")
    return str(inputs / "*.jsonl"), rules


def test_a_job_submitted_to_the_cluster_gives_what_the_in_process_run_gives(flink, flink_cluster, tmp_path, capsys):
    pattern, rules = _flow_inputs(tmp_path)
    before = _job_ids(flink_cluster)

    status = cli.main(_run_args(pattern, rules, tmp_path / "cluster", tmp_path / "cluster.db",
                                tmp_path / "cluster-outbox.db")
                      + ["--flink-master", flink_cluster.rest_address, "--parallelism", "2"])
    printed = capsys.readouterr().out
    assert status == 0, printed
    in_process = flink.run_flink(config_for(pattern, rules, tmp_path / "local", tmp_path / "local.db",
                                            tmp_path / "local-outbox.db"),
                                 options=flink.FlinkOptions(parallelism=2))

    submitted = _new_jobs(flink_cluster, before)
    assert [job["state"] for job in submitted] == ["FINISHED"], "the job ran on the cluster, not in this process"
    assert rest.job_taskmanagers(flink_cluster.rest_address, submitted[0]["jid"]) == \
        {manager["id"] for manager in rest.taskmanagers(flink_cluster.rest_address)}, "on both TaskManagers"
    on_cluster = outputs(tmp_path / "cluster", tmp_path / "cluster.db")
    local = outputs(tmp_path / "local", tmp_path / "local.db")
    for part in ("outcomes", "dead_letters", "activities", "index", "profiles"):
        assert on_cluster[part] == local[part], f"{part} differ between the cluster and the in-process run"
    assert outbox_rows(tmp_path / "cluster-outbox.db") == outbox_rows(tmp_path / "local-outbox.db")
    assert len(outbox_rows(tmp_path / "cluster-outbox.db")) > 10 and len(on_cluster["activities"]) > 3000
    # the summary reads the counts the cluster's Python workers wrote
    assert f"events read:      {in_process.counters['events_read']}" in printed


def test_detach_prints_a_job_id_that_the_cluster_lists(flink_cluster, tmp_path, capsys):
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(address_lines() + visit_lines(range(10))) + "\n", encoding="utf-8")
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "acme.yaml").write_text(RULES_V1, encoding="utf-8")

    status = cli.main(_run_args(str(events), rules, tmp_path / "out", tmp_path / "store.db", tmp_path / "outbox.db")
                      + ["--flink-master", flink_cluster.rest_address, "--detach"])

    printed = capsys.readouterr().out
    assert status == 0, printed
    job_id = re.search(r"job id:\s+([0-9a-f]{32})", printed).group(1)
    assert job_id in _job_ids(flink_cluster), "the REST API lists the job the command submitted"
    assert rest.wait_for_job(flink_cluster.rest_address, job_id) == "FINISHED"
    assert sorted(e for e in stored_event_ids(tmp_path / "store.db") if e.startswith("v-")) == \
        [f"v-{n:04d}" for n in range(10)]


def test_a_watched_directory_job_stopped_with_a_savepoint_resumes_on_the_cluster(flink, flink_cluster, tmp_path,
                                                                                capsys):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "acme.yaml").write_text(RULES_V1, encoding="utf-8")
    watched = tmp_path / "incoming"
    watched.mkdir()
    db, outbox, out_dir = tmp_path / "store.db", tmp_path / "outbox.db", tmp_path / "out"
    config = config_for(str(watched), rules, out_dir, db, outbox)
    # Parallelism 1: with one file at a time, a second source instance would have nothing
    # to read and hold the watermark back for the idleness timeout (the allowed lateness).
    streaming = flink.FlinkOptions(flink_master=flink_cluster.rest_address, watch=True,
                                   monitor_interval_s=0.5, flush_after_ms=200, idle_release_s=1.0)
    welcomes = sorted((f"L{n}", f"v-{n:04d}#0", T0 + n * 10 * SECOND) for n in range(LEADS))
    follow_ups = sorted((lead, run.replace("#0", "#3"), at + 600 * SECOND) for lead, run, at in welcomes)
    first, second = range(0, 60), range(60, 120)

    drop_file(watched, "part-1.jsonl", address_lines() + visit_lines(first))
    job_id = flink.start_flink(config, streaming).job_id
    assert rest.job_state(flink_cluster.rest_address, job_id) in ("INITIALIZING", "CREATED", "RUNNING")
    released_first = released_before(first, newest=first[-1])
    wait_for(lambda: released_first <= set(stored_event_ids(db)), "the first file's released visits")
    wait_for(lambda: queued_emails(outbox) == welcomes, "the welcome emails")

    assert cli.main(["flink", "stop", job_id, "--savepoint", str(tmp_path / "savepoints"),
                     "--flink-master", flink_cluster.rest_address]) == 0
    savepoint = re.search(r"savepoint:\s+(\S+)", capsys.readouterr().out).group(1)
    assert rest.job_state(flink_cluster.rest_address, job_id) == "FINISHED"
    after_first_run = set(stored_event_ids(db))
    assert released_first <= after_first_run and {f"v-{n:04d}" for n in first} - after_first_run, \
        "the visits within the allowed lateness wait in the savepoint"

    (rules / "acme.yaml").write_text(RULES_V2, encoding="utf-8")
    drop_file(watched, "part-2.jsonl", visit_lines(second) + visit_lines([3, 58, 59]))  # three redelivered
    job = flink.start_flink(config, streaming._replace(from_savepoint=savepoint))
    everything = {f"v-{n:04d}" for n in range(120)}
    wait_for(lambda: released_before(range(120), newest=119) <= set(stored_event_ids(db)),
             "the second file's released visits")
    wait_for(lambda: queued_emails(outbox) == sorted(welcomes + follow_ups), "the follow-ups after the wait")
    # this time through the job's client, as `orion run` without --detach stops it
    job.stop_with_savepoint(str(tmp_path / "savepoints"), drain=True)
    assert rest.job_state(flink_cluster.rest_address, job.job_id) == "FINISHED"

    stored = stored_event_ids(db)
    assert sorted(e for e in stored if e.startswith("v-")) == sorted(everything), "every visit is stored once"
    assert queued_emails(outbox) == sorted(welcomes + follow_ups), "one welcome and one follow-up per lead"
    outcomes = [json.loads(line) for line in output_lines(out_dir, "outcomes-*.jsonl")]
    every = Counter(o["event_id"] for o in outcomes if o["campaign"].startswith("Every visit"))
    assert every == Counter(everything), "each visit is evaluated exactly once across the two jobs"
    assert {o["campaign"] for o in outcomes if o["event_id"] == "v-0119"} >= {"Every visit v2"}, \
        "the resumed job runs the changed rules"


def _interpreter_archive(path: Path) -> Path:
    """A zipped Python environment: a copy of the base interpreter, a pyvenv.cfg, and a
    .pth that puts this environment's packages on its path (a real one would hold them:
    venv-pack, conda-pack), so the TaskManagers can only run it unpacked from the job."""
    base = Path(getattr(sys, "_base_executable", sys.executable)).resolve()
    packages = sysconfig.get_paths()["purelib"]
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    with zipfile.ZipFile(path, "w") as archive:
        interpreter = zipfile.ZipInfo("bin/python")
        interpreter.external_attr = (stat.S_IFREG | 0o755) << 16
        archive.writestr(interpreter, base.read_bytes())
        archive.writestr("pyvenv.cfg", f"home = {base.parent}\ninclude-system-site-packages = false\n")
        archive.writestr(f"lib/{version}/site-packages/dependencies.pth",
                         f"import site; site.addsitedir({packages!r})\n")
    return path


def test_the_taskmanagers_run_the_python_of_an_archive_shipped_with_the_job(flink_cluster, tmp_path, capsys):
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(address_lines() + visit_lines(range(20))) + "\n", encoding="utf-8")
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "acme.yaml").write_text(RULES_V1, encoding="utf-8")
    archive = _interpreter_archive(tmp_path / "interpreter.zip")

    # `interpreter/bin/python` exists only where a TaskManager unpacks the job's archive.
    status = cli.main(_run_args(str(events), rules, tmp_path / "out", tmp_path / "store.db", tmp_path / "outbox.db")
                      + ["--flink-master", flink_cluster.rest_address, "--python-archive", f"{archive}#interpreter",
                         "--python-executable", "interpreter/bin/python"])

    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "events read:      25" in printed
    assert len([e for e in stored_event_ids(tmp_path / "store.db") if e.startswith("v-")]) == 20
    assert queued_emails(tmp_path / "outbox.db") == sorted(
        (f"L{n}", f"v-{n:04d}#0", T0 + n * 10 * SECOND) for n in range(LEADS))


def test_jobs_on_a_cluster_run_their_python_in_process_mode(flink):
    options = flink.FlinkOptions(flink_master="127.0.0.1:8081", execution_mode="thread")
    conf = flink.flink_configuration(options)
    assert conf.get_string("python.execution-mode", "") == "process"
    assert conf.get_string("execution.target", "") == "remote"
    assert "flink-python" in conf.get_string("pipeline.jars", "")
    assert flink.flink_configuration(options._replace(flink_master=None)).get_string(
        "python.execution-mode", "") == "thread"
    with pytest.raises(SystemExit, match="thread runs on the local mini-cluster only"):
        cli.main(["run", "--runner", "flink", "--flink-master", "127.0.0.1:8081", "--python-execution-mode", "thread"])
    with pytest.raises(SystemExit, match="--detach needs --flink-master"):
        cli.main(["run", "--runner", "flink", "--detach"])


def test_cluster_status_shows_the_rest_address_the_two_taskmanagers_and_the_jobs(flink_cluster, capsys):
    assert cli.main(["flink", "cluster", "status", "--state-dir", str(flink_cluster.state_dir)]) == 0
    printed = capsys.readouterr().out
    assert f"http://{flink_cluster.rest_address}" in printed
    assert "taskmanagers: 2, slots:" in printed
    assert len(re.findall(r"^  127\.0\.0\.1:\d+-\w+  slots \d free of 2$", printed, re.MULTILINE)) == 2
    assert re.search(r"^jobs: \d+ running, \d+ known$", printed, re.MULTILINE)

    # its configuration lives in the state directory, every address on the loopback
    config = yaml.safe_load((flink_cluster.conf_dir / "config.yaml").read_text(encoding="utf-8"))
    assert not flink_cluster.conf_dir.is_relative_to(rest.flink_home())
    assert config["rest"]["address"] == config["rest"]["bind-address"] == "127.0.0.1"
    assert config["jobmanager"]["rpc"]["address"] == config["taskmanager"]["host"] == "127.0.0.1"
    assert config["python"]["executable"] == sys.executable

    # a second start from the same state directory refuses, and names the running cluster
    assert cli.main(["flink", "cluster", "start", "--state-dir", str(flink_cluster.state_dir)]) == 2
    assert flink_cluster.rest_address in capsys.readouterr().err

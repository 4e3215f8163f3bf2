"""`orion run` on the DirectRunner: the main job over files, its summary, reruns, and stopping a streaming run."""
from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from orion.store.rollups_opening import open_rollup_store

ORION = Path(sys.executable).with_name("orion")
SAMPLES = Path(__file__).resolve().parent.parent / "orion" / "samples"


def orion_run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([str(ORION), "run", *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def store_digest(db: Path) -> tuple[int, str]:
    with sqlite3.connect(db) as connection:
        rows = connection.execute(
            "SELECT tenant, lead_id, occurred_at, event_id, type, attributes FROM activities "
            "ORDER BY tenant, lead_id, occurred_at, event_id").fetchall()
    return len(rows), hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def summary_value(stdout: str, label: str) -> int:
    line = next(line for line in stdout.splitlines() if line.startswith(label))
    return int(line.split(":", 1)[1].split()[0])


def test_main_job_runs_the_samples_and_accounts_for_every_event(tmp_path):
    result = orion_run(cwd=tmp_path)
    read = summary_value(result.stdout, "events read:")
    stored = summary_value(result.stdout, "stored:")
    duplicates = summary_value(result.stdout, "duplicates:")
    dead = summary_value(result.stdout, "dead letters:")
    lines = sum(1 for line in (SAMPLES / "events.jsonl").read_text().splitlines() if line.strip())
    assert read == lines
    # Flows are on by default: the activities their steps generate are stored too, and their dead letters join.
    from_flows = summary_value(result.stdout, "  flow activities:")
    flow_dead = summary_value(result.stdout, "  flow dead letters:")
    assert read == stored - from_flows + duplicates + dead - flow_dead, \
        "every event is stored, a duplicate, or a dead letter"
    assert duplicates > 0 and "  late: " in result.stdout  # the samples carry both on purpose
    count, _ = store_digest(tmp_path / "orion-data" / "activities.db")
    assert count == stored
    dead_lines = [json.loads(line) for f in (tmp_path / "orion-data").glob("dead-letters-*.jsonl")
                  for line in f.read_text().splitlines()]
    assert len(dead_lines) == dead and all(d["reason"] and d["detail"] for d in dead_lines)
    assert "campaigns fired (top 10):" in result.stdout and "events/s" in result.stdout


@pytest.mark.parametrize("runner", ["direct", "flink"])
def test_no_rollups_keeps_none_and_the_default_rolls_up(tmp_path, runner):
    """Roll-ups are on by default on both engines; `--no-rollups` keeps none and leaves
    the rest of the run as it was."""
    counts = {}
    for name, extra in (("default", ()), ("none", ("--no-rollups",))):
        db = tmp_path / f"{name}.db"
        result = orion_run("--runner", runner, "--store", f"sqlite:///{db}", "--out-dir", str(tmp_path / name),
                           *extra, cwd=tmp_path)
        with sqlite3.connect(db) as connection:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        rollups = 0
        if "rollups" in tables:  # rows one by one and in segments (a bounded Beam run's)
            with open_rollup_store(f"sqlite:///{db}") as store:
                rollups = store.count()
        counts[name] = (rollups, summary_value(result.stdout, "stored:"), store_digest(db))
    assert counts["default"][0] > 0 and counts["none"][0] == 0
    assert counts["default"][1:] == counts["none"][1:]


def test_rerunning_the_same_file_leaves_the_store_unchanged(tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_text((SAMPLES / "events.jsonl").read_text())
    db = tmp_path / "store.db"
    args = ("--events", str(events), "--store", f"sqlite:///{db}", "--out-dir", str(tmp_path / "out"))
    first = orion_run(*args, cwd=tmp_path)
    before = store_digest(db)
    profiles_before = profile_rows(db)
    second = orion_run(*args, cwd=tmp_path)
    assert store_digest(db) == before
    assert profile_rows(db) == profiles_before and profiles_before, "a replay leaves the same profiles"
    outcomes_after = [line for f in (tmp_path / "out").glob("outcomes-*.jsonl") for line in f.read_text().splitlines()]
    assert outcomes_after == [], "a rerun replaces the outcome files; the leads' profiles say it was all evaluated"
    assert summary_value(first.stdout, "stored:") == before[0]
    assert summary_value(second.stdout, "stored:") == 0
    # Every input activity evaluated the first time is recognised as already evaluated.
    input_stored = summary_value(first.stdout, "stored:") - summary_value(first.stdout, "  flow activities:")
    assert summary_value(second.stdout, "duplicates:") == input_stored + summary_value(first.stdout, "duplicates:")


def profile_rows(db: Path) -> list:
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT tenant, lead_id, data FROM lead_profiles ORDER BY tenant, lead_id").fetchall()


def test_stopping_a_streaming_run_does_not_wait_on_a_runner_stuck_in_a_pull():
    # The local runner's cancel joins a worker that can sit in a Pub/Sub pull for 30 s;
    # `--duration` must not grow by that. A stand-in result whose cancel blocks until
    # released (after 10 s at the latest, so a regression fails rather than hangs).
    from orion.runners.direct import _stop

    released = threading.Event()

    class StuckResult:
        def cancel(self):
            released.wait(10)

    deadline = threading.Timer(10, released.set)
    deadline.start()
    _stop(StuckResult(), wait_s=0.2)
    returned_while_stuck = not released.is_set()
    released.set()
    deadline.cancel()
    assert returned_while_stuck


def test_orion_run_compiles_the_rules_once_for_its_check_and_its_in_process_graph(tmp_path, monkeypatch):
    import shutil

    import orion.rules
    from orion import cli

    rules = tmp_path / "rules"  # a directory of its own: no earlier test compiled it in this process
    shutil.copytree(SAMPLES / "rules", rules)
    # A spy, not a mock: the real loader runs and compiles the real rules; the wrapper only
    # counts its calls, which nothing else in a run shows.
    compiled = []
    load = orion.rules.load_serving_rules
    monkeypatch.setattr(orion.rules, "load_serving_rules", lambda *args: compiled.append(args) or load(*args))

    status = cli.main(["run", "--rules", str(rules), "--store", f"sqlite:///{tmp_path / 'store.db'}",
                       "--out-dir", str(tmp_path / "out"), "--outbox", f"sqlite:///{tmp_path / 'outbox.db'}"])

    assert status == 0
    assert len(compiled) == 1, f"the rules were compiled {len(compiled)} times"
    outcomes = [line for f in (tmp_path / "out").glob("outcomes-*.jsonl") for line in f.read_text().splitlines()]
    assert outcomes, "the graph ran the rules it was given"

"""Tenants switched between rollout stages while the job runs, with activities in flight,
on both engines: `orion run --mode tenants` on Beam's DirectRunner reading the real
Pub/Sub emulator, and the PyFlink job on a real mini-cluster watching a directory. The
legacy store is the real MariaDB; the new store the real Bigtable emulator (Beam) or
SQLite (Flink), which also holds the tenant registry.

One tenant (acme) goes legacy -> passive -> active -> deactivated, each switch made while
some of its activities wait in the job for the watermark; another (bank) stays passive
throughout. Each run shows: every activity is stored once in MySQL (nothing lost,
nothing twice), the new store holds exactly acme's activities written while it was
passive or active and all of bank's, each activity was counted under exactly one stage
(the per-stage counters add up to the activities, and each stage's count is the
activities released while it was in force), and `orion tenants report` shows the
difference a read found.

    .venv/bin/python -m pytest -q tests/test_tenants_streaming.py
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DAY
from store_services import _mysql_connect, bigtable_uri, drop_mysql_tables, mysql_uri

from orion import cli
from orion.activities import Activity
from orion.settings import RunConfig
from orion.store import open_store
from orion.testing.emulators import EmulatorMissing, PubSubEmulator, emulator_environment
from orion.tenants import metrics
from orion.tenants.registry import STAGES

ORION = Path(sys.executable).with_name("orion")
PROJECT = "orion-test"
SECOND = 1000

# acme counts pricing visits over the last 30 days: a lead new to the job has its history
# read from the store (and, while acme migrates, compared between the two).
RULES = {
    "acme.yaml": """
tenant: acme
campaigns:
  - name: Returning visitor
    qualification: every_time
    triggers: [{activity: visit_web_page}]
    filters:
      - activity_history: {activity: visit_web_page, at_least: 2, in_past: {n: 30, unit: days}}
""",
    "bank.yaml": """
tenant: bank
campaigns:
  - name: Any visit
    qualification: every_time
    triggers: [{activity: visit_web_page}]
""",
}


def rules_folder(base: Path) -> Path:
    rules = base / "rules"
    rules.mkdir()
    for name, text in RULES.items():
        (rules / name).write_text(text)
    return rules


@pytest.fixture
def legacy(mysql_database):
    def drop():
        drop_mysql_tables(mysql_database)
        connection = _mysql_connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"DROP TABLE IF EXISTS `{mysql_database}`.tenant_stages, `{mysql_database}`.rollups, "
                               f"`{mysql_database}`.rollup_segments")
        finally:
            connection.close()

    drop()
    yield mysql_uri(mysql_database)
    drop()


def event(event_id: str, tenant: str, lead: str, at_ms: int) -> dict:
    return {"event_id": event_id, "tenant": tenant, "lead_id": lead, "type": "visit_web_page",
            "occurred_at": at_ms, "attributes": {"url": f"https://{tenant}.example/{event_id}"}}


def stored_ids(uri: str, tenant: str | None = None) -> list[str]:
    """Every stored event id (of `tenant`), with repeats if a row were there twice."""
    if uri.startswith("mysql://"):
        connection = _mysql_connect(uri.rsplit("/", 1)[1])
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT tenant, event_id FROM activities")
                rows = [(t.decode(), e.decode()) for t, e in cursor.fetchall()]
        finally:
            connection.close()
    elif uri.startswith("sqlite://"):
        import sqlite3

        path = uri[len("sqlite:///"):]
        if not Path(path).exists():
            return []
        with sqlite3.connect(path) as connection:
            rows = connection.execute("SELECT tenant, event_id FROM activities").fetchall()
    else:
        from orion.store.bigtable import BigtableStore

        with BigtableStore(uri) as store:
            rows = [(a.tenant, a.event_id) for a in store.scan()]
    return sorted(e for t, e in rows if tenant is None or t == tenant)


def wait_for(condition, what: str, timeout_s: float = 120.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the job ended (exit {process.returncode}) while waiting for {what}:\n"
                                 f"{process.stdout.read()[-3000:] if process.stdout else ''}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.5)


def set_stage(store_uri: str, tenant: str, stage: str) -> None:
    assert cli.main(["tenants", "set", tenant, "--stage", stage, "--store", store_uri]) == 0


def stage_counts(report_dir: Path) -> dict[str, dict[str, int]]:
    samples = metrics.read_samples(report_dir)
    return {tenant: metrics.totals(samples, metrics.ACTIVITIES, tenant, "stage") for tenant in ("acme", "bank")}


def check_rollout(legacy: str, new: str, out: Path, batches: dict[str, list[str]], bank_ids: list[str], capsys):
    """What every run must show; `batches`: acme's event ids by the stage they were
    written under."""
    acme_ids = sorted(e for ids in batches.values() for e in ids)
    assert stored_ids(legacy, "acme") == sorted(acme_ids + ["acme-past"]), \
        "MySQL holds every acme activity, each once (and the history written before the run)"
    assert stored_ids(legacy, "bank") == sorted(bank_ids)
    assert stored_ids(new, "acme") == sorted(batches["passive"] + batches["active"]), \
        "the new store has acme's activities of its passive and active stages, each once, and no others"
    assert stored_ids(new, "bank") == sorted(bank_ids), "bank, passive throughout, is in both"
    counted = stage_counts(out)
    assert counted["acme"] == {stage: len(ids) for stage, ids in batches.items() if ids}, \
        "each activity counted under the stage in force when it was written"
    assert counted["bank"] == {"passive": len(bank_ids)}
    assert sum(n for by_stage in counted.values() for n in by_stage.values()) == len(acme_ids) + len(bank_ids), \
        "the counters per stage add up to the activities: each was handled under exactly one stage"

    capsys.readouterr()
    assert cli.main(["tenants", "report", "acme", "--store", new, "--report-dir", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["stage"] == "deactivated" and report["previous_stage"] == "active"
    assert report["activities_by_stage"] == {stage: len(batches[stage]) for stage in STAGES}
    return report


# --- Beam, reading Pub/Sub ------------------------------------------------------------------

LATENESS_S = 6  # what a batch waits in the job, at least: far longer than the registry refresh


@pytest.fixture
def pubsub():
    try:
        emulator = PubSubEmulator.start()
    except EmulatorMissing as missing:
        pytest.fail(str(missing))
    yield emulator
    emulator.stop()


def test_beam_streaming_run_switches_a_tenant_through_every_stage_with_activities_in_flight(
        pubsub, bigtable_emulator, legacy, tmp_path, monkeypatch, capsys):
    from google.cloud import pubsub_v1

    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub.host)
    topic, subscription = f"projects/{PROJECT}/topics/rollout", f"projects/{PROJECT}/subscriptions/rollout"
    publisher = pubsub_v1.PublisherClient(
        publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True))
    publisher.create_topic(name=topic)
    pubsub_v1.SubscriberClient().create_subscription(
        request={"name": subscription, "topic": topic, "enable_message_ordering": True})

    new = bigtable_uri()
    for uri in (legacy, new):
        assert cli.main(["store", "init", uri]) == 0
    set_stage(new, "bank", "passive")
    # A history only MySQL has (as if written while acme was legacy, before a bootstrap):
    # the lead's reads, compared in passive and active, differ.
    day_ago = int(time.time() * 1000) - DAY
    with open_store(legacy) as store:
        past = [Activity("acme-past", "acme", "LD", "visit_web_page", day_ago, {"url": "https://acme.example/"})]
        store.write(past)
        store.index_activities(past)

    out = tmp_path / "out"
    job = subprocess.Popen(
        [str(ORION), "run", "--rules", str(rules_folder(tmp_path)), "--subscription", subscription,
         "--mode", "tenants", "--legacy-store", legacy, "--store", new, "--tenant-refresh", "1",
         "--out-dir", str(out), "--outbox", "none", "--allowed-lateness", str(LATENESS_S)],
        env=emulator_environment(pubsub), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    batches: dict[str, list[str]] = {stage: [] for stage in STAGES}
    bank_ids: list[str] = []

    def publish(stage: str, leads: list[str]) -> None:
        """acme's activities (one per lead) and one of bank's, stamped now: each waits
        LATENESS_S in the job before it is written, under `stage`."""
        now = int(time.time() * 1000)
        found = [event(f"{stage}-{lead}", "acme", lead, now + n) for n, lead in enumerate(leads)]
        found.append(event(f"bank-{stage}", "bank", "B1", now))
        for future in [publisher.publish(topic, json.dumps(e).encode(), ordering_key="rollout") for e in found]:
            future.result(timeout=30)
        batches[stage] += [e["event_id"] for e in found[:-1]]
        bank_ids.append(found[-1]["event_id"])

    def written(uri: str, ids: list[str]) -> bool:
        return set(ids) <= set(stored_ids(uri))

    try:
        publish("legacy", ["L1", "L2"])
        wait_for(lambda: written(legacy, batches["legacy"] + bank_ids), "the legacy batch in MySQL", 180, job)
        # Each switch right after its batch is published: the batch is in flight (pulled,
        # waiting for the watermark) when the stage changes, and written under the new one.
        for stage, leads in (("passive", ["L1", "L3"]), ("active", ["L2", "LD"]), ("deactivated", ["L1", "L4"])):
            publish(stage, leads)
            set_stage(new, "acme", stage)
            target = legacy if stage == "deactivated" else new
            wait_for(lambda: written(target, batches[stage]), f"the {stage} batch", 120, job)
        wait_for(lambda: written(new, bank_ids), "bank's last activity", 60, job)
    finally:
        if job.poll() is None:
            job.send_signal(signal.SIGINT)  # Ctrl-C: the run drains, then stops
        try:
            output = job.communicate(timeout=120)[0]
        except subprocess.TimeoutExpired:
            job.kill()
            output = job.communicate()[0]
    assert job.returncode == 0, output[-3000:]
    assert "stored:           12" in output, output[-3000:]

    report = check_rollout(legacy, new, out, batches, bank_ids, capsys)
    assert report["differences_by_kind"].get("index", 0) + report["differences_by_kind"].get("history", 0) >= 1
    assert {d["lead_id"] for d in report["first_differences"]} == {"LD"}, \
        "the lead whose history only MySQL has; the others read the same from both"
    assert report["reads_compared"].get("index", 0) >= 1


# --- the Flink job, watching a directory --------------------------------------------------

T0 = 1_800_000_000_000
FLINK_LATENESS_MS = 30 * SECOND  # in event time: the newest 3 visits of a file wait for the next
FILES = 4
PER_FILE = 20


def visit_number_tenant(n: int) -> str:
    return "bank" if n % 4 == 3 else "acme"


SEEDED_VISIT = 24  # acme's lead LD appears first here, in the second file (passive)


def visit_lines(numbers) -> list[str]:
    return [json.dumps(event(f"v-{n:03d}", visit_number_tenant(n), "LD" if n == SEEDED_VISIT else f"L{n % 3}",
                             T0 + n * 10 * SECOND)) for n in numbers]


def released_by(newest: int) -> set[int]:
    """The visits the watermark (newest event time - the allowed lateness) has passed."""
    watermark = T0 + newest * 10 * SECOND - FLINK_LATENESS_MS - 1
    return {n for n in range(newest + 1) if T0 + n * 10 * SECOND <= watermark}


def drop_file(directory: Path, name: str, lines: list[str]) -> None:
    hidden = directory / f".{name}.tmp"  # written beside and renamed in: the monitor never sees half a file
    hidden.write_text("\n".join(lines) + "\n", encoding="utf-8")
    hidden.rename(directory / name)


def test_flink_job_switches_a_tenant_through_every_stage_with_activities_in_flight(flink, legacy, tmp_path, capsys):
    new = f"sqlite:///{tmp_path / 'new.db'}"
    for uri in (legacy, new):
        assert cli.main(["store", "init", uri]) == 0
    set_stage(new, "bank", "passive")
    with open_store(legacy) as store:  # a history only MySQL has (see the Beam test)
        past = [Activity("acme-past", "acme", "LD", "visit_web_page", T0 - DAY, {"url": "https://acme.example/"})]
        store.write(past)
        store.index_activities(past)
    watched = tmp_path / "incoming"
    watched.mkdir()
    out = tmp_path / "out"
    config = RunConfig(rules_dir=str(rules_folder(tmp_path)), template_dirs=(), events=str(watched),
                       subscription=None, store_uri=new, out_dir=out, allowed_lateness_ms=FLINK_LATENESS_MS,
                       dedup_span_ms=DAY, duration_s=None, beam_args=(), mode="tenants", legacy_store_uri=legacy,
                       tenant_refresh_s=1.0)
    options = flink.FlinkOptions(watch=True, monitor_interval_s=0.5, flush_after_ms=200, idle_release_s=1.0)

    # File k holds visits 20k..20k+19; once it is read, the visits the watermark has passed
    # are written under the stage then in force, and the newest ones wait for the next file.
    stages = ["legacy", "passive", "active", "deactivated"]
    batches: dict[str, list[str]] = {stage: [] for stage in STAGES}
    bank_ids: list[str] = []
    done: set[int] = set()
    job = None
    try:
        for k, stage in enumerate(stages):
            if k:
                set_stage(new, "acme", stage)
                time.sleep(2.5)  # longer than the registry refresh (1 s): the job's view is new
            numbers = range(k * PER_FILE, (k + 1) * PER_FILE)
            drop_file(watched, f"part-{k}.jsonl", visit_lines(numbers))
            if job is None:
                job = flink.start_flink(config, options)
            now_released = released_by(numbers[-1]) - done
            assert set(numbers) - released_by(numbers[-1]), "visits wait in the job when the stage changes next"
            ids = [f"v-{n:03d}" for n in sorted(now_released)]
            target = legacy if stage in ("legacy", "deactivated") else new
            wait_for(lambda: set(i for i in ids if visit_number_tenant(int(i[2:])) == "acme")
                     <= set(stored_ids(target, "acme")), f"the visits released under {stage}")
            batches[stage] += [f"v-{n:03d}" for n in sorted(now_released) if visit_number_tenant(n) == "acme"]
            bank_ids += [f"v-{n:03d}" for n in sorted(now_released) if visit_number_tenant(n) == "bank"]
            done |= now_released
        # Draining ends event time: the visits still waiting are released, deactivated.
        job.stop_with_savepoint(str(tmp_path / "savepoints"), drain=True)
        job = None
    finally:
        if job is not None:
            job.cancel()
    rest = set(range(FILES * PER_FILE)) - done
    batches["deactivated"] += [f"v-{n:03d}" for n in sorted(rest) if visit_number_tenant(n) == "acme"]
    bank_ids += [f"v-{n:03d}" for n in sorted(rest) if visit_number_tenant(n) == "bank"]
    assert all(batches[stage] for stage in stages)

    # The job's writers write their metrics files within a second of a change.
    wait_for(lambda: sum(stage_counts(out)["acme"].values()) == 60, "the metrics files", 10)
    report = check_rollout(legacy, new, out, batches, bank_ids, capsys)
    assert {d["lead_id"] for d in report["first_differences"]} == {"LD"}
    assert report["differences_by_kind"]

"""The embedded SQLite store: under several processes (what a multi-process DirectRunner
run does when all its workers open the same new store file at once), a write waiting
for another writer's lock, and its index where the rows behind an entry are gone."""
from __future__ import annotations

import logging
import multiprocessing
import sqlite3
import threading

import pytest

from conftest import T0
from sqlite_openers import open_each

from orion.activities import Activity
from orion.store import open_store
import orion.store.sqlite as sqlite_store
from orion.store.base import StoreError, activity_day

WORKERS = 6
ROUNDS = 30


def test_workers_opening_a_new_store_at_the_same_moment_all_succeed(tmp_path):
    # Switching a new file to WAL takes an exclusive lock that SQLite's busy timeout does
    # not wait for: without a retry, some of these opens fail with "database is locked".
    paths = [str(tmp_path / f"store-{n}.db") for n in range(ROUNDS)]
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(WORKERS)
    results = context.Queue()
    workers = [context.Process(target=open_each, args=(paths, barrier, results)) for _ in range(WORKERS)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in range(WORKERS * ROUNDS)]
    for worker in workers:
        worker.join(timeout=60)
    failures = [outcome for outcome in outcomes if outcome != "ok"]
    assert not failures, f"{len(failures)} of {len(outcomes)} opens failed, first: {failures[0]}"


def test_reindexing_a_day_whose_rows_are_gone_drops_its_entry(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'activities.db'}")
    store.init()
    kept = Activity("kept", "acme", "7", "open_email", T0, {"email": "welcome"})
    gone = Activity("gone", "acme", "7", "visit_web_page", T0, {"url": "/a"})
    store.write([kept, gone])
    assert store.index_activities([kept, gone]) == 2
    with sqlite3.connect(store.path) as connection:  # removed behind the store's back
        connection.execute("DELETE FROM activities WHERE event_id = 'gone'")
    assert store.index_activities([kept, gone]) == 1
    assert store.read_index("acme", "7") == {("open_email", activity_day(T0)): (1, T0)}
    store.close()


def _locked(path):
    """A connection of another program holding the file's write lock."""
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)  # released from a timer
    holder.execute("BEGIN IMMEDIATE")
    return holder


def test_a_write_that_waits_for_another_writers_lock_says_so_then_goes_through(tmp_path, monkeypatch, caplog):
    # The module's own constants, shortened so the real lock is waited for briefly.
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_S", 0.2)
    path = tmp_path / "activities.db"
    store = open_store(f"sqlite:///{path}")
    store.init()
    holder = _locked(path)
    committed = threading.Event()

    def release():
        holder.execute("COMMIT")
        committed.set()

    released = threading.Timer(1.5, release)
    released.start()
    with caplog.at_level(logging.WARNING, logger="orion.store.sqlite"):
        stage, changed = store.change_tenant_stage("acme", "passive", 1)
    assert changed and committed.is_set(), "it waited for the lock rather than writing through it"
    released.join()
    assert [found.stage for found in store.read_tenant_stages()] == ["passive"]
    said = [record.getMessage() for record in caplog.records]
    assert any("locked by another writer" in line and str(path) in line and "waiting for it" in line
               for line in said), said
    assert any("written again" in line for line in said), said
    holder.close()
    store.close()


def test_a_write_whose_lock_never_comes_fails_with_the_store_named(tmp_path, monkeypatch):
    # The module's own constants, shortened: the real lock is held throughout.
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_S", 0.1)
    monkeypatch.setattr(sqlite_store, "MAX_BUSY_WAIT_S", 1.0)
    path = tmp_path / "activities.db"
    store = open_store(f"sqlite:///{path}")
    store.init()
    holder = _locked(path)
    with pytest.raises(StoreError) as refused:
        store.change_tenant_stage("acme", "passive", 1)
    assert str(path) in str(refused.value) and "locked" in str(refused.value)
    holder.execute("ROLLBACK")
    holder.close()
    assert store.read_tenant_stages() == [], "nothing written"
    store.close()

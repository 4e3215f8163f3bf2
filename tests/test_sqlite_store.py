"""The embedded SQLite store: under several processes (what a multi-process DirectRunner
run does when all its workers open the same new store file at once), and its index
where the rows behind an entry are gone."""
from __future__ import annotations

import multiprocessing
import sqlite3

from conftest import T0
from sqlite_openers import open_each

from orion.activities import Activity
from orion.store import open_store
from orion.store.base import activity_day

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

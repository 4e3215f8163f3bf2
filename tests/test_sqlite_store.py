"""The embedded SQLite store under several processes: what a multi-process DirectRunner
run does when all its workers open the same new store file at once."""
from __future__ import annotations

import multiprocessing

from sqlite_openers import open_each

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

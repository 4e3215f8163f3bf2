"""A worker process for tests/test_sqlite_store.py: opens and initialises each of the
given new SQLite stores at the same moment as the other workers (a barrier per store),
as the processes of a multi-process Beam run do. Its own module, so `spawn` can import it."""
from __future__ import annotations


def open_each(paths, barrier, results) -> None:
    from orion.store import open_store

    for path in paths:
        barrier.wait(timeout=60)
        try:
            store = open_store(f"sqlite:///{path}")
            store.init()
            store.close()
            results.put("ok")
        except Exception as err:  # noqa: BLE001 - reported to the test, which fails on it
            results.put(f"{type(err).__name__}: {err}")

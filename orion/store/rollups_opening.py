"""Opening the roll-up store a URI names, and where a run's roll-ups go. Kept apart from
the interface (orion.store.rollups_base), which every backend imports, so that no
backend depends on the others or on this chooser (as orion.store.opening is for the
activity store).

    python -c "from orion.store.rollups_opening import open_rollup_store; print(open_rollup_store('sqlite:///tmp/a.db'))"
"""
from __future__ import annotations

from urllib.parse import urlsplit

from orion.store.base import StoreError
from orion.store.rollups_base import ROLLUP_URI_FORMS, RollupStore


def open_rollup_store(uri: str) -> RollupStore:
    """The roll-up store of the activity store a URI names; StoreError for anything else.
    A migrating store's (`migrating://...`) is its new store's, where a run over it writes
    its roll-ups (rollup_store_uri), so a query names the same URI as the run."""
    if not isinstance(uri, str) or "://" not in uri:
        raise StoreError(f"bad store URI {uri!r}; use one of: {'; '.join(ROLLUP_URI_FORMS)}")
    scheme = urlsplit(uri).scheme
    if scheme == "migrating":
        new = rollup_store_uri(uri)
        if new is None:
            raise StoreError(f"the new store of {uri!r} keeps no roll-ups; use one of: "
                             f"{'; '.join(ROLLUP_URI_FORMS)}")
        return open_rollup_store(new)
    if scheme == "sqlite":
        from orion.store.rollups_sqlite import SqliteRollupStore

        return SqliteRollupStore(uri)
    if scheme == "mysql":
        from orion.store.rollups_mysql import MysqlRollupStore

        return MysqlRollupStore(uri)
    if scheme == "bigtable":
        from orion.store.rollups_bigtable import BigtableRollupStore

        return BigtableRollupStore(uri)
    raise StoreError(f"no roll-up store for URI scheme {scheme!r} in {uri!r}; use one of: "
                     f"{'; '.join(ROLLUP_URI_FORMS)}")


ROLLUP_SCHEMES = ("sqlite", "mysql", "bigtable")


def rollup_store_uri(store_uri: str) -> str | None:
    """Where a run's roll-ups go: its store's URI; for a migrating store
    (`migrating://...`), its new store's, the one the run moves to. None for a store with
    no roll-up tables (hbase://): such a run keeps no roll-ups."""
    parts = urlsplit(store_uri)
    if parts.scheme == "migrating":
        from urllib.parse import parse_qs

        found = parse_qs(parts.query).get("new")
        if not found:
            raise StoreError(f"bad migrating store URI {store_uri!r}: it names no new store")
        return rollup_store_uri(found[0])
    return store_uri if parts.scheme in ROLLUP_SCHEMES else None

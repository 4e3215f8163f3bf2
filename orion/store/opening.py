"""Opening the store a URI names. Kept apart from the interface (orion.store.base), which
every backend imports, so that no backend depends on the others or on this chooser.

    python -c "from orion.store.opening import open_store; print(open_store('sqlite:///tmp/a.db'))"
"""
from __future__ import annotations

from urllib.parse import urlsplit

from orion.store.base import ActivityStore, StoreError

URI_FORMS = (
    "sqlite:///relative/path.db or sqlite:////absolute/path.db",
    "bigtable://PROJECT/INSTANCE/TABLE",
    "hbase://HOST:PORT/TABLE",
    "mysql://USER:PASSWORD@HOST:PORT/DATABASE",
)


def open_store(uri: str) -> ActivityStore:
    """The store a URI names; StoreError, naming the accepted forms, for anything else."""
    if not isinstance(uri, str) or "://" not in uri:
        raise StoreError(f"bad store URI {uri!r}; use one of: {'; '.join(URI_FORMS)}")
    scheme = urlsplit(uri).scheme
    if scheme == "sqlite":
        from orion.store.sqlite import SqliteStore

        return SqliteStore(uri)
    if scheme == "bigtable":
        from orion.store.bigtable import BigtableStore

        return BigtableStore(uri)
    if scheme == "hbase":
        from orion.store.hbase import HBaseStore

        return HBaseStore(uri)
    if scheme == "mysql":
        from orion.store.mysql import MysqlStore

        return MysqlStore(uri)
    if scheme == "migrating":
        from orion.store.migrating import MigratingStore

        # The migrating store opens its two stores with this function, handed to it.
        return MigratingStore(uri, open_store)
    raise StoreError(f"unsupported store URI scheme {scheme!r} in {uri!r}; use one of: {'; '.join(URI_FORMS)}")


def open_existing_store(uri: str) -> ActivityStore:
    """The store a URI names, for a command that reads it (or changes what is in it): a
    SQLite store must be there already (StoreError otherwise), so a mistyped path is said
    rather than made, empty, with its folders, and read as if it held nothing."""
    refuse_missing_sqlite(uri)
    return open_store(uri)


def refuse_missing_sqlite(uri: str) -> None:
    """StoreError when `uri` names a SQLite store that is not there (other stores: none)."""
    if isinstance(uri, str) and urlsplit(uri).scheme == "sqlite":
        from orion.store.sqlite import sqlite_path

        path = sqlite_path(uri)
        if not path.exists():
            raise StoreError(f"there is no SQLite store at {path}; give the store the graph writes (orion run "
                             f"--store), or make one with: orion store init {uri}")

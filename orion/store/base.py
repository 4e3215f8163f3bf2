"""The activity store interface: write activities idempotently, read a lead's history
newest first. Backends are chosen by URI scheme; each backend module registers itself.

    python -c "from orion.store import open_store; print(open_store('sqlite:///tmp/a.db'))"
"""
from __future__ import annotations

import abc
from typing import Iterable, Sequence
from urllib.parse import urlsplit

from orion.activities import Activity


class StoreError(RuntimeError):
    """A store that cannot be opened or written; the message says what to do."""


class ActivityStore(abc.ABC):
    """One lead history store. Writing the same activity twice leaves one copy."""

    uri: str

    @abc.abstractmethod
    def init(self) -> None:
        """Create tables and indexes; safe to run on an initialized store."""

    @abc.abstractmethod
    def write(self, activities: Sequence[Activity]) -> int:
        """Write (or rewrite) activities; returns how many were written."""

    @abc.abstractmethod
    def history(
        self,
        tenant: str,
        lead_id: str,
        *,
        since: int | None = None,
        until: int | None = None,
        types: Iterable[str] | None = None,
        limit: int | None = None,
    ) -> list[Activity]:
        """A lead's activities, newest first (ties by event id, descending)."""

    @abc.abstractmethod
    def count(self) -> int:
        """How many activities the store holds."""

    def close(self) -> None:
        """Release connections."""

    def __enter__(self) -> "ActivityStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


def open_store(uri: str) -> ActivityStore:
    """The store a URI names: sqlite:///PATH."""
    scheme = urlsplit(uri).scheme
    if scheme == "sqlite":
        from orion.store.sqlite import SqliteStore

        return SqliteStore(uri)
    raise StoreError(f"unsupported store URI {uri!r}; use sqlite:///PATH")

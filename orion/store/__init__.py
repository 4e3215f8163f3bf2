"""Activity stores behind one interface, chosen by URI:

    sqlite:///PATH                 the embedded default

    python -c "from orion.store import open_store; s = open_store('sqlite:///tmp/a.db'); s.init(); print(s)"
"""
from orion.store.base import ActivityStore, StoreError, open_store

__all__ = ["ActivityStore", "StoreError", "open_store"]

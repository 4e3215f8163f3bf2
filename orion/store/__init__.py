"""Activity stores behind one interface, chosen by URI:

    sqlite:///PATH                         the embedded default
    bigtable://PROJECT/INSTANCE/TABLE      Cloud Bigtable or its emulator (BIGTABLE_EMULATOR_HOST)
    mysql://USER:PASSWORD@HOST:PORT/DB     the legacy MySQL / MariaDB store

    python -c "from orion.store import open_store; s = open_store('sqlite:///tmp/a.db'); s.init(); print(s)"
"""
from orion.store.base import (
    ActivityStore,
    StoreError,
    StoredProfile,
    StoreWriteError,
    WriteFailure,
    WriteResult,
)
from orion.store.opening import URI_FORMS, open_store

__all__ = ["ActivityStore", "StoreError", "StoredProfile", "StoreWriteError", "URI_FORMS", "WriteFailure",
           "WriteResult", "open_store"]

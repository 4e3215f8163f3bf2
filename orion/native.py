"""Importing the C extensions that take the GIL through `PyGILState_Ensure` as they load
(RE2's binding, `re2`, and Apache DataSketches', `datasketches`), safely from any thread.

PyFlink's thread mode runs Python inside the TaskManager's JVM, each operator on a JVM
thread with a Python thread state of its own (pemja). `PyGILState_Ensure` looks for the
thread state Python itself noted for the OS thread, which on such a thread is not the one
holding the GIL: the extension's first import waits for the GIL its own thread holds,
every other operator waits on that import, and the job hangs before its first event (its
threads stuck in `PyInit__re2`, `take_gil`). `import_extension` does the first import on
a thread Python started, whose state is where `PyGILState_Ensure` looks; once loaded, the
module serves every thread (what Orion calls in them never takes the GIL that way).

    python -c "from orion.native import import_extension; print(import_extension('re2'))"
"""
from __future__ import annotations

import importlib
import sys
import threading
from types import ModuleType

_lock = threading.Lock()


def import_extension(name: str) -> ModuleType:
    """The module `name`, imported on a thread Python started when it is not loaded yet
    (errors as `import` raises them)."""
    found = sys.modules.get(name)
    if found is not None:
        return found
    with _lock:
        outcome: dict = {}

        def load() -> None:
            try:
                outcome["module"] = importlib.import_module(name)
            except BaseException as error:  # re-raised in the caller's thread
                outcome["error"] = error

        loader = threading.Thread(target=load, name=f"orion-import-{name}", daemon=True)
        loader.start()
        loader.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["module"]

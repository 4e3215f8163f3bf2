"""orion.native: the C extensions that take the GIL through PyGILState_Ensure as they load
(re2, datasketches) are first imported on a thread Python started, so an operator thread
of PyFlink's thread mode, whose Python thread state is the host's own, never waits on
itself for the GIL (a job that hung before its first event)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from orion.native import import_extension


def _write_module(tmp_path, name: str, body: str) -> None:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body), encoding="utf-8")


def test_the_first_import_runs_on_a_thread_python_started(tmp_path, monkeypatch):
    _write_module(tmp_path, "orion_probe_ext", """
        import threading
        LOADED_ON = threading.current_thread().name
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "orion_probe_ext", raising=False)
    module = import_extension("orion_probe_ext")
    assert module.LOADED_ON == "orion-import-orion_probe_ext"
    assert sys.modules["orion_probe_ext"] is module
    assert import_extension("orion_probe_ext") is module  # loaded once, then served as it is


def test_an_import_error_reaches_the_caller(tmp_path, monkeypatch):
    _write_module(tmp_path, "orion_probe_broken", """
        raise RuntimeError("the extension does not load here")
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RuntimeError, match="does not load here"):
        import_extension("orion_probe_broken")
    with pytest.raises(ModuleNotFoundError):
        import_extension("orion_no_such_extension")


def test_orion_loads_re2_and_datasketches_off_the_importing_thread():
    """In a fresh interpreter, whatever imports the rules and the roll-ups first (and
    makes the first sketch: the roll-ups load DataSketches then): the two extensions'
    packages are executed on their loader threads, never on the caller's."""
    probe = textwrap.dedent("""
        import importlib.abc, sys, threading

        seen = {}

        class Watch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name in ("re2", "datasketches", "_re2", "_datasketches", "re2._re2"):
                    seen.setdefault(name, threading.current_thread().name)
                return None

        sys.meta_path.insert(0, Watch())
        import orion.rules.regex, orion.analytics.rollup
        assert "datasketches" not in seen, seen  # not yet: on first use
        assert orion.rules.regex.compile_search("^a+$")("aaa")
        aggregate = orion.analytics.rollup.Aggregate()
        aggregate.add("L1")
        assert aggregate.estimate() == 1.0
        print(sorted(seen.items()))
        assert seen.get("re2") == "orion-import-re2", seen
        assert seen.get("datasketches") == "orion-import-datasketches", seen
        assert all(thread.startswith("orion-import-") for thread in seen.values()), seen
    """)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]

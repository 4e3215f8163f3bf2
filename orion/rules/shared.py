"""Compiled rules shared by the Beam DoFns and the Flink functions of one worker process.

Parsing, sequencing and flows each need the rules; compiling 1,000 campaigns takes a
noticeable part of a second, and every DoFn instance would otherwise compile its own copy.
The rules are read-only once compiled, so one copy per process per (rules directory,
template directories, the files' sizes and modification times) serves them all; a changed
rule file gives a fresh compile on the next setup.

    python -c "from orion.rules.shared import shared_rules as s; print(s('orion/samples/rules', ()).summary())"
"""
from __future__ import annotations

import threading
from pathlib import Path

_lock = threading.Lock()
_compiled: dict = {}


def _signature(directories) -> tuple:
    found = []
    for directory in directories:
        root = Path(directory)
        if root.is_dir():
            for path in sorted(root.rglob("*")):
                if path.is_file():
                    stat = path.stat()
                    found.append((str(path), stat.st_size, stat.st_mtime_ns))
    return tuple(found)


def shared_rules(rules_dir: str, template_dirs: tuple[str, ...]):
    """The rules a job serves (`load_serving_rules`: every tenant whose rules load),
    compiled once per process while the files stay the same."""
    return serving_rules(rules_dir, template_dirs)[0]


def serving_rules(rules_dir: str, template_dirs: tuple[str, ...]):
    """`load_serving_rules`' answer, (rules, {refused tenant: its errors}), compiled
    once per process while the files stay the same: `orion run` checks the rules with it
    before it builds the graph, and a graph on the in-process runner then reuses them
    instead of compiling them again. RuleErrors, as load_serving_rules raises it, is not
    kept."""
    from orion.rules import load_serving_rules

    key = (str(rules_dir), tuple(str(t) for t in template_dirs), _signature((rules_dir, *template_dirs)))
    with _lock:
        found = _compiled.get(key)
        if found is None:
            found = load_serving_rules(rules_dir, template_dirs)
            _compiled.clear()  # only the current version of the files is worth keeping
            _compiled[key] = found
        return found

"""`make bench-flink`'s account of where Orion's run took its CPU: each thread of the
JVM is read from /proc and counted in the group its name says (the lead step's task
thread, the roll-up stages', the JIT compilers' ...), and the report says so.

    .venv/bin/python -m pytest -q tests/test_flink_bench.py
"""
from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time

from benchmarks.bench_flink import THREAD_GROUPS, Figure, ThreadMeter, _threads_line

PR_SET_NAME = 15


def _busy_thread(name: str, cpu_seconds: float) -> threading.Thread:
    """A thread that names itself `name` to the kernel (as the JVM names a task thread)
    and uses `cpu_seconds` of CPU."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

    def run():
        libc.prctl(PR_SET_NAME, name.encode("ascii")[:15], 0, 0, 0)
        until = time.thread_time() + cpu_seconds
        while time.thread_time() < until:
            pass

    return threading.Thread(target=run)


def test_a_threads_cpu_counts_in_the_group_its_name_says():
    import os

    worker = _busy_thread("LeadStep -> (Ma", 0.3)
    meter = ThreadMeter(os.getpid()).start()
    worker.start()
    # Read while the thread lives: one that ends between two reads loses its last stretch.
    while worker.is_alive():
        time.sleep(0.05)
        meter.last.update(meter._read())
    worker.join()
    groups = meter.stop()
    assert set(groups) == {label for label, _ in THREAD_GROUPS} | {"the rest"}
    assert groups["the lead step"] > 0.0, groups
    assert groups["the roll-up stages"] == groups["Java's JIT compilers"] == 0.0, groups


def test_a_jit_compiler_thread_counts_as_one_whatever_its_tier():
    import os

    worker = _busy_thread("C2 CompilerThre", 0.2)
    meter = ThreadMeter(os.getpid()).start()
    worker.start()
    while worker.is_alive():
        time.sleep(0.05)
        meter.last.update(meter._read())
    worker.join()
    groups = meter.stop()
    assert groups["Java's JIT compilers"] > 0.0 and groups["the lead step"] == 0.0, groups


def test_the_report_names_every_group_and_the_shared_interpreter():
    groups = {label: float(number) for number, (label, _) in enumerate(THREAD_GROUPS, start=1)}
    groups["the rest"] = 0.5
    line = _threads_line(Figure("defaults", 25_000, 12.0, 2.0, threads=groups))
    assert "the lead step 1.0" in line and "the roll-up stages 2.0" in line and "the rest 0.5" in line
    assert f"({sum(groups.values()):.1f} in all" in line and "one at a time" in line

"""`make bench-flink`'s account of where Orion's run took its CPU: each thread of the
JVM is read from /proc and counted in the group its name says (the lead step's task
thread, the roll-up stages', the JIT compilers' ...), and the report says so.

    .venv/bin/python -m pytest -q tests/test_flink_bench.py
"""
from __future__ import annotations

import subprocess
import sys

from benchmarks.bench_flink import THREAD_GROUPS, Figure, ThreadMeter, _threads_line

# A process with a thread that names itself to the kernel (as the JVM names a task
# thread), uses CPU when told to, says so, and lives on until its input closes.
NAMED_THREAD = r"""
import ctypes, ctypes.util, sys, threading, time
burned = threading.Event()
def run(name, seconds):
    ctypes.CDLL(ctypes.util.find_library("c")).prctl(15, name.encode("ascii")[:15], 0, 0, 0)
    sys.stdin.readline()
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        pass
    burned.set()
    time.sleep(60)
threading.Thread(target=run, args=(sys.argv[1], float(sys.argv[2])), daemon=True).start()
burned.wait()
print("burned", flush=True)
sys.stdin.readline()
"""


def _groups_of_a_thread_named(name: str, cpu_seconds: float) -> dict[str, float]:
    child = subprocess.Popen([sys.executable, "-c", NAMED_THREAD, name, str(cpu_seconds)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        meter = ThreadMeter(child.pid).start()
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "burned"
        return meter.stop()  # the thread still lives: all it used is read
    finally:
        child.kill()
        child.wait()


def test_a_threads_cpu_counts_in_the_group_its_name_says():
    groups = _groups_of_a_thread_named("LeadStep -> (Ma", 0.3)
    assert set(groups) == {label for label, _ in THREAD_GROUPS} | {"the rest"}
    assert groups["the lead step"] >= 0.2, groups
    assert groups["the roll-up stages"] == groups["Java's JIT compilers"] == 0.0, groups


def test_a_jit_compiler_thread_counts_as_one_whatever_its_tier():
    groups = _groups_of_a_thread_named("C2 CompilerThre", 0.3)
    assert groups["Java's JIT compilers"] >= 0.2 and groups["the lead step"] == 0.0, groups


def test_the_report_names_every_group_and_the_shared_interpreter():
    groups = {label: float(number) for number, (label, _) in enumerate(THREAD_GROUPS, start=1)}
    groups["the rest"] = 0.5
    line = _threads_line(Figure("defaults", 25_000, 12.0, 2.0, threads=groups))
    assert "the lead step 1.0" in line and "the roll-up stages 2.0" in line and "the rest 0.5" in line
    assert f"({sum(groups.values()):.1f} in all" in line and "one at a time" in line

"""Flink benchmark: events/s of Orion's PyFlink job on the local mini-cluster and on a
standalone cluster, each as a ratio to the same place running a bare KeyedProcessFunction
over the same events in the same run, next to the Beam DirectRunner running the same
graph on the same events; what each Flink setting that might matter (Python execution
mode, bundle size, parallelism, Python state cache) gives, and the job without its
analytics roll-ups; what a second TaskManager gives; and where Orion's run took its CPU,
thread by thread of the mini-cluster's JVM.

Data: `benchmarks.synthetic` events (4 files) and 1,000 active trigger campaigns, under
benchmarks/data/flink/. Orion's figure is the whole job over files: parse and validate,
key by lead, the one step per lead (order, dedup, evaluate; each lead seeded from and
written back to its profile in the store), the SQLite store and index, the analytics
roll-ups, outcome and dead-letter files (no outbox: campaign flows off, on both
engines). The ceiling reads
the same files, parses each line's JSON, keys it by (tenant, lead) and reads and writes
one value state per element. Times are wall clock from building the job to its end, so both pay
the same mini-cluster and Python-worker start-up (measured on its own, too). The JVM
gateway is started before anything is timed.

The standalone cluster is `orion.flink.cluster.LocalCluster` (what `orion flink cluster
start` runs), here with two TaskManagers of one slot each, its state under
benchmarks/data/flink-cluster/: a job of parallelism 1 runs on one TaskManager, one of
parallelism 2 on both. Jobs on a cluster run their Python in process mode
(`orion.runners.flink.execution_mode`), the ceiling's too. While Orion runs there, the
CPU time of every process on the machine (/proc/stat) and of the benchmark's own (this
process, the cluster's daemons and their Python workers) is read, so the report says
what else used the cores. The cluster is stopped at the end.

Writes its section of BENCHMARKS.md (`<!-- bench:flink:... -->`).

    make bench-flink
    make bench-flink ARGS="--events 10000 --quick --no-write"    # the default settings only
    make bench-flink ARGS="--events 10000 --quick --cluster --no-write"   # ... and the cluster
"""
from __future__ import annotations

import argparse
import io
import math
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple

from benchmarks.report import REPO_ROOT, measured_line, write_section
from benchmarks.synthetic import DEFAULT_SEED, event_lines, write_rules
from orion.runners.direct import run as run_beam
from orion.sequencing import DEFAULT_ALLOWED_LATENESS_MS, DEFAULT_DEDUP_SPAN_MS
from orion.settings import FlinkOptions, RunConfig

DATA_DIR = REPO_ROOT / "benchmarks" / "data" / "flink"
DEFAULT_EVENTS = 25_000
DEFAULT_CAMPAIGNS = 1_000
FILES = 4
START_UP_EVENTS = 100  # the ceiling over this few events: what start-up alone costs
DEFAULT_REPETITIONS = 2  # runs of each job per setting, in turn; the best counts (the machine is shared)
# The standalone cluster's state directory: beside DATA_DIR, which each run replaces.
CLUSTER_DIR = REPO_ROOT / "benchmarks" / "data" / "flink-cluster"
CLUSTER_TASKMANAGERS = 2
CLUSTER_SLOTS = 1  # per TaskManager: parallelism N takes N TaskManagers
# The targets of the issue, each against a figure of the same run.
TARGET_VS_CEILING = 1.0  # Orion events/s / the bare keyed job's, same place and mode
TARGET_VS_BEAM = 0.8  # Orion on Flink (defaults) / the Beam DirectRunner
TARGET_SCALING = 1.5  # Orion on two TaskManagers / on one


class Setting(NamedTuple):
    label: str
    parallelism: int = 1
    execution_mode: str = "thread"
    bundle_size: int | None = None
    state_cache_size: int | None = None
    flink_master: str | None = None  # a standalone cluster's REST address
    rollups: bool = True  # False: the job keeps no analytics roll-ups (--no-rollups)

    def options(self, **more):
        return FlinkOptions(parallelism=self.parallelism, execution_mode=self.execution_mode,
                            bundle_size=self.bundle_size, state_cache_size=self.state_cache_size,
                            flink_master=self.flink_master, **more)


DEFAULT_SETTING = Setting("defaults: thread mode, bundle 100,000, parallelism 1, state cache 20,000")
VARIANTS = (
    Setting("process mode (python.execution-mode=process)", execution_mode="process"),
    Setting("bundle 1,000 (python.fn-execution.bundle.size)", bundle_size=1_000),
    Setting("parallelism 2", parallelism=2),
    Setting("state cache 100,000 keys (python.state.cache-size)", state_cache_size=100_000),
    Setting("defaults without the analytics roll-ups (--no-rollups)", rollups=False),
)


def cluster_settings(address: str) -> tuple[Setting, Setting]:
    """One TaskManager against two, on the standalone cluster at `address`."""
    return (Setting("standalone cluster, 1 TaskManager (parallelism 1, process mode)", 1, "process",
                    flink_master=address),
            Setting("standalone cluster, 2 TaskManagers (parallelism 2, process mode)", 2, "process",
                    flink_master=address))


class CpuUse(NamedTuple):
    """CPU seconds over a stretch of wall time: of every process on the machine, and of
    the benchmark's own (this process and its children, the cluster's daemons and their
    Python workers)."""

    wall: float
    machine: float
    ours: float

    @property
    def others(self) -> float:
        return max(0.0, self.machine - self.ours)


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def machine_cpu_seconds() -> float:
    """CPU seconds every process on the machine has used since boot (/proc/stat)."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def _children() -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            found.setdefault(parent, []).append(int(entry.name))
    return found


def tree_cpu_seconds(roots: list[int]) -> dict[int, float]:
    """Each live process of the trees under `roots`: its CPU seconds, its reaped
    children's included (a Python worker that has ended counts in its TaskManager)."""
    children = _children()
    seconds: dict[int, float] = {}
    stack = list(roots)
    while stack:
        pid = stack.pop()
        if pid in seconds:
            continue
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # utime, stime, cutime, cstime: fields 14 to 17 of proc(5), 12 to 15 after the name
        seconds[pid] = sum(int(value) for value in fields[11:15]) / CLOCK_TICKS
        stack.extend(children.get(pid, ()))
    return seconds


class CpuMeter:
    """Reads CpuUse between start() and stop(); `roots`: the processes whose trees are
    the benchmark's own."""

    def __init__(self, roots: list[int]):
        self.roots = roots

    def start(self) -> "CpuMeter":
        self.wall, self.machine, self.ours = time.perf_counter(), machine_cpu_seconds(), tree_cpu_seconds(self.roots)
        return self

    def stop(self) -> CpuUse:
        wall, machine, ours = time.perf_counter(), machine_cpu_seconds(), tree_cpu_seconds(self.roots)
        # A process gone since start counts, whole, in its parent's reaped-children time.
        used = sum(ours.values()) - sum(self.ours.values())
        return CpuUse(wall - self.wall, machine - self.machine, used)


# What each thread of the mini-cluster's JVM is, by a part of its name (Linux keeps 15
# characters of it: a task thread is named after its chain of operators, a JIT compiler
# thread "C2 CompilerThre").
THREAD_GROUPS = (
    ("the lead step", ("LeadStep",)),
    ("the roll-up stages", ("RollupFacts", "GatherRollup", "RollUpMinutes", "RollUpHoursAnd")),
    ("the store, profile and file writers", ("WriteActivit", "WriteProfile", "WriteDeadLet", "Outcomes", "DeadLetters")),
    ("reading the files", ("ReadActivityFil", "Source:")),
    ("Java's JIT compilers", ("CompilerThre",)),
    ("garbage collection", ("GC Thread", "G1 Conc", "G1 Refine", "G1 Service")),
)
THREAD_SAMPLE_S = 0.25


def jvm_pid() -> int | None:
    """The JVM PyFlink started for this process (the gateway, which runs the mini-cluster)."""
    for pid in _children().get(os.getpid(), ()):
        try:
            with open(f"/proc/{pid}/comm", encoding="ascii", errors="replace") as comm:
                if comm.read().strip() == "java":
                    return pid
        except OSError:
            continue
    return None


class ThreadMeter:
    """CPU seconds of each thread of process `pid` between start() and stop(), by group
    (THREAD_GROUPS; the rest: Flink's own threads and the gateway serving the client's
    calls), read from /proc every THREAD_SAMPLE_S: a thread that ends between two reads
    loses what it used since the last."""

    def __init__(self, pid: int):
        self.pid = pid
        self.first: dict[str, tuple[str, int]] = {}
        self.last: dict[str, tuple[str, int]] = {}
        self.stopping = threading.Event()

    def _read(self) -> dict[str, tuple[str, int]]:
        found = {}
        for task in os.scandir(f"/proc/{self.pid}/task"):
            try:
                with open(f"{task.path}/comm", encoding="ascii", errors="replace") as comm:
                    name = comm.read().strip()
                with open(f"{task.path}/stat", encoding="ascii", errors="replace") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            found[task.name] = (name, int(fields[11]) + int(fields[12]))
        return found

    def _run(self) -> None:
        while not self.stopping.wait(THREAD_SAMPLE_S):
            self.last.update(self._read())

    def start(self) -> "ThreadMeter":
        self.first = self._read()
        self.last = dict(self.first)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> dict[str, float]:
        self.stopping.set()
        self.thread.join()
        self.last.update(self._read())
        groups = {label: 0.0 for label, _ in THREAD_GROUPS}
        groups["the rest"] = 0.0
        for task, (name, ticks) in self.last.items():
            used = (ticks - self.first.get(task, (name, 0))[1]) / CLOCK_TICKS
            label = next((label for label, parts in THREAD_GROUPS if any(part in name for part in parts)),
                         "the rest")
            groups[label] += used
        return groups


class Figure(NamedTuple):
    setting: str
    events: int
    orion_seconds: float | None
    ceiling_seconds: float | None
    note: str = ""
    cpu: CpuUse | None = None  # while Orion ran (the standalone cluster's figures)
    threads: dict[str, float] | None = None  # CPU seconds by JVM thread group while Orion ran (mini-cluster)

    def rate(self, seconds: float | None) -> float | None:
        return self.events / seconds if seconds else None

    @property
    def orion_rate(self) -> float | None:
        return self.rate(self.orion_seconds)

    @property
    def ratio(self) -> float | None:
        if not self.orion_seconds or not self.ceiling_seconds:
            return None
        return self.ceiling_seconds / self.orion_seconds


def _number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def prepare(workdir: Path, events: int, campaigns: int, seed: int) -> Path:
    if workdir.exists():
        shutil.rmtree(workdir)
    write_rules(workdir / "rules", campaigns, seed)
    write_events(workdir / "events", event_lines(events, seed))
    write_events(workdir / "start-up", event_lines(START_UP_EVENTS, seed))
    return workdir / "rules"


def write_events(folder: Path, lines: list[str]) -> None:
    folder.mkdir(parents=True)
    per_file = -(-len(lines) // FILES)
    for i in range(FILES):
        (folder / f"part-{i}.jsonl").write_text("\n".join(lines[i * per_file:(i + 1) * per_file]) + "\n",
                                                encoding="utf-8")


def config_for(workdir: Path, rules: Path, name: str) -> RunConfig:
    store = workdir / "store" / f"{name}-{time.monotonic_ns()}.db"
    return RunConfig(str(rules), (), str(workdir / "events" / "*.jsonl"), None, f"sqlite:///{store}",
                     workdir / f"out-{name}", DEFAULT_ALLOWED_LATENESS_MS, DEFAULT_DEDUP_SPAN_MS, None, ())


def time_flink_orion(workdir: Path, rules: Path, setting: Setting) -> tuple[float, dict]:
    from orion.runners.flink import run_flink

    started = time.perf_counter()
    config = config_for(workdir, rules, "flink")._replace(rollups=setting.rollups)
    flink_run = run_flink(config, options=setting.options(), out=io.StringIO())
    return time.perf_counter() - started, flink_run.counters


def time_flink_ceiling(events_dir: Path, setting: Setting) -> float:
    from pyflink.common import Types
    from pyflink.datastream.connectors.base import Sink
    from pyflink.java_gateway import get_gateway

    from orion.flink import functions as fn
    from orion.runners.flink import FlinkJob, create_environment, match_files

    started = time.perf_counter()
    env = create_environment(setting.options())
    files = env.from_collection(match_files(str(events_dir / "*.jsonl")),
                                type_info=Types.TUPLE([Types.STRING(), Types.STRING()]))
    discard = Sink(get_gateway().jvm.org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink())
    (files.rebalance()
     .flat_map(fn.ParseJsonKey(), output_type=fn.LEAD_KEY)
     .key_by(_lead_of_key, key_type=fn.LEAD_KEY)
     .process(fn.BareKeyedState(), output_type=Types.LONG())
     .sink_to(discard))
    # (Waiting on the job's result: on a cluster `execute` returns once the job is
    # submitted.)
    FlinkJob(env.execute_async("orion-ceiling"), None).wait()
    return time.perf_counter() - started


def _lead_of_key(key):
    return key[0], key[1]


def time_beam(workdir: Path, rules: Path) -> tuple[float, dict]:
    started = time.perf_counter()
    totals = run_beam(config_for(workdir, rules, "beam"), out=io.StringIO())
    return time.perf_counter() - started, totals


def measure(workdir: Path, rules: Path, events: int, setting: Setting, repetitions: int, cluster=None) -> Figure:
    """The ceiling, then Orion, with `setting`, `repetitions` times in turn, the best of
    each; on the standalone `cluster` (a LocalCluster), with the CPU use while Orion's
    best run ran and the TaskManagers its job took."""
    print(f"... {setting.label}", file=sys.stderr, flush=True)
    ceiling = orion = cpu = threads = None
    try:
        for _ in range(repetitions):
            ceiling = min(filter(None, (ceiling, time_flink_ceiling(workdir / "events", setting))))
            roots = [os.getpid()] + ([] if cluster is None else
                                     [pid for pids in cluster.daemon_pids().values() for pid in pids])
            meter = CpuMeter(roots).start()
            gateway = jvm_pid() if cluster is None else None
            by_thread = None if gateway is None else ThreadMeter(gateway).start()
            seconds, counters = time_flink_orion(workdir, rules, setting)
            used = meter.stop()
            groups = None if by_thread is None else by_thread.stop()
            if orion is None or seconds < orion:
                orion, cpu, threads = seconds, used, groups
    except Exception as error:  # a setting PyFlink cannot run is reported, not fatal
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return Figure(setting.label, events, None, None, f"failed: {first_line[:160]}")
    read = counters.get("events_read", 0)
    notes = [] if read == events else [f"read {read:,} of {events:,} events"]
    if cluster is not None:
        notes.append(f"ran on {_job_taskmanagers(cluster)} TaskManager(s)")
    return Figure(setting.label, events, orion, ceiling, "; ".join(notes), None if cluster is None else cpu, threads)


def _job_taskmanagers(cluster) -> int:
    """How many TaskManagers the cluster's newest job (Orion's, just run) took."""
    from orion.flink import cluster as rest

    newest = rest.jobs(cluster.rest_address)[0]
    return len(rest.job_taskmanagers(cluster.rest_address, newest["jid"]))


def measure_on_cluster(workdir: Path, rules: Path, events: int, repetitions: int) -> list[Figure]:
    """One TaskManager against two on a standalone cluster started for it, stopped after."""
    from orion.flink.cluster import ClusterError, LocalCluster

    print("... standalone cluster: starting", file=sys.stderr, flush=True)
    cluster = LocalCluster(CLUSTER_DIR)
    try:
        cluster.start(taskmanagers=CLUSTER_TASKMANAGERS, slots=CLUSTER_SLOTS)
        return [measure(workdir, rules, events, setting, repetitions, cluster)
                for setting in cluster_settings(cluster.rest_address)]
    except ClusterError as error:
        first_line = (str(error).strip().splitlines() or ["ClusterError"])[0]
        return [Figure(setting.label, events, None, None, f"failed: {first_line[:160]}")
                for setting in cluster_settings("-")]
    finally:
        cluster.stop()


def most_telling(figures: list[Figure]) -> Figure | None:
    """The variant that moves Orion's rate furthest from the defaults', either way."""
    default = figures[0].orion_rate
    variants = [f for f in figures[1:] if f.orion_rate]
    if not default or not variants:
        return None
    return max(variants, key=lambda f: abs(math.log(f.orion_rate / default)))


def _met(value: float | None, target: float) -> str:
    if value is None:
        return "not measured"
    return "**met**" if value >= target else "**not met**"


def render(figures: list[Figure], beam_seconds: float, start_up_seconds: float, events: int, campaigns: int,
           command: str, cluster_figures: list[Figure] = (), repetitions: int = 1) -> str:
    default = figures[0]
    beam_rate = events / beam_seconds
    lines = [
        "## Flink: the PyFlink job on the local mini-cluster and a standalone cluster",
        "",
        measured_line(command),
        "",
        f"{events:,} synthetic events in {FILES} JSONL files, {campaigns:,} active trigger campaigns. "
        "Orion: the whole Flink job (`orion.runners.flink`: parse, key by lead, the one step per lead "
        "(order, dedup, evaluate, lead profiles read and written), SQLite store and index, the analytics "
        "roll-ups, outcome and dead-letter files; campaign flows off). Ceiling: the same "
        "mini-cluster and settings reading the same files, parsing each line's JSON, keying by (tenant, "
        "lead) and reading and writing one value state per element in a bare KeyedProcessFunction "
        "(`BareKeyedState`). Wall clock from building the job to its end, start-up of the mini-cluster "
        "and the Python workers included on both sides; ratio = Orion events/s / ceiling events/s. "
        "Beam: the same graph and files on the DirectRunner (FnApiRunner, in-process), in the same run. "
        f"Each figure is the best of {repetitions} runs, the ceiling's and Orion's in turn. "
        f"Standalone cluster: `orion.flink.cluster.LocalCluster` with {CLUSTER_TASKMANAGERS} TaskManagers of "
        f"{CLUSTER_SLOTS} slot, the job submitted with --flink-master (orion's code and the flink-python jar "
        "shipped with it), its Python in process mode, as every job on a cluster; its ceiling the same "
        "bare job submitted to the same cluster with the same parallelism. The store is one SQLite file: "
        "with two TaskManagers their sinks write it in turn.",
        "",
        "| setting | Orion events/s | vs defaults | ceiling events/s | ratio to ceiling | note |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for figure in [*figures, *cluster_figures]:
        versus = (figure.orion_rate / default.orion_rate
                  if figure.orion_rate and default.orion_rate else None)
        lines.append(f"| {figure.setting} | {_number(figure.orion_rate)} | {_number(versus, 2)}x | "
                     f"{_number(figure.rate(figure.ceiling_seconds))} | {_number(figure.ratio, 2)} | "
                     f"{figure.note} |")
    lines += [
        f"| Beam DirectRunner, same graph and events | {beam_rate:,.0f} | | | | |",
        "",
    ]
    if default.orion_rate:
        lines.append(f"- Orion on Flink with the defaults: {default.orion_rate:,.0f} events/s, "
                     f"{_number(default.ratio, 2)} of the bare keyed-state job on the same mini-cluster, "
                     f"{default.orion_rate / beam_rate:.2f}x the Beam DirectRunner ({beam_rate:,.0f} events/s).")
    lines += _targets(figures, cluster_figures, beam_rate)
    if default.threads:
        lines.append(f"- {_threads_line(default)}")
    telling = most_telling(figures)
    if telling is not None:
        lines.append(f"- The setting that matters most: **{telling.setting}**, {telling.orion_rate:,.0f} events/s "
                     f"({telling.orion_rate / default.orion_rate:.2f}x the defaults); every setting's figure is "
                     "in the table.")
    failed = [f.setting for f in [*figures, *cluster_figures] if f.orion_seconds is None]
    if failed:
        lines.append(f"- Did not run: {', '.join(failed)} (see the note).")
    lines.append(f"- Start-up alone (the ceiling job over {START_UP_EVENTS} events, defaults): "
                 f"{start_up_seconds:.1f} s, inside every mini-cluster figure above.")
    return "\n".join(lines)


def _targets(figures: list[Figure], cluster_figures: list[Figure], beam_rate: float) -> list[str]:
    """The issue's targets, each with this run's figure and whether it is met."""
    default = figures[0]
    by_ceiling = "; ".join(f"{figure.setting}: {_number(figure.ratio, 3)} ({_met(figure.ratio, TARGET_VS_CEILING)})"
                           for figure in [*figures, *cluster_figures])
    versus_beam = default.orion_rate / beam_rate if default.orion_rate else None
    lines = [
        f"- Target, Orion at least {TARGET_VS_CEILING:.1f}x the bare keyed job in the same place and mode: "
        f"{by_ceiling}.",
        f"- Target, Orion on Flink (defaults) at least {TARGET_VS_BEAM:.1f}x the Beam DirectRunner: "
        f"{_number(versus_beam, 3)}x ({_met(versus_beam, TARGET_VS_BEAM)}).",
    ]
    if len(cluster_figures) == 2:
        one, two = cluster_figures
        scaling = two.orion_rate / one.orion_rate if one.orion_rate and two.orion_rate else None
        ceiling_scaling = (one.ceiling_seconds / two.ceiling_seconds
                           if one.ceiling_seconds and two.ceiling_seconds else None)
        lines.append(f"- Target, two TaskManagers at least {TARGET_SCALING:.1f}x one: {_number(scaling, 3)}x "
                     f"({_met(scaling, TARGET_SCALING)}); the bare keyed job: {_number(ceiling_scaling, 2)}x.")
        lines += [f"- {_cpu_line(figure)}" for figure in cluster_figures if figure.cpu is not None]
        lines.append(f"- Load average (1 min) when the report was written: {os.getloadavg()[0]:.1f} "
                     f"on {os.cpu_count()} cores.")
    return lines


def _threads_line(figure: Figure) -> str:
    """Where Orion's run took its CPU, by the JVM's threads."""
    groups = figure.threads
    total = sum(groups.values())
    parts = ", ".join(f"{label} {seconds:.1f}" for label, seconds in groups.items())
    return (f"CPU seconds by thread of the mini-cluster's JVM in Orion's run with the defaults "
            f"({figure.orion_seconds:.1f} s; read every {THREAD_SAMPLE_S:g} s): {parts} ({total:.1f} in all; "
            "a task thread's figure holds its Python functions and the Java around them). In thread mode "
            "every Python function of the job runs in the JVM's one embedded interpreter and holds its lock "
            "while it runs, so the Python parts of these figures run one at a time: their sum, not the "
            "largest, bounds the job's pace.")


def _cpu_line(figure: Figure) -> str:
    """What used the cores while Orion ran on the cluster."""
    cpu = figure.cpu
    cores = os.cpu_count() or 1
    return (f"Cores while Orion ran ({figure.setting}, {cpu.wall:.1f} s): {cpu.machine:.1f} CPU-seconds of the "
            f"{cores * cpu.wall:.1f} the {cores} cores had ({cpu.machine / (cores * cpu.wall):.0%} busy); the job's "
            f"own processes (this client, the JobManager, the TaskManagers and their Python workers) "
            f"{cpu.ours:.1f}, other processes on the machine {cpu.others:.1f} "
            f"({cpu.others / cpu.wall:.2f} cores on average).")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS)
    parser.add_argument("--campaigns", type=int, default=DEFAULT_CAMPAIGNS)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--quick", action="store_true", help="the default settings only")
    parser.add_argument("--cluster", action="store_true",
                        help="with --quick: the standalone cluster's figures too (a full run has them)")
    parser.add_argument("--repetitions", type=int, default=DEFAULT_REPETITIONS,
                        help="runs of each job per setting, the best kept (default: %(default)s)")
    parser.add_argument("--no-write", action="store_true", help="print the section, leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    rules = prepare(DATA_DIR, args.events, args.campaigns, args.seed)

    from orion.runners.flink import create_environment

    create_environment(DEFAULT_SETTING.options())  # the JVM gateway starts here, untimed
    print("... start-up", file=sys.stderr, flush=True)
    start_up_seconds = time_flink_ceiling(DATA_DIR / "start-up", DEFAULT_SETTING)
    print("... Beam DirectRunner", file=sys.stderr, flush=True)
    beam_seconds = min(time_beam(DATA_DIR, rules)[0] for _ in range(args.repetitions))
    settings = (DEFAULT_SETTING,) + (() if args.quick else VARIANTS)
    figures = [measure(DATA_DIR, rules, args.events, setting, args.repetitions) for setting in settings]
    cluster_figures = (measure_on_cluster(DATA_DIR, rules, args.events, args.repetitions)
                       if args.cluster or not args.quick else [])
    given = argv if argv is not None else sys.argv[1:]
    command = "make bench-flink" + (f' ARGS="{" ".join(given)}"' if given else "")
    body = render(figures, beam_seconds, start_up_seconds, args.events, args.campaigns, command, cluster_figures,
                  args.repetitions)
    print(body)
    if not args.no_write:
        write_section("flink", body)


if __name__ == "__main__":
    main()

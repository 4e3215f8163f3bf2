"""Flink benchmark: events/s of Orion's PyFlink job on the local mini-cluster, as a ratio to
the same mini-cluster running a bare KeyedProcessFunction over the same events in the same
run, next to the Beam DirectRunner running the same graph on the same events; and what
each Flink setting that might matter (Python execution mode, bundle size, parallelism,
Python state cache) gives.

Data: `benchmarks.synthetic` events (4 files) and 1,000 active trigger campaigns, under
benchmarks/data/flink/. Orion's figure is the whole job over files: parse and validate,
key by lead, the one step per lead (order, dedup, evaluate; each lead seeded from and
written back to its profile in the store), the SQLite store and index, outcome and
dead-letter files (no outbox: campaign flows off, on both engines). The ceiling reads
the same files, parses each line's JSON, keys it by (tenant, lead) and reads and writes
one value state per element. Times are wall clock from building the job to its end, so both pay
the same mini-cluster and Python-worker start-up (measured on its own, too). The JVM
gateway is started before anything is timed.

Writes its section of BENCHMARKS.md (`<!-- bench:flink:... -->`).

    make bench-flink
    make bench-flink ARGS="--events 10000 --quick --no-write"    # the default settings only
"""
from __future__ import annotations

import argparse
import io
import math
import shutil
import sys
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


class Setting(NamedTuple):
    label: str
    parallelism: int = 1
    execution_mode: str = "thread"
    bundle_size: int | None = None
    state_cache_size: int | None = None

    def options(self, **more):
        return FlinkOptions(parallelism=self.parallelism, execution_mode=self.execution_mode,
                            bundle_size=self.bundle_size, state_cache_size=self.state_cache_size, **more)


DEFAULT_SETTING = Setting("defaults: thread mode, bundle 100,000, parallelism 1, state cache 1,000")
VARIANTS = (
    Setting("process mode (python.execution-mode=process)", execution_mode="process"),
    Setting("bundle 1,000 (python.fn-execution.bundle.size)", bundle_size=1_000),
    Setting("parallelism 2", parallelism=2),
    Setting("state cache 100,000 keys (python.state.cache-size)", state_cache_size=100_000),
)


class Figure(NamedTuple):
    setting: str
    events: int
    orion_seconds: float | None
    ceiling_seconds: float | None
    note: str = ""

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
    flink_run = run_flink(config_for(workdir, rules, "flink"), options=setting.options(), out=io.StringIO())
    return time.perf_counter() - started, flink_run.counters


def time_flink_ceiling(events_dir: Path, setting: Setting) -> float:
    from pyflink.common import Types
    from pyflink.datastream.connectors.base import Sink
    from pyflink.java_gateway import get_gateway

    from orion.flink import functions as fn
    from orion.runners.flink import create_environment, match_files

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
    env.execute("orion-ceiling")
    return time.perf_counter() - started


def _lead_of_key(key):
    return key[0], key[1]


def time_beam(workdir: Path, rules: Path) -> tuple[float, dict]:
    started = time.perf_counter()
    totals = run_beam(config_for(workdir, rules, "beam"), out=io.StringIO())
    return time.perf_counter() - started, totals


def measure(workdir: Path, rules: Path, events: int, setting: Setting) -> Figure:
    print(f"... {setting.label}", file=sys.stderr, flush=True)
    try:
        ceiling = time_flink_ceiling(workdir / "events", setting)
        orion, counters = time_flink_orion(workdir, rules, setting)
    except Exception as error:  # a setting PyFlink cannot run is reported, not fatal
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return Figure(setting.label, events, None, None, f"failed: {first_line[:160]}")
    read = counters.get("events_read", 0)
    note = "" if read == events else f"read {read:,} of {events:,} events"
    return Figure(setting.label, events, orion, ceiling, note)


def most_telling(figures: list[Figure]) -> Figure | None:
    """The variant that moves Orion's rate furthest from the defaults', either way."""
    default = figures[0].orion_rate
    variants = [f for f in figures[1:] if f.orion_rate]
    if not default or not variants:
        return None
    return max(variants, key=lambda f: abs(math.log(f.orion_rate / default)))


def render(figures: list[Figure], beam_seconds: float, start_up_seconds: float, events: int, campaigns: int,
           command: str) -> str:
    default = figures[0]
    beam_rate = events / beam_seconds
    lines = [
        "## Flink: the PyFlink job on the local mini-cluster",
        "",
        measured_line(command),
        "",
        f"{events:,} synthetic events in {FILES} JSONL files, {campaigns:,} active trigger campaigns. "
        "Orion: the whole Flink job (`orion.runners.flink`: parse, key by lead, the one step per lead "
        "(order, dedup, evaluate, lead profiles read and written), SQLite store and index, outcome and "
        "dead-letter files; campaign flows off). Ceiling: the same "
        "mini-cluster and settings reading the same files, parsing each line's JSON, keying by (tenant, "
        "lead) and reading and writing one value state per element in a bare KeyedProcessFunction "
        "(`BareKeyedState`). Wall clock from building the job to its end, start-up of the mini-cluster "
        "and the Python workers included on both sides; ratio = Orion events/s / ceiling events/s. "
        "Beam: the same graph and files on the DirectRunner (FnApiRunner, in-process), in the same run.",
        "",
        "| setting | Orion events/s | vs defaults | ceiling events/s | ratio to ceiling | note |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for figure in figures:
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
    telling = most_telling(figures)
    if telling is not None:
        lines.append(f"- The setting that matters most: **{telling.setting}**, {telling.orion_rate:,.0f} events/s "
                     f"({telling.orion_rate / default.orion_rate:.2f}x the defaults); every setting's figure is "
                     "in the table.")
    failed = [f.setting for f in figures if f.orion_seconds is None]
    if failed:
        lines.append(f"- Did not run: {', '.join(failed)} (see the note).")
    lines.append(f"- Start-up alone (the ceiling job over {START_UP_EVENTS} events, defaults): "
                 f"{start_up_seconds:.1f} s, inside every figure above.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS)
    parser.add_argument("--campaigns", type=int, default=DEFAULT_CAMPAIGNS)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--quick", action="store_true", help="the default settings only")
    parser.add_argument("--no-write", action="store_true", help="print the section, leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    rules = prepare(DATA_DIR, args.events, args.campaigns, args.seed)

    from orion.runners.flink import create_environment

    create_environment(DEFAULT_SETTING.options())  # the JVM gateway starts here, untimed
    print("... start-up", file=sys.stderr, flush=True)
    start_up_seconds = time_flink_ceiling(DATA_DIR / "start-up", DEFAULT_SETTING)
    print("... Beam DirectRunner", file=sys.stderr, flush=True)
    beam_seconds, _ = time_beam(DATA_DIR, rules)
    settings = (DEFAULT_SETTING,) + (() if args.quick else VARIANTS)
    figures = [measure(DATA_DIR, rules, args.events, setting) for setting in settings]
    given = argv if argv is not None else sys.argv[1:]
    command = "make bench-flink" + (f' ARGS="{" ".join(given)}"' if given else "")
    body = render(figures, beam_seconds, start_up_seconds, args.events, args.campaigns, command)
    print(body)
    if not args.no_write:
        write_section("flink", body)


if __name__ == "__main__":
    main()

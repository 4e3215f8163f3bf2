"""Instructions of bench-analytics' graph figure: `orion run`'s graph over files (Beam,
in-process FnApiRunner) with the roll-ups and without, over the same events, each run
whole under valgrind's callgrind, instrumentation switched on for the measured runs only
(after an untimed first run, which compiles the rules and warms the caches).

bench-analytics' graph ratio is in events/s and CPU time, which this shared 2-core
machine moves by a tenth from one run to the next, as much as the roll-ups cost; an
instruction count does not move, so it says whether the roll-ups cost more or less than
a tenth of the graph. The ratio is instructions without / instructions with (target, as
for events/s: at least 0.9). Needs valgrind (Debian: apt-get install valgrind); under it
the graph runs some fifty times slower, so each data set takes a few minutes.

    make bench-analytics-instructions
    .venv/bin/python -m benchmarks.analytics_instructions --events 5000
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

RUNS = ("without", "with")


def _instructions(dump: Path) -> int:
    """The instructions a callgrind dump counted (its `totals:` line)."""
    found = re.search(r"^totals:\s*(\d+)", dump.read_text(encoding="utf-8", errors="replace"), re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no totals in {dump}")
    return int(found.group(1))


def child(workdir: Path, events: int, seed: int, per_minute: int | None) -> None:
    """Inside callgrind: a first run with roll-ups (not counted), then each of RUNS
    counted and dumped under its name."""
    import apache_beam as beam

    from benchmarks.bench_analytics import DEFAULT_CAMPAIGNS, build_graph, dense_lines
    from benchmarks.synthetic import event_lines, write_rules
    from orion.runners.direct import pipeline_options
    from orion.sequencing import DEFAULT_ALLOWED_LATENESS_MS, DEFAULT_DEDUP_SPAN_MS
    from orion.settings import RunConfig

    rules = workdir / "rules"
    write_rules(rules, DEFAULT_CAMPAIGNS, seed)
    lines = event_lines(events, seed)
    if per_minute is not None:
        lines = dense_lines(lines, per_minute)
    (workdir / "events").mkdir()
    (workdir / "events" / "part-0.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def run(rollups: bool) -> None:
        run_dir = workdir / f"run-{uuid.uuid4().hex[:8]}"
        config = RunConfig(str(rules), (), str(workdir / "events" / "*.jsonl"), None,
                           f"sqlite:///{run_dir / 'activities.db'}", run_dir / "out", DEFAULT_ALLOWED_LATENESS_MS,
                           DEFAULT_DEDUP_SPAN_MS, None, ())
        config.out_dir.mkdir(parents=True)
        with beam.Pipeline(options=pipeline_options(config)) as pipeline:
            build_graph(pipeline, config, rollups)
        shutil.rmtree(run_dir)

    run(True)
    pid = str(os.getpid())
    for name in RUNS:
        subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)
        subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
        run(name == "with")
        subprocess.run(["callgrind_control", "-i", "off", pid], check=True, capture_output=True)
        subprocess.run(["callgrind_control", "-d", name, pid], check=True, capture_output=True)


def measure(events: int, seed: int, per_minute: int | None) -> dict[str, int]:
    """{run: instructions} of one data set, each run counted apart."""
    workdir = Path(tempfile.mkdtemp(prefix="orion-analytics-instructions-"))
    try:
        out = workdir / "callgrind"
        command = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}.%p",
                   sys.executable, "-m", "benchmarks.analytics_instructions", "--child", str(workdir),
                   "--events", str(events), "--seed", str(seed)]
        if per_minute is not None:
            command += ["--per-minute", str(per_minute)]
        log = workdir / "valgrind.log"
        with open(log, "wb") as sink:
            done = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            raise RuntimeError(f"the graph under callgrind failed ({done.returncode}):\n"
                               + log.read_text(errors="replace")[-3000:])
        found = {}
        for dump in workdir.glob("callgrind.*.*"):
            trigger = re.search(r"^desc: Trigger: .*?(\w+)$", dump.read_text(errors="replace"), re.MULTILINE)
            if trigger is not None and trigger.group(1) in RUNS:
                found[trigger.group(1)] = _instructions(dump)
        if set(found) != set(RUNS):
            raise RuntimeError(f"callgrind dumped {sorted(found)}, not {list(RUNS)}; see the run's output above")
        return found
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def instruction_rows(figures: list[dict]) -> list[str]:
    from benchmarks.bench_analytics import ROW_PREFIXES

    lines = []
    for figure in figures:
        spread = "as generated" if figure["per_minute"] is None else f"retimed to {figure['per_minute']} a minute"
        without, with_ = figure["without"], figure["with"]
        lines.append(f"{ROW_PREFIXES['instructions']}(callgrind, {figure['events']:,} events {spread}) | "
                     f"{without / with_:.3f} ({without / figure['events'] / 1000:,.1f} vs "
                     f"{with_ / figure['events'] / 1000:,.1f} thousand instructions an event) | >= 0.9 |")
    return lines


def main(argv: list[str] | None = None) -> None:
    from benchmarks.bench_analytics import DENSE_PER_MINUTE, write_rows
    from benchmarks.synthetic import DEFAULT_SEED

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="events a data set (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--per-minute", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        child(args.child, args.events, args.seed, args.per_minute)
        return
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("analytics_instructions needs valgrind and callgrind_control: apt-get install valgrind")
    figures = []
    for per_minute in (None, DENSE_PER_MINUTE):
        found = measure(args.events, args.seed, per_minute)
        figures.append({"events": args.events, "per_minute": per_minute, **found})
        print(f"{per_minute or 'as generated'} a minute: without {found['without']:,}, with {found['with']:,}: "
              f"{found['without'] / found['with']:.3f}", flush=True)
    rows = instruction_rows(figures)
    print("\n".join(rows))
    command = "make bench-analytics-instructions" + (f' ARGS="{" ".join(argv)}"' if argv else "")
    if not write_rows(command, {"instructions": rows}):
        print("BENCHMARKS.md has no Analytics section yet: run `make bench-analytics` once to write it",
              file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])

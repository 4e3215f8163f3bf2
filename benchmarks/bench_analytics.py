"""Analytics benchmark: what the roll-ups cost the graph, how fast a query answers, how
soon a streamed activity is visible, and how exact unique leads are.

  graph cost         `orion run` (Beam, files, in-process FnApiRunner) over
                     `benchmarks.synthetic` events and 1,000 campaigns (as generated, 21
                     days of them, and retimed to DENSE_PER_MINUTE a minute), with the roll-ups
                     and without, after an untimed first run (which compiles the rules),
                     in GRAPH_ROUNDS rounds of a run without then one with: the median of
                     the rounds' ratios of events/s (target: at least 0.9);
                     `make bench-analytics-instructions` counts their instructions
  query latency      one tenant-day at minute granularity over 10 dimension values (1,440
                     minutes x 10 activity types, beside a second tenant and day) in the
                     SQLite roll-up store: `events by type` and `unique_leads by type`,
                     QUERY_REPEATS times each; p50 and p99 (target: p99 under 50 ms)
  visibility         a streaming `orion run` on the Pub/Sub emulator (started here; the
                     bundle-based DirectRunner, --allowed-lateness 1 s): an activity
                     published now, the time until a query of the roll-up store sees it,
                     VISIBILITY_PROBES times (target: within 5 s)
  sketch error       1,000,000 distinct lead ids, each in one of the 1,440 minute
                     sketches of a day, merged: the estimate against the exact count, and
                     the 95% bounds the sketch gives

Writes its section of BENCHMARKS.md (`<!-- bench:analytics:... -->`); with --only, just
the rows of the figures measured (and a line saying when), the others kept.

    make bench-analytics
    make bench-analytics ARGS="--events 5000 --skip-streaming"
    make bench-analytics ARGS="--only query"
"""
from __future__ import annotations

import argparse
import gc
import io
import json
import os
import shutil
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

import apache_beam as beam

from benchmarks.report import BENCHMARKS_FILE, REPO_ROOT, measured_line, section_markers, write_section
from benchmarks.synthetic import DEFAULT_SEED, event_lines, write_rules
from orion.analytics.query import Query, run_query
from orion.analytics.rollup import (
    ACTIVITY, LG_K, RELATIVE_ERROR, Aggregate, RollupKey, RollupRow,
)
from orion.runners.direct import pipeline_options
from orion.settings import RunConfig
from orion.sequencing import DEFAULT_ALLOWED_LATENESS_MS, DEFAULT_DEDUP_SPAN_MS
from orion.store.rollups_opening import open_rollup_store

DATA_DIR = REPO_ROOT / "benchmarks" / "data" / "analytics"
DEFAULT_EVENTS = 20_000
DEFAULT_CAMPAIGNS = 1_000
GRAPH_ROUNDS = 5
DENSE_PER_MINUTE = 200  # the graph figure's second data set: the same events, this many a minute
QUERY_REPEATS = 200
VISIBILITY_PROBES = 10
DISTINCT_LEADS = 1_000_000
MINUTE, DAY = 60_000, 86_400_000
DAY0 = 1_795_046_400_000  # 2026-11-19T00:00:00Z
TYPES = ("visit_web_page", "fill_out_form", "open_email", "click_link_in_email", "email_delivered",
         "email_bounced", "mobile_app_event", "device_event", "added_to_list", "change_score")


# --- graph cost -------------------------------------------------------------------------


def build_graph(pipeline: beam.Pipeline, config: RunConfig, rollups: bool) -> None:
    """`orion run`'s graph over files (orion.runners.direct.build), with or without the roll-ups."""
    from orion.pipelines.activity_graph import GraphSettings, build_activity_graph
    from orion.settings import output_prefixes
    from orion.transforms.intake import ReadActivityFiles
    from orion.transforms.sinks import WriteActivities, WriteJsonLines, WriteProfiles

    activities, dead = pipeline | "ReadActivityFiles" >> ReadActivityFiles(
        config.events, config.rules_dir, config.template_dirs, config.allowed_lateness_ms)
    outcomes_prefix, dead_prefix = output_prefixes(config.out_dir)
    store = config.store_uri
    build_activity_graph(
        activities, dead,
        GraphSettings(config.rules_dir, config.template_dirs, config.allowed_lateness_ms, config.dedup_span_ms,
                      bounded=True, seed_store_uri=store, one_watermark_per_stage=True,
                      rollup_store_uri=store if rollups else None),
        store_sink=WriteActivities(store), profile_sink=WriteProfiles(store),
        outcome_sink=WriteJsonLines(outcomes_prefix, "outcomes_written"),
        dead_letter_sink=WriteJsonLines(dead_prefix, "dead_letters_written"))


def store_upserts(store_uri: str) -> tuple[float, int]:
    """(CPU seconds, segments): the roll-up store upserting a run's segments again, into
    an empty store, in the graph's batches: the store's share of what the roll-ups cost."""
    import sqlite3

    from orion.analytics.segments import RollupSegment
    from orion.store.sqlite import sqlite_path
    from orion.transforms.rollups import DEFAULT_BATCH_SIZE

    with sqlite3.connect(sqlite_path(store_uri)) as connection:
        segments = [RollupSegment(*row) for row in connection.execute(
            "SELECT tenant, granularity, bucket, writer, part, version, rows, first, last, data FROM rollup_segments")]
    target = Path(sqlite_path(store_uri)).with_name("upserts.db")
    with open_rollup_store(f"sqlite:///{target}") as store:
        store.init()
        cpu = time.process_time()
        for start in range(0, len(segments), DEFAULT_BATCH_SIZE):
            store.write_segments(segments[start:start + DEFAULT_BATCH_SIZE])
        cpu = time.process_time() - cpu
    return cpu, len(segments)


def time_graph(rules: Path, workdir: Path, rollups: bool, upserts: bool = False
               ) -> tuple[float, float, int, float, int]:
    """(wall-clock seconds, CPU seconds of this process, roll-up rows written, and when
    `upserts` the CPU seconds of upserting their segments again and how many there are)"""
    run_dir = workdir / f"run-{uuid.uuid4().hex[:8]}"
    config = RunConfig(str(rules), (), str(workdir / "events" / "*.jsonl"), None,
                       f"sqlite:///{run_dir / 'activities.db'}", run_dir / "out", DEFAULT_ALLOWED_LATENESS_MS,
                       DEFAULT_DEDUP_SPAN_MS, None, ())
    config.out_dir.mkdir(parents=True)
    started, cpu = time.perf_counter(), time.process_time()
    with beam.Pipeline(options=pipeline_options(config)) as pipeline:
        build_graph(pipeline, config, rollups)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    rows, upsert_cpu, segments = 0, 0.0, 0
    if rollups:
        with open_rollup_store(config.store_uri) as store:
            rows = store.count()
        if not rows:
            raise RuntimeError("the run with roll-ups wrote none")
        if upserts:
            upsert_cpu, segments = store_upserts(config.store_uri)
    shutil.rmtree(run_dir)
    return seconds, cpu, rows, upsert_cpu, segments


def dense_lines(lines: list[str], per_minute: int) -> list[str]:
    """The same events, in the same order, retimed to `per_minute` a minute."""
    from benchmarks.synthetic import START_MS, rfc3339

    step_ms = MINUTE / per_minute
    retimed = []
    for n, line in enumerate(lines):
        event = json.loads(line)
        event["occurred_at"] = rfc3339(START_MS + int(n * step_ms))
        retimed.append(json.dumps(event, separators=(",", ":")))
    return retimed


def graph_cost(events: int, campaigns: int, seed: int, per_minute: int | None = None) -> dict:
    """`per_minute`: the events retimed to that many a minute (None: as generated)."""
    workdir = DATA_DIR / "graph"
    if workdir.exists():
        shutil.rmtree(workdir)
    rules = workdir / "rules"
    write_rules(rules, campaigns, seed)
    (workdir / "events").mkdir(parents=True)
    lines = event_lines(events, seed)
    if per_minute is not None:
        lines = dense_lines(lines, per_minute)
    (workdir / "events" / "part-0.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    # A first run compiles the rules and warms the process's caches for both: untimed.
    time_graph(rules, workdir, True)
    times = {False: [], True: []}
    cpus = {False: [], True: []}
    rows = segments = 0
    upsert_cpus = []
    for _ in range(GRAPH_ROUNDS):
        for rollups in (False, True):
            seconds, cpu, written, upsert_cpu, stored = time_graph(rules, workdir, rollups, upserts=rollups)
            rows, segments = max(rows, written), max(segments, stored)
            times[rollups].append(seconds)
            cpus[rollups].append(cpu)
            if rollups:
                upsert_cpus.append(upsert_cpu)
            print(f"graph ({per_minute or 'as generated'} a minute) {'with' if rollups else 'without'} roll-ups: "
                  f"{events / seconds:,.0f} events/s ({cpu:.2f} s CPU)", file=sys.stderr)
    # Each round's own ratio (its run without, then with), the median of them: the machine's
    # pace drifts over the rounds by more than the roll-ups cost, and a round's two runs
    # are next to each other.
    ratios = [alone / rolled for alone, rolled in zip(times[False], times[True])]
    cpu_ratios = [alone / rolled for alone, rolled in zip(cpus[False], cpus[True])]
    return {"events": events, "without": events / min(times[False]), "with": events / min(times[True]),
            "ratio": statistics.median(ratios), "cpu_ratio": statistics.median(cpu_ratios),
            "ratios": ratios, "per_minute": per_minute, "rows": rows, "segments": segments,
            "added_cpu": statistics.median(rolled - alone for alone, rolled in zip(cpus[False], cpus[True])),
            "upsert_cpu": min(upsert_cpus),
            # The most the ratio could be (in CPU time) if the roll-ups cost nothing but their upserts.
            "upsert_bound": min(cpus[False]) / (min(cpus[False]) + min(upsert_cpus)),
            "load": os.getloadavg()[0]}


# --- query latency ----------------------------------------------------------------------


def fill_day(uri: str, layout: str) -> int:
    """1,440 minutes x 10 types for tenant `bench` on DAY0, and the same for another tenant
    and the next day (rows a query must not read), stored as `layout`: "segments" (as a
    bounded run writes them: a tenant-day's minutes, hours and day in three segments) or
    "rows" (one stored row each, as a streaming run writes them)."""
    from orion.analytics.segments import MinuteParts, segments_of_day

    days = []
    for tenant, day in (("bench", DAY0), ("other", DAY0), ("bench", DAY0 + DAY)):
        minutes = MinuteParts()
        for minute in range(1440):
            for i, type_ in enumerate(TYPES):
                leads = {f"L{minute * 7 + lead}" for lead in range(1 + (minute + i) % 7)}
                key = (tenant, "minute", day + minute * MINUTE, ACTIVITY, type_, "input", "", "", "", "")
                minutes[key] = [len(leads), leads, None] if len(leads) > 1 else next(iter(leads))
        days.append(minutes)
    with open_rollup_store(uri) as store:
        store.init()
        if layout == "segments":
            for minutes in days:
                store.write_segments(segments_of_day({"minute": minutes}, "w"))
        else:
            rows = [RollupRow(RollupKey(*key), "w", 1, Aggregate(1, None).merge(_aggregate(part)))
                    for minutes in days for key, part in minutes.items()]
            for start in range(0, len(rows), 5000):
                store.write(rows[start:start + 5000])
        return store.count()


def _aggregate(part) -> Aggregate:
    """A MinuteParts part as an Aggregate of its leads (one record each)."""
    found = Aggregate()
    for lead in ([part] if isinstance(part, str) else sorted(part[1])):
        found.add(lead)
    return found


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


QUERY_LAYOUTS = ("segments", "rows")


def query_latency() -> dict:
    figures: dict = {}
    for layout in QUERY_LAYOUTS:
        workdir = DATA_DIR / "query"
        if workdir.exists():
            shutil.rmtree(workdir)
        workdir.mkdir(parents=True)
        uri = f"sqlite:///{workdir / 'activities.db'}"
        figures["stored"] = fill_day(uri, layout)
        # As `orion analytics serve` does once started: what is alive now (here, the
        # fill's and the earlier figures' objects) is frozen out of the collector's sight,
        # so no full collection walks it while a query waits.
        gc.collect()
        gc.freeze()
        found = figures[layout] = {}
        with open_rollup_store(uri) as store:
            for metric in ("events", "unique_leads"):
                query = Query("bench", metric, ("type",), "minute", DAY0, DAY0 + DAY)
                answer = run_query(store, query)
                if len(answer) != 1440 * len(TYPES):
                    raise RuntimeError(f"{metric}: {len(answer)} rows, expected {1440 * len(TYPES)}")
                times, cpus = [], []
                for _ in range(QUERY_REPEATS):
                    started, cpu = time.perf_counter(), time.process_time()
                    run_query(store, query)
                    times.append((time.perf_counter() - started) * 1000)
                    cpus.append((time.process_time() - cpu) * 1000)
                found[metric] = (statistics.median(times), percentile(times, 0.99), percentile(cpus, 0.99))
                print(f"query {metric} by type, one day by minute, {layout}: p50 {found[metric][0]:.1f} ms, "
                      f"p99 {found[metric][1]:.1f} ms (CPU p99 {found[metric][2]:.1f} ms)", file=sys.stderr)
        gc.unfreeze()
    figures["load"] = os.getloadavg()[0]
    return figures


# --- visibility -------------------------------------------------------------------------

PROBE_RULES = """
tenant: probe
campaigns:
  - name: Visit
    triggers: [{activity: visit_web_page}]
"""


def visibility() -> list[float]:
    """Seconds from publishing an activity to a streaming run's roll-ups showing it."""
    from google.cloud import pubsub_v1

    from orion.runners.direct import run
    from orion.testing.emulators import PubSubEmulator
    from orion.testing.pubsub import create_topic_and_subscription

    workdir = DATA_DIR / "streaming"
    if workdir.exists():
        shutil.rmtree(workdir)
    (workdir / "rules").mkdir(parents=True)
    (workdir / "rules" / "probe.yaml").write_text(PROBE_RULES)
    store = f"sqlite:///{workdir / 'activities.db'}"
    seconds = []
    with PubSubEmulator.start() as emulator:
        os.environ["PUBSUB_EMULATOR_HOST"] = emulator.host
        topic, subscription = "projects/orion-bench/topics/probes", "projects/orion-bench/subscriptions/probes"
        create_topic_and_subscription(topic, subscription)
        config = RunConfig(str(workdir / "rules"), (), None, subscription, store, workdir / "out", 1000,
                           DEFAULT_DEDUP_SPAN_MS, VISIBILITY_PROBES * 4 + 30, (), outbox_uri=None)
        runner = threading.Thread(target=run, args=(config,), kwargs={"out": io.StringIO()}, daemon=True)
        runner.start()
        publisher = pubsub_v1.PublisherClient()
        with open_rollup_store(store) as rollups:
            rollups.init()
            time.sleep(8)  # the pipeline starts pulling
            for probe in range(VISIBILITY_PROBES):
                page = f"https://probe.example/p{probe}"
                now_ms = int(time.time() * 1000)
                event = {"event_id": f"probe-{probe}-{uuid.uuid4().hex[:6]}", "tenant": "probe", "lead_id": f"L{probe}",
                         "type": "visit_web_page", "occurred_at": now_ms, "attributes": {"url": page}}
                started = time.perf_counter()
                publisher.publish(topic, json.dumps(event).encode()).result(timeout=30)
                query = Query("probe", "events", (), "minute", now_ms - now_ms % MINUTE, now_ms + MINUTE,
                              {"attribute": f"probe.example/p{probe}"})
                while not run_query(rollups, query):
                    if time.perf_counter() - started > 60:
                        raise RuntimeError(f"probe {probe} was not visible within 60 s")
                    time.sleep(0.05)
                seconds.append(time.perf_counter() - started)
                print(f"probe {probe}: visible after {seconds[-1]:.2f} s", file=sys.stderr)
                time.sleep(1)
        publisher.transport.close()
        runner.join(config.duration_s + 60)
    return seconds


# --- sketch error -------------------------------------------------------------------------


def sketch_error() -> dict:
    """1M distinct leads spread over a day's minute sketches, merged as a day query merges them."""
    from orion.analytics.rollup import merged_estimate

    minutes = [Aggregate() for _ in range(1440)]
    for lead in range(DISTINCT_LEADS):
        minutes[lead % 1440].add(f"lead-{lead}")
    started = time.perf_counter()
    estimate, low, high = merged_estimate(minute.sketch_bytes() for minute in minutes)
    merge_ms = (time.perf_counter() - started) * 1000
    return {"estimate": estimate, "low": low, "high": high, "error": (estimate - DISTINCT_LEADS) / DISTINCT_LEADS,
            "merge_ms": merge_ms, "bytes": sum(len(minute.sketch_bytes()) for minute in minutes)}


# --- report -------------------------------------------------------------------------------


FIGURES = ("graph", "query", "visibility", "sketch")
# How each figure's rows of the table begin: what --only replaces.
ROW_PREFIXES = {"graph": "| graph with roll-ups vs without ",
                "instructions": "| graph with roll-ups vs without, in instructions ",
                "query": "| query: one tenant-day by minute, ", "visibility": "| streamed activity visible in a query ",
                "sketch": "| unique leads: "}


def graph_rows(graphs: list[dict]) -> list[str]:
    lines = []
    for graph in graphs:
        spread = ("as generated: 21 days, about one a minute" if graph["per_minute"] is None
                  else f"retimed to {graph['per_minute']} a minute")
        lines.append(f"{ROW_PREFIXES['graph']}(files, in-process, {graph['events']:,} events {spread}; "
                     f"{graph['rows']:,} roll-up rows written in {graph['segments']:,} segments; {GRAPH_ROUNDS} "
                     f"rounds, each a run without then one with; load {graph['load']:.1f}) | {graph['ratio']:.2f}x "
                     f"(the median of the rounds' ratios, {', '.join(f'{r:.2f}' for r in graph['ratios'])}; best "
                     f"{graph['with']:,.0f} vs {graph['without']:,.0f} events/s); in CPU time "
                     f"{graph['cpu_ratio']:.2f}x: the roll-ups add {graph['added_cpu']:.2f} s, of which "
                     f"{graph['upsert_cpu']:.2f} s the store's upserts of their segments, so even roll-ups that cost "
                     f"nothing but their upserts would reach at most {graph['upsert_bound']:.2f}x | >= 0.9x |")
    return lines


LAYOUT_TEXT = {"segments": "in segments, as a bounded run writes them", "rows": "one by one, as a streaming run "
                                                                               "writes them"}


def query_rows(query: dict) -> list[str]:
    lines = []
    for layout in QUERY_LAYOUTS:
        for metric in ("events", "unique_leads"):
            p50, p99, cpu99 = query[layout][metric]
            lines.append(f"{ROW_PREFIXES['query']}`{metric}` by type (10 values: 14,400 rows of "
                         f"{query['stored']:,} in SQLite, {LAYOUT_TEXT[layout]}), {QUERY_REPEATS} runs; load "
                         f"{query['load']:.1f} | p50 {p50:.1f} ms, p99 {p99:.1f} ms (CPU time p99 {cpu99:.1f} ms) | "
                         "p99 < 50 ms |")
    return lines


def visibility_rows(probes: list[float]) -> list[str]:
    return [f"{ROW_PREFIXES['visibility']}(Pub/Sub emulator, DirectRunner, allowed lateness "
            f"1 s, {len(probes)} probes) | median {statistics.median(probes):.2f} s, max {max(probes):.2f} s | < 5 s |"]


def sketch_rows(sketch: dict) -> list[str]:
    return [f"{ROW_PREFIXES['sketch']}{DISTINCT_LEADS:,} distinct over 1,440 minute sketches, merged | "
            f"{sketch['estimate']:,.0f} ({sketch['error']:+.2%}); 95% bounds {sketch['low']:,.0f} to "
            f"{sketch['high']:,.0f}; merge {sketch['merge_ms']:.0f} ms | within +-{2 * RELATIVE_ERROR:.1%} "
            "(2 standard errors) |"]


def render(command: str, graphs: list[dict], query: dict, probes: list[float] | None, sketch: dict) -> str:
    lines = ["## Analytics", "", measured_line(command), "",
             "| figure | measured | target |", "| --- | --- | --- |"]
    lines += graph_rows(graphs) + query_rows(query)
    if probes is not None:
        lines += visibility_rows(probes)
    lines += sketch_rows(sketch)
    lines += ["", f"Sketches are HyperLogLog (Apache DataSketches, lg_k {LG_K}, HLL_4): relative standard error "
              f"{RELATIVE_ERROR:.2%}; the day's 1,440 minute sketches of the last figure take "
              f"{sketch['bytes'] / 1_000_000:.1f} MB. `load` is the machine's 1-minute load average when the "
              "figure was taken (2 cores, shared): wall-clock figures move with it, CPU time (this process's) "
              "much less. The visibility figure is the allowed lateness (the lead step "
              "releases an activity once the watermark passes it by that much) plus the graph's and the "
              "store's latency. What the roll-ups cost the graph: the lead step merges what it emits into "
              "minute rows per tenant-day, the tenant-days' parts are grouped, and the step that writes them "
              "builds each tenant-day's hours and day and upserts its three segments (orion.analytics.segments; "
              "the upserts' CPU time is measured apart, by writing the run's segments again into an empty "
              "store; `make bench-analytics-instructions` counts the same runs' instructions under "
              "callgrind, which the machine's pace does not move). The synthetic activities' pages, emails and "
              "events are so varied that almost every activity opens a minute row of its own, at 1 or 200 "
              "activities a minute alike; hours and days of activities are kept by type and source only (the "
              "attribute is a dimension of the minutes: a query by it at hour, day or all reads the minutes), "
              "which makes about 2 rows per activity instead of 3, stored in a few segments instead of one "
              "stored row each."]
    return "\n".join(lines)


def kept_instruction_rows(body: str, path: Path = BENCHMARKS_FILE) -> str:
    """The section `body` with the instruction rows of the section now in `path`
    (`make bench-analytics-instructions`, measured apart: a whole run does not take them)
    and the line saying when they were measured, both kept as they are."""
    start_marker, end_marker = section_markers("analytics")
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    start, end = text.find(start_marker), text.find(end_marker)
    old = text[start:end].splitlines() if -1 < start < end else []
    rows = [line for line in old if line.startswith(ROW_PREFIXES["instructions"])]
    stamp = [line for line in old if line.startswith("- rows `instructions` measured again: ")]
    if not rows:
        return body
    lines = body.splitlines()
    graph = max(i for i, line in enumerate(lines) if line.startswith(ROW_PREFIXES["graph"]))
    lines[graph + 1:graph + 1] = rows
    command_at = next(i for i, line in enumerate(lines) if line.startswith("Command: "))
    lines[command_at + 1:command_at + 1] = stamp
    return "\n".join(lines)


def replace_rows(section: str, rows: dict[str, list[str]], stamp: str) -> str:
    """The section's text with the rows of each figure in `rows` in place of its old ones
    (appended to the table when it had none), and a line under the section's Command
    line saying when they were measured, `stamp` (replacing that figure's previous one)."""
    lines = section.splitlines()
    for figure, new in rows.items():
        prefix = ROW_PREFIXES[figure]
        old = [i for i, line in enumerate(lines) if line.startswith(prefix)]
        at = old[0] if old else 1 + max(i for i, line in enumerate(lines) if line.startswith("| "))
        lines = [line for line in lines if not line.startswith(prefix)]
        lines[at:at] = new
        note = f"- rows `{figure}` measured again: "
        lines = [line for line in lines if not line.startswith(note)]
        command_at = next(i for i, line in enumerate(lines) if line.startswith("Command: "))
        lines.insert(command_at + 1, note + stamp)
    return "\n".join(lines)


def write_rows(command: str, rows: dict[str, list[str]]) -> bool:
    """Replace only these figures' rows of the Analytics section of BENCHMARKS.md; False
    (nothing written) when there is no such section yet."""
    start_marker, end_marker = section_markers("analytics")
    text = BENCHMARKS_FILE.read_text(encoding="utf-8") if BENCHMARKS_FILE.exists() else ""
    start, end = text.find(start_marker), text.find(end_marker)
    if start == -1 or end < start:
        return False
    body = text[start + len(start_marker):end].strip("\n")
    write_section("analytics", replace_rows(body, rows, measured_line(command)))
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS)
    parser.add_argument("--campaigns", type=int, default=DEFAULT_CAMPAIGNS)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--skip-graph", action="store_true", help="no graph runs")
    parser.add_argument("--skip-streaming", action="store_true", help="no Pub/Sub emulator run")
    parser.add_argument("--only", action="append", choices=FIGURES, metavar="FIGURE",
                        help=f"measure only this figure ({', '.join(FIGURES)}; repeatable) and replace only its "
                             "rows of BENCHMARKS.md's Analytics section")
    args = parser.parse_args(argv)
    command = "make bench-analytics" + (f' ARGS="{" ".join(argv)}"' if argv else "")
    if args.only:
        measure = {"graph": lambda: graph_rows([graph_cost(args.events, args.campaigns, args.seed),
                                               graph_cost(args.events, args.campaigns, args.seed, DENSE_PER_MINUTE)]),
                   "query": lambda: query_rows(query_latency()), "visibility": lambda: visibility_rows(visibility()),
                   "sketch": lambda: sketch_rows(sketch_error())}
        rows = {figure: measure[figure]() for figure in dict.fromkeys(args.only)}
        print("\n".join(line for lines in rows.values() for line in lines))
        if not write_rows(command, rows):
            print("BENCHMARKS.md has no Analytics section yet: run the whole bench once to write it", file=sys.stderr)
        return
    graphs = [] if args.skip_graph else [graph_cost(args.events, args.campaigns, args.seed),
                                         graph_cost(args.events, args.campaigns, args.seed, DENSE_PER_MINUTE)]
    query = query_latency()
    sketch = sketch_error()
    print(f"sketch: {sketch}", file=sys.stderr)
    probes = None if args.skip_streaming else visibility()
    body = kept_instruction_rows(render(command, graphs, query, probes, sketch))
    print(body)
    write_section("analytics", body)


if __name__ == "__main__":
    main(sys.argv[1:])

"""Store benchmark: the graph's Bigtable and HBase sinks and the MySQL -> Bigtable and
MySQL -> HBase bootstraps, each as a ratio to a bare client loop writing the same rows to
the same server in the same run (google-cloud-bigtable's mutate_rows on the emulator;
HBase's Thrift 2 putMultiple on a standalone HBase), and history read latency for a lead
with 10,000 activities on every backend.

- Ceiling: one Python loop that builds the same rows the store writes (row key, three
  cells with explicit timestamps) and sends them with `Table.mutate_rows`, 500 per
  request, into a fresh table. Nothing else: no Beam, no validation, no index. On HBase:
  the same loop building thriftpy2 TPuts, sent with THBaseService.putMultiple, 500 per
  request.
- Raw reference (shown beside the ceiling, not a target): the same loop building the
  MutateRows requests as raw protobuf, as the store itself does, which
  skips the client's proto-plus wrappers (most of the ceiling's time).
- Sink: a bounded Beam pipeline (DirectRunner, in-process) that generates the same
  activities and writes them with `WriteActivities(index=False)`, the graph's store sink,
  into a fresh table; timed from `run()` to the end, so Beam's start-up is included. The
  same with the activity index (IndexActivities) is shown beside it.
- Bootstrap: the same rows in a legacy MariaDB database, copied by the bootstrap
  pipeline (read by id range, convert, write, index); timed without and with the
  verification that ends the real command.
- History: `store.history(tenant, lead)` for a lead with 10,000 activities (all of them,
  and the newest 100), on sqlite, MySQL, Bigtable and HBase.

Ratios and times are best of `--repetitions`, ceiling and candidate interleaved. Starts
the Bigtable emulator, a standalone HBase with its Thrift 2 server (orion/testing/hbase.py)
and a MariaDB server (mariadbd on a throwaway data dir and a free port,
orion/testing/mariadb.py; or the one ORION_TEST_MYSQL=HOST:PORT names) and stops them at
the end. Writes section "store" of BENCHMARKS.md.

    make bench-store
    .venv/bin/python -m benchmarks.bench_store --rows 20000 --no-write
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from typing import Callable, NamedTuple

import apache_beam as beam

from benchmarks.report import measured_line, write_section
from orion.activities import Activity
from orion.testing.hbase import HBaseServer
from orion.testing.mariadb import MariaDBServer, start_or_reuse

PROJECT, INSTANCE = "orion-bench", "orion-local"
DEFAULT_ROWS = 60_000
DEFAULT_REPETITIONS = 2
HISTORY_ROWS = 10_000
HISTORY_READS = 30
T0 = 1_700_000_000_000
LEADS = 2_000
TYPES = ("visit_web_page", "open_email", "fill_out_form")
CHUNK = 5_000
MUTATE_BATCH = 500


def activity(n: int) -> Activity:
    return Activity(f"ev-{n:08d}", ("acme", "bank")[n % 2], f"lead-{n % LEADS}", TYPES[n % 3],
                    T0 + n * 1_000, {"url": f"https://shop.example/p/{n % 97}", "n": n})


def activities(rows: int) -> list[Activity]:
    return [activity(n) for n in range(rows)]


def _chunk(start: int, rows: int) -> list[Activity]:
    return [activity(n) for n in range(start, min(start + CHUNK, rows))]


def bigtable_uri() -> str:
    return f"bigtable://{PROJECT}/{INSTANCE}/b{uuid.uuid4().hex[:12]}"


def hbase_uri(server: HBaseServer) -> str:
    return server.uri(f"h{uuid.uuid4().hex[:12]}")


def fresh_table(uri: str):
    from orion.store import open_store

    with open_store(uri) as store:
        store.init()


def timed(operation: Callable[[], object]) -> float:
    started = time.perf_counter()
    operation()
    return time.perf_counter() - started


# --- (a) the sink and its ceiling ---------------------------------------------------


def bare_mutate_rows(uri: str, rows: list[Activity]) -> float:
    """The ceiling: the same rows, built and sent with the bare client; seconds."""
    import json

    from google.cloud import bigtable

    from orion.store.bigtable import activity_row_key, cell_timestamp, parse_bigtable_uri

    project, instance, table_id = parse_bigtable_uri(uri)
    fresh_table(uri)
    client = bigtable.Client(project=project)
    table = client.instance(instance).table(table_id)

    def write_all():
        for start in range(0, len(rows), MUTATE_BATCH):
            batch = []
            for a in rows[start:start + MUTATE_BATCH]:
                row = table.direct_row(activity_row_key(a.tenant, a.lead_id, a.occurred_at, a.event_id))
                when = cell_timestamp(a.occurred_at)
                row.set_cell("a", b"type", a.type.encode("utf-8"), timestamp=when)
                row.set_cell("a", b"attributes", json.dumps(a.attributes, ensure_ascii=False, sort_keys=True,
                                                            separators=(",", ":")).encode("utf-8"), timestamp=when)
                row.set_cell("a", b"occurred_at", str(a.occurred_at).encode("ascii"), timestamp=when)
                batch.append(row)
            statuses = table.mutate_rows(batch)
            if any(status.code != 0 for status in statuses):
                raise RuntimeError("the ceiling loop had a row refused")

    return timed(write_all)


def raw_mutate_rows(uri: str, rows: list[Activity]) -> float:
    """The raw reference: the same rows as raw protobuf MutateRows requests; seconds."""
    import json

    from google.cloud import bigtable
    from google.cloud.bigtable_v2.types import bigtable as messages

    from orion.store.bigtable import activity_row_key, parse_bigtable_uri

    project, instance, table_id = parse_bigtable_uri(uri)
    fresh_table(uri)
    client = bigtable.Client(project=project)
    table = client.instance(instance).table(table_id)
    request_type = messages.MutateRowsRequest.pb()

    def write_all():
        for start in range(0, len(rows), MUTATE_BATCH):
            request = request_type(table_name=table.name)
            for a in rows[start:start + MUTATE_BATCH]:
                entry = request.entries.add(row_key=activity_row_key(a.tenant, a.lead_id, a.occurred_at, a.event_id))
                when = max(a.occurred_at, 0) * 1000
                for qualifier, value in ((b"type", a.type.encode("utf-8")),
                                         (b"attributes", json.dumps(a.attributes, ensure_ascii=False, sort_keys=True,
                                                                    separators=(",", ":")).encode("utf-8")),
                                         (b"occurred_at", str(a.occurred_at).encode("ascii"))):
                    cell = entry.mutations.add().set_cell
                    cell.family_name, cell.column_qualifier, cell.value, cell.timestamp_micros = "a", qualifier, value, when
            answered = 0
            for response in client.table_data_client.mutate_rows(request=messages.MutateRowsRequest.wrap(request)):
                for answer in messages.MutateRowsResponse.pb(response).entries:
                    answered += 1
                    if answer.status.code != 0:
                        raise RuntimeError("the raw reference loop had a row refused")
            if answered != len(request.entries):
                raise RuntimeError("the raw reference loop had rows unanswered")

    return timed(write_all)


def bare_put_multiple(uri: str, rows: list[Activity]) -> float:
    """The HBase ceiling: the same rows, built and sent with a bare Thrift 2 client
    (thriftpy2, THBaseService.putMultiple); seconds."""
    import json

    from orion.store.bigtable import activity_row_key
    from orion.store.hbase import hbase_thrift, parse_hbase_uri, thrift_client

    host, port, table = parse_hbase_uri(uri)
    fresh_table(uri)
    thrift = hbase_thrift()
    client = thrift_client(host, port)

    def write_all():
        for start in range(0, len(rows), MUTATE_BATCH):
            puts = []
            for a in rows[start:start + MUTATE_BATCH]:
                when = max(a.occurred_at, 0)
                puts.append(thrift.TPut(activity_row_key(a.tenant, a.lead_id, a.occurred_at, a.event_id), [
                    thrift.TColumnValue(b"a", b"type", a.type.encode("utf-8"), when),
                    thrift.TColumnValue(b"a", b"attributes", json.dumps(
                        a.attributes, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8"), when),
                    thrift.TColumnValue(b"a", b"occurred_at", str(a.occurred_at).encode("ascii"), when),
                ]))
            client.putMultiple(table.encode("ascii"), puts)

    try:
        return timed(write_all)
    finally:
        client.close()


def sink_pipeline(uri: str, rows: int, index: bool, store: bool = True) -> float:
    """The graph's sink in a bounded pipeline generating the same rows; seconds."""
    from orion.transforms.sinks import WriteActivities

    fresh_table(uri)
    pipeline = beam.Pipeline()
    generated = (pipeline
                 | "Chunks" >> beam.Create(list(range(0, rows, CHUNK)))
                 | "Generate" >> beam.FlatMap(_chunk, rows))
    if store:
        generated | "WriteActivities" >> WriteActivities(uri, index=index)
    else:
        generated | "Discard" >> beam.Map(lambda a: None)

    def run():
        pipeline.run().wait_until_finish()

    return timed(run)


# --- (b) the bootstrap --------------------------------------------------------------


def legacy_database(mysql: MariaDBServer, rows: list[Activity]) -> tuple[str, Callable[[], None]]:
    """A fresh database on `mysql` holding `rows` in the legacy schema; (URI, drop)."""
    import json

    from orion.store import open_store

    name = f"orion_bench_{uuid.uuid4().hex[:10]}"
    admin = mysql.connect()
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    uri = mysql.uri(name)
    with open_store(uri) as store:
        store.init()
    values = [(a.tenant, a.event_id, a.lead_id, a.type, a.occurred_at, json.dumps(a.attributes)) for a in rows]
    with admin.cursor() as cursor:
        cursor.execute(f"USE `{name}`")
        for start in range(0, len(values), 10_000):
            cursor.executemany("INSERT INTO activities (tenant, event_id, lead_id, type, occurred_at, attributes) "
                               "VALUES (%s, %s, %s, %s, %s, %s)", values[start:start + 10_000])

    def drop():
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()

    return uri, drop


def bootstrap_run(source_uri: str, workers: int, verify: bool, workdir: str,
                  target: Callable[[], str] = bigtable_uri) -> tuple[float, int]:
    """One bootstrap into a fresh table (`target()` names it); (seconds, rows written).
    Raises on a failed verification."""
    from orion.migration import plan_bootstrap
    from orion.pipelines.bootstrap import BootstrapSettings, run_bootstrap

    started = time.perf_counter()
    plan = plan_bootstrap(source_uri, target(), 16)
    settings = BootstrapSettings(dead_letter_prefix=os.path.join(workdir, "dead"), workers=workers,
                                 verify=verify, progress_every=3600)
    with open(os.devnull, "w") as quiet:
        verification, totals = run_bootstrap(plan, settings, out=quiet)
    seconds = time.perf_counter() - started
    if verify and not verification.ok:
        raise RuntimeError("the benchmark's bootstrap failed its verification:\n" + verification.render())
    return seconds, totals.get("stored", 0)


# --- (c) history latency ------------------------------------------------------------


def history_latencies(uri: str, reads: int) -> dict[str, tuple[float, float]]:
    """p50 and p99 (ms) of a full history read and of the newest 100, for a lead with
    HISTORY_ROWS activities written first."""
    from orion.store import open_store

    lead = [Activity(f"h-{n:05d}", "acme", "big-lead", TYPES[n % 3], T0 + n * 60_000, {"n": n, "url": "/p"})
            for n in range(HISTORY_ROWS)]
    found: dict[str, tuple[float, float]] = {}
    with open_store(uri) as store:
        store.init()
        store.write(lead)
        if len(store.history("acme", "big-lead")) != HISTORY_ROWS:
            raise RuntimeError(f"{uri}: the lead's history is incomplete")
        for name, limit in (("all 10,000", None), ("newest 100", 100)):
            samples = []
            for _ in range(reads):
                started = time.perf_counter()
                store.history("acme", "big-lead", limit=limit)
                samples.append((time.perf_counter() - started) * 1000)
            samples.sort()
            found[name] = (statistics.median(samples), samples[min(len(samples) - 1, round(0.99 * (len(samples) - 1)))])
    return found


# --- the run ------------------------------------------------------------------------


class BackendFigures(NamedTuple):
    """Seconds per run of each measurement of one backend (lists: one per repetition)."""

    ceiling: list
    sink: list
    with_index: float
    copy1: list
    copy2: list
    full: float
    init: float  # creating the store's three tables, which every bootstrap run includes


def hbase_run(hbase: HBaseServer, data: list[Activity], source_uri: str, repetitions: int,
              workdir: str) -> BackendFigures:
    """The sink and bootstrap measurements on HBase, each interleaved with the ceiling."""
    rows = len(data)

    def fresh() -> str:
        return hbase_uri(hbase)

    # Warm up: HBase's JVMs compile their write path as it runs, and a ceiling measured
    # later in the run would otherwise meet a faster server than the first sink did.
    for _ in range(2):
        bare_put_multiple(fresh(), data)
        sink_pipeline(fresh(), rows, index=False)
    ceiling, sink, copy1, copy2 = [], [], [], []
    for repetition in range(repetitions):
        ceiling.append(bare_put_multiple(fresh(), data))
        sink.append(sink_pipeline(fresh(), rows, index=False))
        print(f"  HBase round {repetition + 1}: ceiling {rows / ceiling[-1]:,.0f} rows/s, "
              f"sink {rows / sink[-1]:,.0f} rows/s", file=sys.stderr)
    with_index = sink_pipeline(fresh(), rows, index=True)
    for repetition in range(repetitions):
        ceiling.append(bare_put_multiple(fresh(), data))
        copy1.append(bootstrap_run(source_uri, 1, False, workdir, fresh)[0])
        copy2.append(bootstrap_run(source_uri, 2, False, workdir, fresh)[0])
        print(f"  HBase round {repetition + 1}: ceiling {rows / ceiling[-1]:,.0f} rows/s, bootstrap copy "
              f"{rows / copy1[-1]:,.0f} (1 worker) / {rows / copy2[-1]:,.0f} (2) rows/s", file=sys.stderr)
    full = bootstrap_run(source_uri, 1, True, workdir, fresh)[0]
    init = min(timed(lambda: fresh_table(fresh())) for _ in range(3))
    return BackendFigures(ceiling, sink, with_index, copy1, copy2, full, init)


def hbase_lines(rows: int, figures: BackendFigures, repetitions: int, verdict: Callable[[float, float], str],
                bigtable_copy: float, bigtable_sink_to_raw: float, beam_alone: float) -> list[str]:
    best_ceiling = rows / min(figures.ceiling)
    best_sink, best_copy1, best_copy2 = rows / min(figures.sink), rows / min(figures.copy1), rows / min(figures.copy2)
    return [
        "### HBase",
        "",
        f"The same {rows:,} activities into fresh tables of a standalone HBase 2.6 (master, region server and "
        "ZooKeeper in one JVM, root directory on the local disk) through its Thrift 2 server, on this machine "
        "(orion/testing/hbase.py). Ceiling: a bare Thrift 2 loop (thriftpy2) building the same rows (key, three "
        f"cells, explicit timestamps) and sending them with `putMultiple`, {MUTATE_BATCH} per request, measured "
        f"in the same run. Best of {repetitions}, interleaved with the ceiling.",
        "",
        "| what | rows/s | ratio to ceiling |",
        "| --- | ---: | ---: |",
        f"| ceiling: bare putMultiple loop | {best_ceiling:,.0f} | 1.00 |",
        f"| graph sink: WriteActivities, no index | {best_sink:,.0f} | {best_sink / best_ceiling:.2f} |",
        f"| graph sink + IndexActivities | {rows / figures.with_index:,.0f} | "
        f"{rows / figures.with_index / best_ceiling:.2f} |",
        f"| bootstrap copy MySQL -> HBase (read, convert, write, index), 1 worker | {best_copy1:,.0f} | "
        f"{best_copy1 / best_ceiling:.2f} |",
        f"| bootstrap copy, 2 worker processes | {best_copy2:,.0f} | {best_copy2 / best_ceiling:.2f} |",
        f"| bootstrap with its verification (scan of source and target), 1 worker | {rows / figures.full:,.0f} | "
        f"{rows / figures.full / best_ceiling:.2f} |",
        "",
        f"- Sink target, at least 0.8 of the ceiling: {verdict(best_sink / best_ceiling, 0.8)}.",
        f"- Bootstrap target, at least 0.7 of the ceiling (copy, best worker count): "
        f"{verdict(max(best_copy1, best_copy2) / best_ceiling, 0.7)}.",
        "- This ceiling is a bare Thrift loop with no client wrappers, the counterpart of Bigtable's raw reference "
        f"rather than of its ceiling: against that reference the Bigtable sink reaches {bigtable_sink_to_raw:.2f} "
        f"in this run, the HBase sink {best_sink / best_ceiling:.2f} of this ceiling. Both sink times include "
        f"Beam's start-up and the pipeline's own work (Beam alone, no store: {beam_alone:,.0f} rows/s).",
        f"- Every bootstrap time above includes creating the store's three tables, as `orion bootstrap` does "
        f"(`init`): {figures.init:.1f} s on this HBase (a table is created by the master and opened by the "
        f"region server), where the emulator takes none; {rows:,} rows at the ceiling's rate take "
        f"{rows / best_ceiling:.1f} s. The rest is the pipeline's own (Beam's start-up, the MySQL reads, the "
        f"conversion, the index): the same copy into the Bigtable emulator ran at {bigtable_copy:,.0f} rows/s "
        "in this run.",
        "",
    ]


def run(rows: int, repetitions: int, history_reads: int, command: str = "make bench-store") -> str:
    from orion.testing.emulators import BigtableEmulator

    data = activities(rows)
    # The redo log at the server's default size (96M), as a normal installation has it.
    mysql = start_or_reuse(log_file_size="96M")
    print(f"MariaDB at {mysql.address}", file=sys.stderr)
    workdir = tempfile.mkdtemp(prefix="orion-bench-store-")
    drop = None
    try:
        with BigtableEmulator.start() as emulator:
            os.environ[BigtableEmulator.env_var] = emulator.host
            print(f"emulator at {emulator.host}; {rows:,} rows", file=sys.stderr)
            sink_pipeline(bigtable_uri(), min(rows, 2 * CHUNK), index=False)  # warm up imports and channels
            ceiling, raw, sink, beam_only = [], [], [], []
            for repetition in range(repetitions):
                ceiling.append(bare_mutate_rows(bigtable_uri(), data))
                raw.append(raw_mutate_rows(bigtable_uri(), data))
                sink.append(sink_pipeline(bigtable_uri(), rows, index=False))
                print(f"  round {repetition + 1}: ceiling {rows / ceiling[-1]:,.0f} rows/s, raw {rows / raw[-1]:,.0f} rows/s, "
                      f"sink {rows / sink[-1]:,.0f} rows/s", file=sys.stderr)
            beam_only.append(sink_pipeline(bigtable_uri(), rows, index=False, store=False))
            with_index = sink_pipeline(bigtable_uri(), rows, index=True)
            print(f"  sink with index {rows / with_index:,.0f} rows/s", file=sys.stderr)

            source_uri, drop = legacy_database(mysql, data)
            copy1, copy2, full = [], [], []
            for repetition in range(repetitions):
                ceiling.append(bare_mutate_rows(bigtable_uri(), data))
                raw.append(raw_mutate_rows(bigtable_uri(), data))
                copy1.append(bootstrap_run(source_uri, 1, False, workdir)[0])
                copy2.append(bootstrap_run(source_uri, 2, False, workdir)[0])
                print(f"  round {repetition + 1}: ceiling {rows / ceiling[-1]:,.0f} rows/s, raw {rows / raw[-1]:,.0f}, bootstrap copy "
                      f"{rows / copy1[-1]:,.0f} (1 worker) / {rows / copy2[-1]:,.0f} (2) rows/s", file=sys.stderr)
            full.append(bootstrap_run(source_uri, 1, True, workdir)[0])

            latencies = {}
            latencies["sqlite"] = history_latencies(f"sqlite:///{workdir}/history.db", history_reads)
            mysql_history = source_uri  # the legacy schema is the MySQL store's own
            latencies["mysql"] = history_latencies(mysql_history, history_reads)
            latencies["bigtable"] = history_latencies(bigtable_uri(), history_reads)

        with HBaseServer(os.path.join(workdir, "hbase")) as hbase:
            print(f"HBase Thrift 2 server at {hbase.address}", file=sys.stderr)
            hbase_figures = hbase_run(hbase, data, source_uri, repetitions, workdir)
            latencies["hbase"] = history_latencies(hbase_uri(hbase), history_reads)
    finally:
        try:
            if drop is not None:
                drop()
        finally:
            mysql.stop()
            shutil.rmtree(workdir, ignore_errors=True)

    best_ceiling, best_raw = rows / min(ceiling), rows / min(raw)
    best_sink, best_copy1, best_copy2 = rows / min(sink), rows / min(copy1), rows / min(copy2)
    sink_ratio = best_sink / best_ceiling
    copy_ratio = max(best_copy1, best_copy2) / best_ceiling

    def verdict(ratio: float, target: float) -> str:
        return f"**{'met' if ratio >= target else 'not met'}** ({ratio:.2f})"

    lines = [
        "## Store: Bigtable and HBase sinks, bootstraps, history reads",
        "",
        measured_line(command),
        "",
        "### Bigtable",
        "",
        f"{rows:,} activities ({LEADS:,} leads, 2 tenants, 3 types, small JSON attributes) into fresh tables of "
        "the Bigtable emulator (cbtemulator) on this machine; DirectRunner in-process unless a worker count is "
        f"given. Ceiling: a bare google-cloud-bigtable `mutate_rows` loop building the same rows (key, three "
        f"cells, explicit timestamps), {MUTATE_BATCH} per request, measured in the same run. Pipeline times run "
        f"from `run()` to the end, Beam's start-up included. Best of {repetitions}, interleaved with the ceiling.",
        "",
        "| what | rows/s | ratio to ceiling |",
        "| --- | ---: | ---: |",
        f"| ceiling: bare mutate_rows loop | {best_ceiling:,.0f} | 1.00 |",
        f"| raw reference: the same loop with raw protobuf requests, as the store builds them (not a target) | "
        f"{best_raw:,.0f} | {best_raw / best_ceiling:.2f} |",
        f"| graph sink: WriteActivities, no index | {best_sink:,.0f} | {sink_ratio:.2f} |",
        f"| graph sink + IndexActivities (one index mutation per lead, type and day touched) | {rows / with_index:,.0f} | "
        f"{rows / with_index / best_ceiling:.2f} |",
        f"| Beam alone: the same pipeline generating the rows, no store | {rows / min(beam_only):,.0f} | "
        f"{rows / min(beam_only) / best_ceiling:.2f} |",
        f"| bootstrap copy MySQL -> Bigtable (read, convert, write, index), 1 worker | {best_copy1:,.0f} | "
        f"{best_copy1 / best_ceiling:.2f} |",
        f"| bootstrap copy, 2 worker processes | {best_copy2:,.0f} | {best_copy2 / best_ceiling:.2f} |",
        f"| bootstrap with its verification (scan of source and target), 1 worker | {rows / min(full):,.0f} | "
        f"{rows / min(full) / best_ceiling:.2f} |",
        "",
        f"- Sink target, at least 0.8 of the ceiling: {verdict(sink_ratio, 0.8)}.",
        f"- Bootstrap target, at least 0.7 of the ceiling (copy, best worker count): {verdict(copy_ratio, 0.7)}.",
        f"- Against the raw reference instead (no target set): sink {best_sink / best_raw:.2f}, bootstrap copy "
        f"{max(best_copy1, best_copy2) / best_raw:.2f}. The store sends raw protobuf requests, so the "
        "ceiling, which pays for the client's proto-plus wrappers, no longer bounds it.",
        "",
        *hbase_lines(rows, hbase_figures, repetitions, verdict, max(best_copy1, best_copy2), best_sink / best_raw,
                     rows / min(beam_only)),
        f"History of a lead with {HISTORY_ROWS:,} activities, `store.history(tenant, lead)`, {history_reads} reads "
        "each, milliseconds:",
        "",
        "| backend | all 10,000 p50 | all 10,000 p99 | newest 100 p50 | newest 100 p99 |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for backend, found in latencies.items():
        (all50, all99), (new50, new99) = found["all 10,000"], found["newest 100"]
        lines.append(f"| {backend} | {all50:,.1f} | {all99:,.1f} | {new50:,.1f} | {new99:,.1f} |")
    lines.append("")
    lines.append("(MySQL, Bigtable and HBase on this machine, through their real clients; sqlite embedded. p99 of "
                 f"{history_reads} samples is close to the maximum.)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="activities per run (default %(default)s)")
    parser.add_argument("--repetitions", type=int, default=DEFAULT_REPETITIONS)
    parser.add_argument("--history-reads", type=int, default=HISTORY_READS)
    parser.add_argument("--no-write", action="store_true", help="print the section, leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    defaults = (args.rows, args.repetitions, args.history_reads) == (DEFAULT_ROWS, DEFAULT_REPETITIONS, HISTORY_READS)
    command = "make bench-store" if defaults else (
        f"make bench-store ARGS='--rows {args.rows} --repetitions {args.repetitions} "
        f"--history-reads {args.history_reads}'")
    section = run(args.rows, args.repetitions, args.history_reads, command)
    print(section)
    if not args.no_write:
        write_section("store", section)


if __name__ == "__main__":
    main()

"""Launching the activity graph as a PyFlink DataStream job, on the same engine-neutral
core as the Beam graph (`orion.flink.functions` are the adapters):

    source ─► ReadActivityFiles ─► key by (tenant, lead) ─► LeadStep ─┬─► outcomes ─► WriteOutcomes
              / ParseActivities      ▲                    (one step   ├─► STORE ─► WriteActivities (store, index)
              │                      │                     per lead)  ├─► PROFILES ─► WriteProfiles (store)
              │   WakeUps ───────────┘                                ├─► EMAILS ─► AssembleEmails ─┐  with an outbox:
              │   (bounded, with an outbox: stored leads              ├─► OUTBOX: held emails,      ├─► QueueEmails
              │    whose flow wait is due by the horizon)             │   webhook calls ────────────┘
              │                                                       ├─► outcomes, STORE, emails, OUTBOX ─► RollUp
              │                                                       │   (minutes ─► hours and days, each writing its rows)
              │ DEAD                                                  │
              └───────────────────────────────────────────────────────┴─► DEAD, every stage's ─► WriteDeadLetters

LeadStep is the one stateful step per lead (orion.leadstep): each activity is evaluated
once, in event-time order, and, with an outbox, the campaign flows it qualifies the lead
for run inline (waits are event-time timers). A lead new to the job is seeded from its
profile in the store; every change is written back (WriteProfiles). What the steps do
(stored activities, outcomes, queued and held emails, webhook calls) is rolled up per
tenant and minute, hour and day into the roll-up store beside the activities, as the
Beam graph does (`orion.flink.rollups`; a store with no roll-up tables, hbase://, gets
none).

Elements cross between the Python functions (through the JVM) in batches: the readers
hand LeadStep one LeadBatch per lead (its activities of a file chunk or a payload), and
each stream after LeadStep carries lists, what one call emitted to that output
(docs/flink.md, "Speed").

Sources: JSONL files (bounded: each lead is replayed once, fully ordered, at the end of
input, then the flow waits due by the horizon, the input's newest activity, resume; a
lead not in the input whose stored profile has such a wait is woken too), a directory
monitored for new files (unbounded, `watch=True`), or a Kafka topic (unbounded; the
connector jar comes from orion.jars unless `jars` names one). Unbounded sources get a
bounded-out-of-orderness watermark equal to the allowed lateness.

Failover: the store, profile and outbox writes are idempotent, their batches kept in
keyed state as JSON text; the outcome and dead-letter files go through Flink's FileSink,
committed at checkpoints (a bounded job's at the end of its input), so a restart from a
checkpoint writes no line twice. Unbounded jobs checkpoint every 10 s by default, into
`checkpoint_dir` (kept when the job is cancelled or fails; `from_savepoint` takes that
directory and restores its newest checkpoint) or OUT_DIR/.flink-checkpoints; a failed
job restarts from its last checkpoint (fixed delay, `restart_attempts` times).

Runs on a local mini-cluster by default; with `flink_master` (HOST:PORT of a JobManager's
REST endpoint) it is submitted to that cluster, with orion's code and the flink-python jar
shipped with it, and its Python functions run in process mode on the TaskManagers. The
Python workers run this very interpreter (`python.executable` = sys.executable) unless
`python_executable` / `python_archive` name another: what a TaskManager needs is
in docs/flink.md.

    .venv/bin/python -m orion.runners.flink                                # samples, into ./orion-data/
    .venv/bin/python -m orion.runners.flink --events 'in/*.jsonl' --parallelism 2
    .venv/bin/python -m orion.runners.flink --outbox sqlite:///orion-data/outbox.db   # with campaign flows
    .venv/bin/python -m orion.runners.flink --events in/ --watch --checkpoint-interval 10 \\
        --savepoint-dir /tmp/savepoints --duration 60     # stops with a savepoint
    .venv/bin/python -m orion.runners.flink --events in/ --watch --from-savepoint /tmp/savepoints/savepoint-...
    .venv/bin/python -m orion.runners.flink --events in/ --watch --checkpoint-dir /tmp/checkpoints \
        --from-savepoint /tmp/checkpoints                  # the newest checkpoint a cancelled job kept
    .venv/bin/python -m orion.runners.flink --kafka-servers 127.0.0.1:9092 --kafka-topic activities --parallelism 2
    .venv/bin/python -m orion.runners.flink --flink-master 127.0.0.1:8081 --detach   # on a cluster
"""
from __future__ import annotations

import argparse
import atexit
import collections
import contextlib
import functools
import glob
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable, NamedTuple
from urllib.parse import urlsplit

# The run's settings and the summary are engine-neutral, shared with the Beam runners:
# nothing here imports Beam. (FlinkOptions is importable from here too.)
from orion.flink.cluster import (
    ClusterError, keep_lineage, lineage_of, newest_checkpoint, restore_path, savepoint_lineage,
)
from orion.leadstep import END_OF_TIME_MS
from orion.settings import (
    DEAD_LETTERS_NAME, OUTCOMES_NAME, FlinkOptions, RunConfig, clear_previous_outputs, effective_store_uri, is_remote,
)
from orion.store.rollups_opening import rollup_store_uri
from orion.summary import campaigns_fired, render_summary

COUNTERS_DIR = ".flink-counters"  # under the output directory: each function's counts
CHECKPOINTS_DIR = ".flink-checkpoints"  # and the checkpoints, without a --checkpoint-dir
JSONL_SUFFIX = ".jsonl"
KAFKA_CONNECTOR = "flink-sql-connector-kafka"  # the jar's name starts with this
PYTHON_WORKER_MODE = "_python_worker_execution_mode"  # PyFlink's switch: loopback or process
SHARDS_PER_INSTANCE = 2  # sink shards per parallel instance: spreads key groups evenly
PYTHON_STATE_CACHE = 20_000  # python.state.cache-size unless FlinkOptions.state_cache_size says
MISSING_FLINK = (
    "PyFlink cannot start a Flink cluster here: {error}\n"
    "Flink needs Java 17 (apt-get install openjdk-17-jre-headless, or JAVA_HOME pointing at "
    "a JDK 17) and the apache-flink==2.3.0 package in this interpreter "
    "(pip install -e . installs it)."
)


class JobStreams(NamedTuple):
    """The job's streams, for callers that attach more."""

    outcomes: object  # DataStream of orion.rules Outcome (with an outbox: the flows' too)
    stored: object  # DataStream of activities to store (with an outbox: the flows' too)
    dead_letters: object  # DataStream of DeadLetter, from every stage
    emails: object | None = None  # with an outbox: DataStream of AssembledEmail
    profiles: object | None = None  # DataStream of orion.store.base.StoredProfile


class FlinkRun(NamedTuple):
    counters: dict[str, int]
    savepoint: str | None  # where the stopped job's savepoint is, if it made one


class FlinkUnavailable(RuntimeError):
    """Flink (Java, PyFlink) cannot start here; the message says what to install."""


# --- configuration ---------------------------------------------------------------------


def absolute_store_uri(uri: str) -> str:
    """sqlite:///relative.db -> sqlite:////absolute/relative.db: the Python workers of a
    Flink job do not run in the caller's directory."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + os.path.abspath(uri[len("sqlite:///"):])
    return uri


def job_store_uri(config: RunConfig) -> str:
    """The store the job writes and seeds leads from, as the Beam graph's
    (`effective_store_uri`: --store, or with --mode the legacy or migrating store), with
    local paths made absolute."""
    out_dir = config.out_dir if is_remote(config.out_dir) else Path(config.out_dir).resolve()
    local = config._replace(store_uri=absolute_store_uri(config.store_uri), out_dir=out_dir)
    return effective_store_uri(local)


def absolute_outbox_uri(uri: str) -> str:
    """The same for the outbox's file-based URIs (sqlite:///, eml:///)."""
    for scheme in ("sqlite", "eml"):
        prefix = f"{scheme}:///"
        if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
            return prefix + os.path.abspath(uri[len(prefix):])
    return uri


def _jar_url(jar: str) -> str:
    return jar if urlsplit(jar).scheme in ("file", "http", "https") else Path(jar).resolve().as_uri()


def flink_configuration(options: FlinkOptions, out_dir: Path | str | None = None):
    """The job's Flink configuration; `out_dir`, the run's output directory, is where
    its checkpoints go when no checkpoint_dir is given (`checkpointing`)."""
    from pyflink.common import Configuration

    conf = Configuration()
    # The workers must import orion's dependencies: run them on this interpreter, or on
    # the one inside the Python archive shipped with the job.
    conf.set_string("python.executable", options.python_executable or sys.executable)
    conf.set_string("python.client.executable", sys.executable)
    mode = execution_mode(options)
    conf.set_string("python.execution-mode", mode)
    if options.python_archive is not None:
        conf.set_string("python.archives", _archive_spec(options.python_archive))
    if mode == "thread":
        # Thread mode embeds CPython in the Flink JVM, which starts it from the base
        # installation, not this virtual environment: give it this interpreter's path,
        # and the directory orion itself is imported from. An editable install finds
        # orion through an import hook that the embedded interpreter does not load, so
        # without it the job would import orion only when started from the checkout.
        path = [os.path.abspath(entry) for entry in sys.path if os.path.isdir(entry or os.curdir)]
        package_root = str(Path(__file__).resolve().parent.parent.parent)
        if package_root not in path:
            path.insert(0, package_root)
        conf.set_string("python.pythonpath", os.pathsep.join(path))
    if options.bundle_size is not None:
        conf.set_string("python.fn-execution.bundle.size", str(options.bundle_size))
    # Process mode caches this many keyed states in each Python worker and writes one
    # back to the JVM, a round trip, whenever it makes room; Flink's default of 1,000
    # is a few hundred leads of LeadStep's three states.
    conf.set_string("python.state.cache-size", str(options.state_cache_size or PYTHON_STATE_CACHE))
    if options.flink_master is not None:
        host, _, port = options.flink_master.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--flink-master is HOST:PORT (the JobManager's REST port), not {options.flink_master!r}")
        conf.set_string("execution.target", "remote")
        conf.set_string("rest.address", host)
        conf.set_string("rest.port", port)
    if options.from_savepoint is not None:
        conf.set_string("execution.state-recovery.path", restore_path(options.from_savepoint))
    if options.savepoint_dir is not None:
        conf.set_string("execution.checkpointing.savepoint-dir", _directory_uri(options.savepoint_dir))
    jars = [_jar_url(jar) for jar in job_jars(options)]
    if options.flink_master is not None:
        # A cluster started from Flink's own scripts has no flink-python on its class path
        # (the distribution keeps it in opt/): the job brings it, as `flink run -py` does.
        jars.append(flink_python_jar().as_uri())
    if jars:
        conf.set_string("pipeline.jars", ";".join(jars))
    _restart_strategy(conf, options)
    checkpointing(conf, options, out_dir)
    return conf


def job_jars(options: FlinkOptions) -> tuple[str, ...]:
    """The connector jars the job needs: --jars, and for a Kafka topic Flink's Kafka
    connector (flink-sql-connector-kafka, from orion.jars: fetched from Maven Central
    once, then cached) unless --jars names one. FlinkUnavailable when it can be
    neither found nor fetched."""
    jars = tuple(options.jars)
    if options.kafka_topic is None or any(KAFKA_CONNECTOR in Path(urlsplit(jar).path).name for jar in jars):
        return jars
    from orion.jars import JarFetchError, bundle_jar

    try:
        return (*jars, str(bundle_jar("flink-kafka", KAFKA_CONNECTOR)))
    except JarFetchError as error:
        raise FlinkUnavailable(f"reading Kafka needs Flink's Kafka connector: {error}; or pass its jar with "
                               f"--jars {KAFKA_CONNECTOR}-VERSION.jar") from error


def _directory_uri(directory: str | Path) -> str:
    """A directory as the URI Flink's file systems take: a local path made absolute,
    a URL (gs://, s3://) as it is."""
    return str(directory) if is_remote(directory) else Path(directory).resolve().as_uri()


def _restart_strategy(conf, options: FlinkOptions) -> None:
    """A fixed-delay restart strategy, whether or not the job checkpoints (Flink's own
    default is none without checkpoints and endless restarts with them): a failed task
    restarts the job from its last checkpoint `restart_attempts` times, `restart_delay_s`
    apart, then the job fails."""
    if options.restart_attempts <= 0:
        conf.set_string("restart-strategy.type", "none")
        return
    conf.set_string("restart-strategy.type", "fixed-delay")
    conf.set_string("restart-strategy.fixed-delay.attempts", str(options.restart_attempts))
    conf.set_string("restart-strategy.fixed-delay.delay", f"{int(options.restart_delay_s * 1000)} ms")


def checkpointing(conf, options: FlinkOptions, out_dir: Path | str | None) -> None:
    """Periodic checkpoints, when the job takes them (FlinkOptions.checkpoint_interval),
    to files: into `checkpoint_dir`, kept when the job is cancelled or fails for good
    (resume with --from-savepoint DIR: its newest), else into OUT_DIR/.flink-checkpoints,
    removed when the job ends. Not in the JobManager's memory, Flink's default, which
    refuses a checkpoint whose state passes 5 MB (that only without an out_dir)."""
    interval = options.checkpoint_interval
    if interval is None:
        return
    conf.set_string("execution.checkpointing.interval", f"{int(interval * 1000)} ms")
    if options.checkpoint_dir is not None:
        directory, retention = options.checkpoint_dir, "RETAIN_ON_CANCELLATION"
    elif out_dir is not None:
        base = str(out_dir).rstrip("/") if is_remote(out_dir) else str(Path(out_dir).resolve())
        directory, retention = f"{base}/{CHECKPOINTS_DIR}", "NO_EXTERNALIZED_CHECKPOINTS"
    else:
        return
    conf.set_string("execution.checkpointing.storage", "filesystem")
    conf.set_string("execution.checkpointing.dir", _directory_uri(directory))
    conf.set_string("execution.checkpointing.externalized-checkpoint-retention", retention)


def execution_mode(options: FlinkOptions) -> str:
    """python.execution-mode of the job: the option's on the local mini-cluster; always
    `process` on a cluster. In thread mode a TaskManager embeds one CPython for its whole
    life: the first job's interpreter and modules stay loaded, while the job's shipped
    files are deleted when that job ends, so a later job runs stale code or fails to
    import a module the first one did not load. Process mode starts the Python workers
    afresh for each job, from the job's own python.executable and files."""
    if options.flink_master is not None or options.python_archive is not None:
        return "process"
    return options.execution_mode


def _archive_spec(archive: str) -> str:
    """python.archives: a local archive made absolute; `ARCHIVE#DIR` keeps its target
    directory (the name python.executable is relative to on the TaskManager)."""
    path, hash_, target = archive.partition("#")
    path = path if urlsplit(path).scheme else os.path.abspath(path)
    return f"{path}#{target}" if hash_ else path


def flink_python_jar() -> Path:
    """flink-python-*.jar of the apache-flink package: the Python operators' classes."""
    from pyflink.find_flink_home import _find_flink_home

    found = sorted(Path(_find_flink_home()).glob("opt/flink-python*.jar"))
    if not found:
        raise FlinkUnavailable(MISSING_FLINK.format(error="no opt/flink-python*.jar in the apache-flink package"))
    return found[-1]


@functools.lru_cache(maxsize=None)
def staged_package() -> str:
    """A copy of the orion package in a directory of its own, to ship with a job to a
    cluster: Flink puts a shipped directory itself on the workers' PYTHONPATH, so the
    package must sit inside it. Removed when this process exits (the job has uploaded it
    by then)."""
    staging = tempfile.mkdtemp(prefix="orion-job-")
    atexit.register(shutil.rmtree, staging, True)
    shutil.copytree(Path(__file__).resolve().parent.parent, Path(staging) / "orion",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return staging


def create_environment(options: FlinkOptions, out_dir: Path | str | None = None):
    """A StreamExecutionEnvironment (`out_dir`: see flink_configuration); raises
    FlinkUnavailable when Java or PyFlink is missing, with what to install."""
    try:
        from pyflink.datastream import RuntimeExecutionMode, StreamExecutionEnvironment

        with _workers_in_their_own_processes():
            conf = flink_configuration(options, out_dir)
            if options.flink_master is None:
                env = StreamExecutionEnvironment.get_execution_environment(conf)
            else:
                env = _remote_environment(conf)
            connectors = [_jar_url(jar) for jar in job_jars(options)]
            if connectors:
                # pipeline.jars ships them with the job; building the job here (a
                # KafkaSource) needs their classes in this JVM too.
                from pyflink.util.java_utils import add_jars_to_context_class_loader

                add_jars_to_context_class_loader(connectors)
    except ImportError as error:
        raise FlinkUnavailable(MISSING_FLINK.format(error=error)) from error
    except Exception as error:  # the gateway reports a missing java as a bare Exception
        if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
            raise FlinkUnavailable(MISSING_FLINK.format(error=f"no java on PATH ({error})")) from error
        raise
    # Streaming mode for files too: one set of semantics (timers at the end of event
    # time release bounded input) and savepoints for every job.
    env.set_runtime_mode(RuntimeExecutionMode.STREAMING)
    env.set_parallelism(options.parallelism)
    if options.flink_master is not None:
        # A cluster's workers import orion from the job's files, not from this checkout.
        env.add_python_file(staged_package())
    return env


def _remote_environment(conf):
    """An environment that submits to the cluster at rest.address:rest.port.
    StreamExecutionEnvironment.getExecutionEnvironment(conf), which PyFlink's
    get_execution_environment calls, returns a LocalStreamEnvironment whenever the
    program is not run by `flink run`, and that overrides execution.target with `local`:
    the job would start a mini-cluster here (and fail to bind the REST port the cluster
    holds). The plain constructor keeps the target: `remote`, Flink's REST client."""
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.java_gateway import get_gateway

    java_environment = get_gateway().jvm.org.apache.flink.streaming.api.environment.StreamExecutionEnvironment
    return StreamExecutionEnvironment(java_environment(conf._j_configuration))


# --- the job ---------------------------------------------------------------------------


def match_files(pattern: str) -> list[tuple[str, str]]:
    """(name as the dead letters cite it, absolute path) of each file the pattern names:
    the name is the path as given, as Beam's MatchFiles gives it."""
    found = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else ([pattern] if os.path.isfile(pattern) else [])
    if not found:
        raise FileNotFoundError(f"no files match {pattern!r}")
    return [(name, os.path.abspath(name)) for name in found]


def build_job(env, config: RunConfig, options: FlinkOptions, lineage: str | None = None) -> JobStreams:
    """Wire the job on `env`: source, parse, key by lead, the one step per lead, sinks.
    Every stateful step has a uid, so a savepoint maps onto a changed job.

    With `config.outbox_uri`, campaign flows run as in the Beam graph
    (orion/pipelines/activity_graph.py): LeadStep runs the flows of what qualifies
    inline, AssembleEmails renders the email requests, and QueueEmails queues the
    emails, held emails and webhook calls in the outbox. The activities flow steps
    generate are stored with the others, their outcomes join the outcomes, and flow and
    assembly failures join the dead letters. A bounded input then has a horizon (its
    newest activity, `input_horizon`): the waits due by it resume, those of leads not in
    the input too (`due_wake_ups`, read from the store before the job starts).

    Whenever the store keeps roll-ups (`rollup_store_uri`), the stored activities,
    outcomes and (with flows) outbox records are rolled up into it (orion.flink.rollups),
    with the Beam graph's dimensions and figures; refused rows join the dead letters.

    Unbounded input: the lead step writes each profile with the job's `lineage` (a new
    one when None), so an attempt restored from a checkpoint redoes a lead it lost with
    its state (orion.leadstep.Lineage)."""
    from pyflink.common import Duration, Types, WatermarkStrategy
    from pyflink.datastream.connectors.base import Sink
    from pyflink.java_gateway import get_gateway

    from orion.flink import functions as fn
    rules_dir = os.path.abspath(config.rules_dir)
    template_dirs = tuple(os.path.abspath(t) for t in config.template_dirs)
    counters_dir = str(counters_location(config.out_dir))
    store_uri = job_store_uri(config)
    run_flows = bool(config.outbox_uri)
    horizon = None

    if options.bounded:
        named_files = match_files(config.events)
        files = env.from_collection(named_files, type_info=Types.TUPLE([Types.STRING(), Types.STRING()]))
        parsed = (files.rebalance()
                  .process(fn.ReadActivityFiles(rules_dir, template_dirs, config.allowed_lateness_ms, counters_dir),
                           output_type=fn.PICKLED)
                  .name("ReadActivityFiles").uid("read-activity-files"))
        activities = parsed
        if run_flows:
            horizon = input_horizon(named_files, rules_dir, template_dirs, config.allowed_lateness_ms)
            wake_ups = [] if horizon is None else due_wake_ups(store_uri, horizon, rules_dir, template_dirs)
            if wake_ups:
                # As plain typed tuples: from_collection cannot hand Python objects over.
                due = (env.from_collection([tuple(wake_up) for wake_up in wake_ups], type_info=fn.WAKE_UP)
                       .name("DueLeads").uid("due-leads")
                       .map(fn.wake_up_of, output_type=fn.PICKLED).name("WakeUps").uid("wake-ups"))
                activities = parsed.union(due)
    else:
        payloads, source_name = _unbounded_source(env, config, options)
        parsed = (payloads
                  .process(fn.ParseActivities(rules_dir, template_dirs, source_name, counters_dir),
                           output_type=fn.PICKLED)
                  .name("ParseActivities").uid("parse-activities"))
        watermarks = (WatermarkStrategy
                      .for_bounded_out_of_orderness(Duration.of_millis(config.allowed_lateness_ms))
                      # A parallel instance with nothing to read must not hold the watermark
                      # back. (Before the assigner: PyFlink's with_idleness drops a Python one.)
                      .with_idleness(Duration.of_millis(max(1000, config.allowed_lateness_ms)))
                      .with_timestamp_assigner(fn.ActivityTime()))
        activities = parsed.assign_timestamps_and_watermarks(watermarks).name("EventTime").uid("event-time")
        if run_flows:
            # The leads waiting in a flow in the store when the job starts: a job that
            # replaced another without its savepoint still resumes their waits.
            wake_ups = due_wake_ups(store_uri, END_OF_TIME_MS, rules_dir, template_dirs)
            if wake_ups:
                waiting = (env.from_collection([tuple(wake_up) for wake_up in wake_ups], type_info=fn.WAKE_UP)
                           .name("WaitingLeads").uid("waiting-leads")
                           .map(fn.wake_up_of, output_type=fn.PICKLED).name("WaitingWakeUps").uid("waiting-wake-ups"))
                activities = activities.union(waiting)
    parse_dead = parsed.get_side_output(fn.DEAD)

    steps = (activities
             .key_by(fn.lead_key, key_type=fn.LEAD_KEY)
             .process(fn.LeadStep(rules_dir, template_dirs, dedup_span_ms=config.dedup_span_ms,
                                  bounded=options.bounded, run_flows=run_flows,
                                  max_cascade_depth=options.max_cascade_depth, lead_ttl_days=options.lead_ttl_days,
                                  horizon=horizon, seed_store_uri=store_uri, counters_dir=counters_dir,
                                  idle_release_ms=_idle_release_ms(config, options),
                                  max_pending=options.max_pending, restored=options.from_savepoint is not None,
                                  lineage=None if options.bounded else (lineage or new_lineage())),
                      output_type=fn.PICKLED)
             .name("LeadStep").uid("lead-step"))
    stored = steps.get_side_output(fn.STORE)
    profiles = steps.get_side_output(fn.PROFILES)

    shards = max(1, options.parallelism * SHARDS_PER_INSTANCE)
    discard = Sink(get_gateway().jvm.org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink())

    def write_lines(stream, name: str, label: str, uid: str) -> None:
        (stream
         .map(fn.output_lines, output_type=Types.STRING()).name(f"{label}Lines").uid(f"{uid}-lines")
         .sink_to(jsonl_file_sink(config.out_dir, name)).name(label).uid(uid))

    def write_in_batches(stream, shard_of, writer, name: str, uid: str):
        return (stream
                .key_by(shard_of, key_type=fn.SHARD_KEY)
                .process(fn.WriteInBatches(writer, options.batch_size, options.flush_after_ms, counters_dir),
                         output_type=fn.PICKLED)
                .name(name).uid(uid))

    emails = None
    dead_letter_parts = [parse_dead, steps.get_side_output(fn.DEAD)]
    if run_flows:
        emails = (steps.get_side_output(fn.EMAILS)
                  .process(fn.AssembleEmails(rules_dir, template_dirs, counters_dir=counters_dir),
                           output_type=fn.PICKLED)
                  .name("AssembleEmails").uid("assemble-emails"))
        write_in_batches(emails.union(steps.get_side_output(fn.OUTBOX)), fn.ByOutboxKey(shards),
                         fn.OutboxWriter(absolute_outbox_uri(config.outbox_uri)),
                         "QueueEmails", "queue-emails").sink_to(discard).name("EmailsQueued")
        dead_letter_parts.append(emails.get_side_output(fn.DEAD))

    dead_letter_parts.append(write_in_batches(stored, fn.ByLead(shards), fn.StoreWriter(store_uri),
                                              "WriteActivities", "write-activities"))
    dead_letter_parts.append(write_in_batches(profiles, fn.ByLead(shards), fn.ProfileWriter(store_uri),
                                              "WriteProfiles", "write-profiles"))
    rollups_uri = rollup_store_uri(store_uri) if config.rollups else None
    if rollups_uri is not None:
        # Roll-ups of what the steps did, as the Beam graph's (orion.flink.rollups); the
        # writer returns the dead letters of the rows the store refused.
        from orion.flink.rollups import attach_rollups

        rolled_up = [stored, steps] + ([emails, steps.get_side_output(fn.OUTBOX)] if run_flows else [])
        dead_letter_parts.append(attach_rollups(
            rolled_up, rollups_uri, rules_dir, template_dirs, config.allowed_lateness_ms, bounded=options.bounded,
            batch_size=options.batch_size, flush_after_ms=options.flush_after_ms, counters_dir=counters_dir))
    write_lines(steps, OUTCOMES_NAME, "WriteOutcomes", "outcome-files")
    dead_letters = dead_letter_parts[0].union(*dead_letter_parts[1:])
    write_lines(dead_letters, DEAD_LETTERS_NAME, "WriteDeadLetters", "dead-letter-files")
    return JobStreams(steps, stored, dead_letters, emails, profiles)


def jsonl_file_sink(out_dir: Path | str, name: str):
    """Flink's FileSink writing lines into `out_dir` (a local directory, or a URL such as
    gs://BUCKET/PATH that a Flink file system plugin serves) as `NAME-*.jsonl`.

    Exactly once: a part file is written hidden (`.NAME-....inprogress.*`) and only
    renamed into place, as `NAME-<uuid>-<n>.jsonl`, when a checkpoint that
    covers its lines completes (the rolling policy rolls every part file at each
    checkpoint). After a failure the job restores its last checkpoint and the lines
    since are written again into new part files; the old ones stay hidden, unfinished.
    A bounded job without checkpoints commits every file at the end of its input; with
    checkpoints, at the final checkpoint after its input ends."""
    from pyflink.common.serialization import Encoder
    from pyflink.datastream.connectors.file_system import BucketAssigner, FileSink, OutputFileConfig, RollingPolicy

    base = str(out_dir).rstrip("/") if is_remote(out_dir) else Path(out_dir).resolve().as_uri()
    names = OutputFileConfig.builder().with_part_prefix(name).with_part_suffix(JSONL_SUFFIX).build()
    return (FileSink.for_row_format(base, Encoder.simple_string_encoder("UTF-8"))
            .with_bucket_assigner(BucketAssigner.base_path_bucket_assigner())  # no sub-directories
            .with_output_file_config(names)
            .with_rolling_policy(RollingPolicy.on_checkpoint_rolling_policy())
            .build())


def counters_location(out_dir: Path | str) -> Path:
    """Where the functions write their counts: beside the outputs; for an output URL
    (gs://...), in this machine's temporary directory, a directory per URL."""
    if is_remote(out_dir):
        digest = hashlib.sha1(str(out_dir).encode("utf-8")).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"orion-flink-counters-{digest}"
    return Path(out_dir).resolve() / COUNTERS_DIR


def input_horizon(named_files: list[tuple[str, str]], rules_dir: str, template_dirs: tuple[str, ...],
                  allowed_lateness_ms: int) -> int | None:
    """The horizon of a bounded input: the newest occurred_at of its activities, the
    files read as ReadActivityFiles reads them (the same parser and replay lateness), so
    it is the Beam graph's too; None when there is no activity. Event time never passes
    it: waits due later stay in the leads' profiles for a later run."""
    from orion.activities import Activity
    from orion.flink.functions import open_compressed
    from orion.intake import read_lines
    from orion.rules.shared import shared_rules

    types = shared_rules(rules_dir, template_dirs).activity_types
    newest = None
    for name, path in named_files:
        with open_compressed(path) as lines:
            for found in read_lines(lines, types, name, allowed_lateness_ms):
                if isinstance(found, Activity) and (newest is None or found.occurred_at > newest):
                    newest = found.occurred_at
    return newest


def due_wake_ups(store_uri: str, horizon: int, rules_dir: str, template_dirs: tuple[str, ...]) -> list:
    """A WakeUp for each lead of the rules' tenants whose stored profile has a flow wait
    due by `horizon` (the store's `due_profiles`)."""
    from orion.leadstep import WakeUp
    from orion.rules.shared import shared_rules
    from orion.seeding import open_initialised_store

    tenants = sorted(shared_rules(rules_dir, template_dirs).tenants)
    store = open_initialised_store(store_uri)
    try:
        return [WakeUp(tenant, lead_id, wake_at) for tenant, lead_id, wake_at in store.due_profiles(horizon, tenants)]
    finally:
        store.close()


def _unbounded_source(env, config: RunConfig, options: FlinkOptions):
    """(payload stream, the name dead letters cite as their source)."""
    from pyflink.common import Duration, Types, WatermarkStrategy

    if options.kafka_topic is not None:
        from pyflink.common.serialization import SimpleStringSchema
        from pyflink.datastream.connectors.kafka import KafkaOffsetsInitializer, KafkaSource

        # The offsets read are part of every checkpoint: a restart (a failover, or
        # --from-savepoint) reads on from the offsets of the state it restores, so each
        # record is evaluated once. They are committed to the consumer group too, when a
        # checkpoint completes, for monitoring the group's lag; a job started afresh
        # reads the topic from its start (the leads' profiles make what they have been
        # through duplicates).
        source = (KafkaSource.builder()
                  .set_bootstrap_servers(options.kafka_servers)
                  .set_topics(options.kafka_topic)
                  .set_group_id(options.kafka_group)
                  .set_starting_offsets(KafkaOffsetsInitializer.earliest())
                  .set_value_only_deserializer(SimpleStringSchema())
                  .set_property("commit.offsets.on.checkpoint", "true")
                  .set_property("client.id.prefix", f"{options.kafka_group}-{options.kafka_topic}")
                  .build())
        stream = env.from_source(source, WatermarkStrategy.no_watermarks(), "Kafka", type_info=Types.STRING())
        return stream.uid("kafka-source"), f"kafka:{options.kafka_topic}"
    from pyflink.datastream.connectors.file_system import FileSource, StreamFormat

    directory = os.path.abspath(config.events)
    if not os.path.isdir(directory):
        raise NotADirectoryError(f"with watch, --events names a directory to monitor, not {config.events!r}")
    source = (FileSource.for_record_stream_format(StreamFormat.text_line_format(), directory)
              .monitor_continuously(Duration.of_millis(int(options.monitor_interval_s * 1000)))
              .build())
    stream = env.from_source(source, WatermarkStrategy.no_watermarks(), "MonitoredFiles", type_info=Types.STRING())
    return stream.uid("monitored-files"), config.events


def _idle_release_ms(config: RunConfig, options: FlinkOptions) -> int:
    if options.idle_release_s is not None:
        return int(options.idle_release_s * 1000)
    return max(1000, config.allowed_lateness_ms)


# --- running ---------------------------------------------------------------------------


def read_counters(out_dir: Path | str) -> dict[str, int]:
    """The counts every function instance wrote when it closed, summed."""
    totals: collections.Counter = collections.Counter()
    for path in counters_location(out_dir).glob("*.json"):
        totals.update(json.loads(path.read_text(encoding="utf-8")))
    return dict(totals)


def prepare_outputs(config: RunConfig) -> None:
    if not is_remote(config.out_dir):
        Path(config.out_dir).mkdir(parents=True, exist_ok=True)
    clear_previous_outputs(config.out_dir)
    shutil.rmtree(counters_location(config.out_dir), ignore_errors=True)


class FlinkJob:
    """A submitted job: wait for it, or stop it (with a savepoint) or cancel it."""

    def __init__(self, client, config: RunConfig):
        self.client = client
        self.config = config

    @property
    def job_id(self) -> str:
        return str(self.client.get_job_id())

    def status(self) -> str:
        """The job's state: RUNNING, FINISHED, CANCELED, FAILED, ..."""
        return self.client.get_job_status().result().name

    def wait(self, timeout_s: float | None = None) -> None:
        """Until the job finishes; raises if it failed."""
        future = self.client.get_job_execution_result()
        if timeout_s is None:
            future.result()
            return
        deadline = time.monotonic() + timeout_s
        while not future.done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Flink job did not finish within {timeout_s:.0f} s")
            time.sleep(0.2)
        future.result()

    def stop_with_savepoint(self, savepoint_dir: str, drain: bool = False) -> str:
        """Stop the job, taking a savepoint into `savepoint_dir`; returns its path.
        drain=True first advances event time to the end, which releases every buffered
        activity (no lead is left waiting; do it before changing the job's state layout)."""
        from pyflink.common.completable_future import CompletableFuture
        from pyflink.java_gateway import get_gateway

        target = Path(savepoint_dir).resolve().as_uri()
        # PyFlink 2.3's JobClient.stop_with_savepoint calls a Java overload that no longer
        # exists (the format argument became mandatory); call the Java client directly.
        canonical = get_gateway().jvm.org.apache.flink.core.execution.SavepointFormatType.CANONICAL
        path = CompletableFuture(
            self.client._j_job_client.stopWithSavepoint(drain, target, canonical), str).result()
        self._wait_ended()
        return path

    def cancel(self) -> None:
        self.client.cancel().result()
        self._wait_ended()

    def _wait_ended(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if self.status() in ("FINISHED", "CANCELED", "FAILED"):
                    return
            except Exception:  # the mini-cluster forgets a job once it is gone (a cluster does not)
                return
            time.sleep(0.2)


def new_lineage() -> str:
    return uuid.uuid4().hex


def job_lineage(options: FlinkOptions) -> str:
    """The lineage of the job to start: the one kept beside the checkpoint it restores
    (`keep_lineage`); for a savepoint, the lineage its job kept in `checkpoint_dir`
    (`savepoint_lineage`: a savepoint taken while the job ran, which then went on
    writing profiles); else a new one."""
    if options.from_savepoint is not None:
        restored = restore_path(options.from_savepoint)
        found = lineage_of(restored)
        if found is None and options.checkpoint_dir is not None:
            found = savepoint_lineage(restored, options.checkpoint_dir)
        if found is not None:
            return found
    return new_lineage()


def restoring(options: FlinkOptions) -> FlinkOptions:
    """`options` with --from-savepoint resolved (restore_path), once, before the job is
    built: the state it restores and the lineage it continues then come from the same
    checkpoint, whatever completes meanwhile, and a remote directory is listed once."""
    if options.from_savepoint is None:
        return options
    return options._replace(from_savepoint=restore_path(options.from_savepoint))


def start_flink(config: RunConfig, options: FlinkOptions, job_name: str = "orion") -> FlinkJob:
    """Submit the job without waiting for it (outputs of a previous run are cleared
    unless the job restores a savepoint, whose run they belong to). An unbounded job
    with a `checkpoint_dir` (local or a URL) keeps its lineage beside its checkpoints."""
    if options.from_savepoint is None:
        prepare_outputs(config)
    else:
        options = restoring(options)
        if not is_remote(config.out_dir):
            Path(config.out_dir).mkdir(parents=True, exist_ok=True)
    env = create_environment(options, config.out_dir)
    lineage = None if options.bounded else job_lineage(options)
    build_job(env, config, options, lineage)
    job = FlinkJob(env.execute_async(job_name), config)
    if lineage is not None and options.checkpoint_dir is not None:
        try:
            keep_lineage(options.checkpoint_dir, job.job_id, lineage)
        except (OSError, ClusterError) as err:  # the job runs: only a restore from its checkpoints starts a new lineage
            print(f"orion: the job's lineage was not kept beside its checkpoints ({err}); a job restored from "
                  "them will take the activities its leads went through since for replays", file=sys.stderr)
    return job


@contextlib.contextmanager
def _workers_in_their_own_processes():
    """On a local mini-cluster PyFlink would run the Python workers as threads of this
    process ("loopback", decided when the environment is created): they would share its
    GIL, not run `python.executable`, and PyFlink's operations would replace Beam's ParDo
    in this process, so a Beam pipeline run here afterwards fails. Process mode launches
    real worker processes on the project's interpreter."""
    previous = os.environ.get(PYTHON_WORKER_MODE)
    os.environ[PYTHON_WORKER_MODE] = "process"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(PYTHON_WORKER_MODE, None)
        else:
            os.environ[PYTHON_WORKER_MODE] = previous


def run_flink(config: RunConfig, parallelism: int = 1, checkpoint_interval: float | None = None,
              flink_master: str | None = None, savepoint_dir: str | None = None,
              from_savepoint: str | None = None, jars: tuple[str, ...] = (), *,
              options: FlinkOptions | None = None, clock: Callable[[], float] = time.monotonic,
              out=None) -> FlinkRun:
    """Run the job; print the summary; return the counters (and the savepoint the job
    stopped with). Bounded input runs to its end; unbounded input runs for
    config.duration_s (or until Ctrl-C), then stops with a savepoint into savepoint_dir
    when one is given, else is cancelled. Prints to `out` (default: sys.stdout as it is
    when called)."""
    out = sys.stdout if out is None else out
    if options is None:
        options = FlinkOptions(parallelism=parallelism, checkpoint_interval_s=checkpoint_interval,
                               flink_master=flink_master, savepoint_dir=savepoint_dir,
                               from_savepoint=from_savepoint, jars=tuple(jars))
    started = clock()
    job = start_flink(config, options)
    savepoint = None
    if options.bounded:
        job.wait()
    else:
        deadline = None if config.duration_s is None else started + config.duration_s
        try:
            while deadline is None or clock() < deadline:
                time.sleep(0.5)
        except KeyboardInterrupt:
            print("stopping ...", file=out)
        if options.savepoint_dir is not None:
            savepoint = job.stop_with_savepoint(options.savepoint_dir)
            print(f"savepoint:    {savepoint}", file=out)
        else:
            job.cancel()
            retained = None
            if options.checkpoint_dir is not None:
                with contextlib.suppress(ClusterError):  # a directory it cannot read says nothing here
                    retained = newest_checkpoint(options.checkpoint_dir)
            if retained is not None:
                print(f"checkpoint:   {retained} (resume with --from-savepoint {options.checkpoint_dir})", file=out)
    totals = read_counters(config.out_dir)
    print(render_summary(totals, clock() - started, campaigns_fired(config.out_dir)), file=out)
    if config.outbox_uri:
        print(f"outbox:       {config.outbox_uri}", file=out)
    return FlinkRun(totals, savepoint)


def run_from_args(config: RunConfig, args: argparse.Namespace) -> int:
    """`orion run --runner flink`: run the PyFlink job with the parsed options."""
    from orion.runners.flink_options import flink_options_from

    options = flink_options_from(args)
    try:
        if args.detach:
            job = start_flink(config, options)
            print(f"job id:       {job.job_id}\n"
                  f"submitted to: http://{options.flink_master} (the job runs on; stop it with "
                  f"`orion flink stop {job.job_id} --savepoint DIR --flink-master {options.flink_master}`)")
        else:
            run_flink(config, options=options)
    except (FlinkUnavailable, ClusterError) as error:
        print(f"orion: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    from orion.runners.flink_options import add_flink_arguments
    from orion.settings import DEFAULT_DATA_DIR, DEFAULT_STORE, SAMPLE_EVENTS, SAMPLE_RULES

    parser = argparse.ArgumentParser(prog="python -m orion.runners.flink", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", default=str(SAMPLE_EVENTS))
    parser.add_argument("--rules", default=str(SAMPLE_RULES))
    parser.add_argument("--templates", action="append", default=[])
    parser.add_argument("--store", default=DEFAULT_STORE)
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--allowed-lateness", type=float, default=60.0, metavar="SECONDS")
    parser.add_argument("--dedup-span", type=float, default=24.0, metavar="HOURS")
    parser.add_argument("--duration", type=float, metavar="SECONDS")
    parser.add_argument("--outbox", metavar="URI", help="run the campaign flows; queue their emails here")
    parser.add_argument("--no-rollups", dest="rollups", action="store_false", help="keep no analytics roll-ups")
    add_flink_arguments(parser)
    args = parser.parse_args(argv)
    config = RunConfig(
        rules_dir=args.rules, template_dirs=tuple(args.templates), events=args.events, subscription=None,
        store_uri=args.store, out_dir=args.out_dir, allowed_lateness_ms=int(args.allowed_lateness * 1000),
        dedup_span_ms=int(args.dedup_span * 3_600_000), duration_s=args.duration, beam_args=(),
        outbox_uri=args.outbox, rollups=args.rollups)
    return run_from_args(config, args)


if __name__ == "__main__":
    sys.exit(main())

"""Run settings and their defaults, for every engine and command, with no engine import:
where the samples are, where a run writes by default, what one run of the activity graph
is (`RunConfig`) and how the PyFlink job runs (`FlinkOptions`). The Beam runners, the
Flink job and the command line all read them from here, so a default is stated once.

Beam's own flags (--runner, --job_name, --project, ...) are not here: they go to Beam
unchanged, and Orion reads what it needs of them through `OrionOptions`
(orion/runners/beam_options.py).

    python -c "from orion.settings import RunConfig, FlinkOptions; print(RunConfig._fields, FlinkOptions())"
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import NamedTuple

from orion.sequencing import DEFAULT_ALLOWED_LATENESS_MS, DEFAULT_DEDUP_SPAN_MS

SAMPLES = Path(__file__).resolve().parent / "samples"
SAMPLE_RULES = SAMPLES / "rules"
SAMPLE_EVENTS = SAMPLES / "events.jsonl"
DEFAULT_DATA_DIR = Path("orion-data")
DEFAULT_STORE = f"sqlite:///{DEFAULT_DATA_DIR / 'activities.db'}"
DEFAULT_OUTBOX = f"sqlite:///{DEFAULT_DATA_DIR / 'outbox.db'}"

# How long a lead's keyed state lives after its last activity, on every engine (Beam: in
# event time; Flink: Flink's state TTL, in processing time). The lead's profile in the
# store outlives it: a lead that comes back is seeded from there.
DEFAULT_LEAD_TTL_DAYS = 400

# How deep campaign flows may trigger campaigns (orion.campaigns.flows).
DEFAULT_MAX_CASCADE_DEPTH = 5

# The most activities one lead may have waiting for release. One very hot lead (a bot)
# must not exhaust a worker's memory: past this, the engines release what the lead has
# buffered at once, in order, without waiting for the allowed lateness, and count it as
# `hot_lead_releases`; an activity of that lead arriving later than what was released
# is then `late`, a dead letter, as any late activity is. Nothing is dropped
# (orion.leadstep).
DEFAULT_MAX_PENDING = 10_000

# migration: which store serves a run; tenants: each tenant as the tenant registry says
MODES = ("legacy", "passive", "active", "tenants")

__all__ = [
    "DEFAULT_ALLOWED_LATENESS_MS", "DEFAULT_DATA_DIR", "DEFAULT_DEDUP_SPAN_MS", "DEFAULT_LEAD_TTL_DAYS",
    "DEFAULT_MAX_CASCADE_DEPTH", "DEFAULT_OUTBOX", "DEFAULT_STORE", "FlinkOptions", "MODES", "RunConfig",
    "DEAD_LETTERS_NAME", "OUTCOMES_NAME",
    "SAMPLE_EVENTS", "SAMPLE_RULES", "clear_previous_outputs", "effective_store_uri", "is_remote", "output_dir",
    "output_prefixes",
]


class RunConfig(NamedTuple):
    """One run of the activity graph, whichever engine runs it."""

    rules_dir: str
    template_dirs: tuple[str, ...]
    events: str | None  # a path or glob; None with a subscription
    subscription: str | None
    store_uri: str
    out_dir: Path | str  # a local Path, or a URL Beam's file systems write (gs://...): see output_dir
    allowed_lateness_ms: int
    dedup_span_ms: int
    duration_s: float | None  # streaming: stop after this long (None: until interrupted)
    beam_args: tuple[str, ...]
    outbox_uri: str | None = None  # campaign flows on: emails, held emails and webhooks go here
    mode: str | None = None  # migration: legacy | passive | active (None: store_uri alone)
    legacy_store_uri: str | None = None  # migration: the legacy MySQL store (mysql://...)
    # migration, mode tenants: re-read the tenant registry this often (None: the default, 10 s)
    tenant_refresh_s: float | None = None
    # Roll up what the graph does into the store's roll-up tables (orion.store.rollups_opening:
    # none for hbase://); False (--no-rollups): no roll-ups, for a job that needs no analytics.
    rollups: bool = True


# Flink job defaults.
DEFAULT_BATCH_SIZE = 500  # records a Flink sink hands its writer at once
DEFAULT_FLUSH_AFTER_MS = 500  # and the longest a record waits for its batch
# An unbounded job checkpoints this often unless told otherwise: its outcome and
# dead-letter files are committed at checkpoints, and a restart resumes from the last.
DEFAULT_STREAMING_CHECKPOINT_INTERVAL_S = 10.0
# A failed job restarts (from its last checkpoint, if it has one) this many times, this
# long apart, before it fails for good.
DEFAULT_RESTART_ATTEMPTS = 3
DEFAULT_RESTART_DELAY_S = 5.0


class FlinkOptions(NamedTuple):
    """How the Flink job runs; the graph's own settings are RunConfig's."""

    parallelism: int = 1
    # None: every DEFAULT_STREAMING_CHECKPOINT_INTERVAL_S for unbounded input (or with a
    # checkpoint_dir), no periodic checkpoints for bounded input (`checkpoint_interval`)
    checkpoint_interval_s: float | None = None
    # where checkpoints go and are kept when the job is cancelled or fails for good
    # (None: OUT_DIR/.flink-checkpoints, removed when the job ends)
    checkpoint_dir: str | None = None
    restart_attempts: int = DEFAULT_RESTART_ATTEMPTS  # 0: a failure fails the job
    restart_delay_s: float = DEFAULT_RESTART_DELAY_S
    flink_master: str | None = None  # HOST:PORT of a remote JobManager's REST endpoint
    savepoint_dir: str | None = None  # an unbounded job stops with a savepoint here
    # restore the job's state from this savepoint, retained checkpoint (chk-N), or the
    # newest retained checkpoint in this checkpoint directory
    from_savepoint: str | None = None
    jars: tuple[str, ...] = ()  # connector jars (Kafka), local paths or file:// URLs
    watch: bool = False  # `events` is a directory, monitored for new files (unbounded)
    monitor_interval_s: float = 1.0
    kafka_servers: str | None = None  # with kafka_topic: read Kafka instead of files
    kafka_topic: str | None = None
    kafka_group: str = "orion"
    # python.execution-mode. Thread mode runs the Python functions inside the JVM, without
    # a gRPC round trip per bundle: several times faster, and savepoints, restores and
    # the parity tests pass in it. process: a Python worker process per TaskManager slot.
    # A job on a cluster (flink_master) always runs in process mode (docs/flink.md).
    execution_mode: str = "thread"
    bundle_size: int | None = None  # python.fn-execution.bundle.size (Flink's default: 100,000)
    state_cache_size: int | None = None  # python.state.cache-size: keys' state cached in Python (None: 20,000)
    lead_ttl_days: int = DEFAULT_LEAD_TTL_DAYS
    idle_release_s: float | None = None  # unbounded: poll waiting leads this often (default: the allowed lateness)
    batch_size: int = DEFAULT_BATCH_SIZE
    flush_after_ms: int = DEFAULT_FLUSH_AFTER_MS
    max_cascade_depth: int = DEFAULT_MAX_CASCADE_DEPTH  # flows: how deep campaigns may trigger campaigns
    max_pending: int = DEFAULT_MAX_PENDING  # a hot lead's buffer: released at once past this
    # The Python workers' interpreter (python.executable; None: the one running orion) and
    # an archive shipped with the job that holds it (python.archives, ARCHIVE[#DIR]).
    python_executable: str | None = None
    python_archive: str | None = None

    @property
    def bounded(self) -> bool:
        return not self.watch and self.kafka_topic is None

    @property
    def checkpoint_interval(self) -> float | None:
        """Seconds between checkpoints; None: no periodic checkpoints. A bounded job needs
        none to commit its files (its sinks commit at the end of input when checkpointing
        is off); an unbounded one commits them only at checkpoints."""
        if self.checkpoint_interval_s is not None:
            return self.checkpoint_interval_s or None
        if not self.bounded or self.checkpoint_dir is not None:
            return DEFAULT_STREAMING_CHECKPOINT_INTERVAL_S
        return None


def is_remote(path: str | Path) -> bool:
    """A URL (gs://BUCKET/PATH) rather than a path on this machine."""
    return "://" in str(path)


def output_dir(text: str) -> Path | str:
    """--out-dir: a local directory as a Path; a URL kept as the string it is (a Path
    would turn gs://bucket into gs:/bucket)."""
    return text.rstrip("/") if is_remote(text) else Path(text)


OUTCOMES_NAME = "outcomes"  # the outcome files are OUT_DIR/outcomes-*.jsonl
DEAD_LETTERS_NAME = "dead-letters"  # and the dead letters OUT_DIR/dead-letters-*.jsonl


def output_prefixes(out_dir: Path | str) -> tuple[str, str]:
    """Where a run's outcome and dead-letter files go: PREFIX-*.jsonl."""
    if is_remote(out_dir):
        base = str(out_dir).rstrip("/")
        return f"{base}/{OUTCOMES_NAME}", f"{base}/{DEAD_LETTERS_NAME}"
    return str(Path(out_dir) / OUTCOMES_NAME), str(Path(out_dir) / DEAD_LETTERS_NAME)


def clear_previous_outputs(out_dir: Path | str) -> None:
    """A rerun replaces the outcome and dead-letter files of the previous run (the store
    is idempotent on its own), and the unfinished files a stopped streaming run left:
    Beam's `.temp-*` directories (the lines of the windows it had not closed) and Flink's
    hidden in-progress part files (`.outcomes-*.inprogress.*`: the lines after its last
    checkpoint). Local directories only: a job writing to gs:// is given a directory of
    its own."""
    if is_remote(out_dir):
        return
    out_dir = Path(out_dir)
    for pattern in (f"{OUTCOMES_NAME}-*.jsonl", f"{DEAD_LETTERS_NAME}-*.jsonl", "differences-*.jsonl",
                    "tenant-metrics-*.prom",
                    f".{OUTCOMES_NAME}-*.inprogress.*", f".{DEAD_LETTERS_NAME}-*.inprogress.*"):
        for old in out_dir.glob(pattern):
            old.unlink()
    for pattern in (f".temp-{OUTCOMES_NAME}-*", f".temp-{DEAD_LETTERS_NAME}-*"):
        for old in out_dir.glob(pattern):
            shutil.rmtree(old, ignore_errors=True)


def effective_store_uri(config: RunConfig) -> str:
    """The store the graph writes and reads: --store alone; with --mode legacy the legacy
    store alone; with --mode passive, active or tenants both, side by side, differences
    reported into the output directory (orion/store/migrating.py)."""
    if config.mode is None:
        return config.store_uri
    if not config.legacy_store_uri:
        raise ValueError("--mode needs --legacy-store mysql://USER:PASSWORD@HOST:PORT/DB")
    if config.mode == "legacy":
        return config.legacy_store_uri
    from orion.store.migrating import migration_store_uri

    return migration_store_uri(config.mode, config.legacy_store_uri, config.store_uri, config.out_dir,
                               config.tenant_refresh_s)

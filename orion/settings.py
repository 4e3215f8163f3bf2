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

from orion.campaigns.flows import DEFAULT_MAX_CASCADE_DEPTH
from orion.leadstep import DEFAULT_MAX_PENDING
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

MODES = ("legacy", "passive", "active")  # migration: which store serves a run

__all__ = [
    "DEFAULT_ALLOWED_LATENESS_MS", "DEFAULT_DATA_DIR", "DEFAULT_DEDUP_SPAN_MS", "DEFAULT_LEAD_TTL_DAYS",
    "DEFAULT_MAX_CASCADE_DEPTH", "DEFAULT_OUTBOX", "DEFAULT_STORE", "FlinkOptions", "MODES", "RunConfig",
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


# Flink job defaults.
DEFAULT_BATCH_SIZE = 500  # records a Flink sink hands its writer at once
DEFAULT_FLUSH_AFTER_MS = 500  # and the longest a record waits for its batch


class FlinkOptions(NamedTuple):
    """How the Flink job runs; the graph's own settings are RunConfig's."""

    parallelism: int = 1
    checkpoint_interval_s: float | None = None  # None: no periodic checkpoints
    flink_master: str | None = None  # HOST:PORT of a remote JobManager's REST endpoint
    savepoint_dir: str | None = None  # an unbounded job stops with a savepoint here
    from_savepoint: str | None = None  # restore the job's state from this savepoint
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
    state_cache_size: int | None = None  # python.state.cache-size: keys' state cached in Python (default 1,000)
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


def is_remote(path: str | Path) -> bool:
    """A URL (gs://BUCKET/PATH) rather than a path on this machine."""
    return "://" in str(path)


def output_dir(text: str) -> Path | str:
    """--out-dir: a local directory as a Path; a URL kept as the string it is (a Path
    would turn gs://bucket into gs:/bucket)."""
    return text.rstrip("/") if is_remote(text) else Path(text)


def output_prefixes(out_dir: Path | str) -> tuple[str, str]:
    """Where a run's outcome and dead-letter files go: PREFIX-*.jsonl."""
    if is_remote(out_dir):
        return f"{str(out_dir).rstrip('/')}/outcomes", f"{str(out_dir).rstrip('/')}/dead-letters"
    return str(Path(out_dir) / "outcomes"), str(Path(out_dir) / "dead-letters")


def clear_previous_outputs(out_dir: Path | str) -> None:
    """A rerun replaces the outcome and dead-letter files of the previous run (the store
    is idempotent on its own), and the temporary files a stopped streaming run left
    (`.temp-*`: the lines of the windows it had not closed). Local directories only: a
    job writing to gs:// is given a directory of its own."""
    if is_remote(out_dir):
        return
    out_dir = Path(out_dir)
    for pattern in ("outcomes-*.jsonl", "dead-letters-*.jsonl", "differences-*.jsonl"):
        for old in out_dir.glob(pattern):
            old.unlink()
    for pattern in (".temp-outcomes-*", ".temp-dead-letters-*"):
        for old in out_dir.glob(pattern):
            shutil.rmtree(old, ignore_errors=True)


def effective_store_uri(config: RunConfig) -> str:
    """The store the graph writes and reads: --store alone; with --mode legacy the legacy
    store alone; with --mode passive or active both, side by side, differences reported
    into the output directory (orion/store/migrating.py)."""
    if config.mode is None:
        return config.store_uri
    if not config.legacy_store_uri:
        raise ValueError("--mode needs --legacy-store mysql://USER:PASSWORD@HOST:PORT/DB")
    if config.mode == "legacy":
        return config.legacy_store_uri
    from orion.store.migrating import migration_store_uri

    return migration_store_uri(config.mode, config.legacy_store_uri, config.store_uri, config.out_dir)

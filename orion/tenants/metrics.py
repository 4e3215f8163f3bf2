"""Per-tenant rollout counters as Prometheus metrics, in the text exposition format, one
file per worker process: REPORT_DIR/tenant-metrics-<writer>.prom (REPORT_DIR is the run's
--out-dir, where the differences-*.jsonl files go too). Files rather than an HTTP
endpoint: the same on both engines and every runner (a Beam worker, a Flink TaskManager,
several processes on one machine, none of which has a port of its own to offer), and what
node_exporter's textfile collector reads (point its --collector.textfile.directory at
the directory). Each file's series carry a `writer` label of their own, so the files
never clash; sum over it.

    orion_tenant_activities_total{tenant, stage, writer}     activities written, by the stage
                                                              each was handled under
    orion_tenant_reads_compared_total{tenant, kind, writer}  reads served by one store and
                                                              compared with the other (kind:
                                                              history, index, profile)
    orion_tenant_differences_total{tenant, kind, writer}     differences found (kind: history,
                                                              index, profile, write, unavailable)
    orion_tenant_stage{tenant, stage, writer}                1: the stage this writer applies now

A file is rewritten whole (atomically) at most every FLUSH_EVERY_S seconds after a change,
and when the store closes. The counters count what the process did: a bundle a runner
retries, or a job restarted from a checkpoint, counts its writes again (the stores
themselves keep each activity once).

    orion tenants report acme --store URI --report-dir orion-data     # sums the files
"""
from __future__ import annotations

import math
import os
import socket
import threading
import uuid
from pathlib import Path
from typing import Iterable, NamedTuple

ACTIVITIES = "orion_tenant_activities_total"
COMPARED = "orion_tenant_reads_compared_total"
DIFFERENCES = "orion_tenant_differences_total"
STAGE = "orion_tenant_stage"
_HELP = {
    ACTIVITIES: ("counter", "Activities written, by tenant and the rollout stage each was handled under."),
    COMPARED: ("counter", "Reads served by one store and compared with the other, by tenant and kind."),
    DIFFERENCES: ("counter", "Differences between the legacy and the new store, by tenant and kind."),
    STAGE: ("gauge", "1 for the rollout stage this writer applies to the tenant now."),
}
_LABELS = {ACTIVITIES: ("tenant", "stage"), COMPARED: ("tenant", "kind"), DIFFERENCES: ("tenant", "kind"),
           STAGE: ("tenant", "stage")}
FILE_PREFIX, FILE_SUFFIX = "tenant-metrics-", ".prom"
FLUSH_EVERY_S = 1.0


class Sample(NamedTuple):
    name: str
    labels: dict
    value: float


def _escaped(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _unescaped(value: str) -> str:
    out, chars = [], iter(value)
    for char in chars:
        if char == "\\":
            following = next(chars, "")
            out.append("\n" if following == "n" else following)
        else:
            out.append(char)
    return "".join(out)


class TenantMetrics:
    """One process's counters for one report directory (the stores of a process share it,
    `of`), written to its own file."""

    _by_directory: dict[str, "TenantMetrics"] = {}
    _lock = threading.Lock()

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.writer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.path = self.directory / f"{FILE_PREFIX}{self.writer}{FILE_SUFFIX}"
        self.pid = os.getpid()
        self.counts: dict[tuple[str, tuple[str, str]], float] = {}
        self.stages: dict[str, str] = {}
        self.lock = threading.Lock()
        self.timer: threading.Timer | None = None

    @classmethod
    def of(cls, directory: str | os.PathLike) -> "TenantMetrics":
        key = str(directory)
        with cls._lock:
            found = cls._by_directory.get(key)
            if found is None or found.pid != os.getpid():
                found = cls._by_directory[key] = cls(directory)
            return found

    def add(self, name: str, tenant: str, label: str, n: int = 1) -> None:
        """Add n to counter `name` of (tenant, its second label: the stage or the kind)."""
        if n <= 0:
            return
        with self.lock:
            key = (name, (tenant, label))
            self.counts[key] = self.counts.get(key, 0) + n
            self._soon()

    def set_stages(self, stages: dict[str, str]) -> None:
        """The stage this writer applies to each tenant the registry names."""
        with self.lock:
            if stages != self.stages:
                self.stages = dict(stages)
                self._soon()

    def _soon(self) -> None:
        if self.timer is None:
            self.timer = threading.Timer(FLUSH_EVERY_S, self.flush)
            self.timer.daemon = True
            self.timer.start()

    def flush(self) -> None:
        with self.lock:
            self.timer = None
            if not self.counts and not self.stages:
                return
            text = self.render()
            self.directory.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_name(f".{self.path.name}.tmp")
            temporary.write_text(text, encoding="utf-8")
            os.replace(temporary, self.path)

    def render(self) -> str:
        samples = [Sample(name, dict(zip(_LABELS[name], labels)), value)
                   for (name, labels), value in self.counts.items()]
        samples += [Sample(STAGE, {"tenant": tenant, "stage": stage}, 1) for tenant, stage in self.stages.items()]
        return render(samples, {"writer": self.writer})


def render(samples: Iterable[Sample], extra_labels: dict | None = None) -> str:
    """Samples in the Prometheus text exposition format (version 0.0.4), grouped by
    metric, each group with its HELP and TYPE lines."""
    by_name: dict[str, list[Sample]] = {}
    for sample in samples:
        by_name.setdefault(sample.name, []).append(sample)
    lines = []
    for name in sorted(by_name):
        kind, help_text = _HELP[name]
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for sample in sorted(by_name[name], key=lambda s: sorted(s.labels.items())):
            labels = {**sample.labels, **(extra_labels or {})}
            shown = ",".join(f'{key}="{_escaped(str(value))}"' for key, value in labels.items())
            lines.append(f"{name}{{{shown}}} {sample.value:g}")
    return "\n".join(lines) + "\n"


def parse(text: str, skipped: list | None = None, source: str = "") -> list[Sample]:
    """The samples of a file `render` wrote (comments skipped). A line that is not a
    sample with a finite value is left out, and said in `skipped` (as SOURCE:LINE)."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        try:
            number_value = float(value)
        except ValueError:
            number_value = math.nan
        if not math.isfinite(number_value) or not head:
            if skipped is not None:
                skipped.append(f"{source}:{number}")
            continue
        name, _, label_text = head.partition("{")
        labels, rest = {}, label_text[:-1] if label_text.endswith("}") else label_text
        while rest:
            key, _, rest = rest.partition('="')
            value_chars, escaped, end = [], False, 0
            for end, char in enumerate(rest):
                if escaped:
                    escaped = False
                elif char == "\\":
                    escaped = True
                elif char == '"':
                    break
                value_chars.append(char)
            labels[key] = _unescaped("".join(value_chars))
            rest = rest[end + 1:].lstrip(",")
        found.append(Sample(name, labels, number_value))
    return found


def metrics_files(directory: str | os.PathLike) -> list[Path]:
    return sorted(Path(directory).glob(f"{FILE_PREFIX}*{FILE_SUFFIX}"))


def read_samples(directory: str | os.PathLike, skipped: list | None = None) -> list[Sample]:
    """Every sample of every metrics file in `directory` (none when it has none); lines
    that do not read are left out and said in `skipped`."""
    found = []
    for path in metrics_files(directory):
        try:
            found += parse(path.read_text(encoding="utf-8", errors="replace"), skipped, str(path))
        except OSError:
            continue  # replaced while being read; the next look sees it
    return found


def totals(samples: Iterable[Sample], name: str, tenant: str, label: str) -> dict[str, int]:
    """{stage or kind: the sum over writers} of counter `name` for one tenant."""
    summed: dict[str, int] = {}
    for sample in samples:
        if sample.name == name and sample.labels.get("tenant") == tenant:
            key = sample.labels.get(label, "")
            summed[key] = summed.get(key, 0) + int(sample.value)
    return summed

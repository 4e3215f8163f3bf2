"""The report on one tenant's rollout: its stage in the registry and since when, the
activities written under each stage, the reads compared between the two stores, the
differences found by kind, and the first of them. The counts come from the Prometheus
files the job writes (REPORT_DIR/tenant-metrics-*.prom, orion/tenants/metrics.py), the
differences from its difference report (REPORT_DIR/differences-*.jsonl,
orion/store/migrating.py); REPORT_DIR is the run's --out-dir.

    orion tenants report acme --store sqlite:///orion-data/activities.db --report-dir orion-data
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from orion.activities import format_timestamp
from orion.store.base import TenantStage
from orion.tenants import metrics
from orion.tenants.registry import DEFAULT_STAGE, STAGES

DEFAULT_EXAMPLES = 5


def difference_files(report_dir: str | os.PathLike) -> list[Path]:
    return sorted(Path(report_dir).glob("differences-*.jsonl"))


def differences_of(report_dir: str | os.PathLike, tenant: str, skipped: list | None = None) -> list[dict]:
    """The tenant's differences in the report directory, oldest first. A line that is
    not a difference record is left out and said in `skipped` (as FILE:LINE), but for the
    last line of a file, which may be being written."""
    found = []
    for path in difference_files(report_dir):
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not isinstance(record, dict):
                if skipped is not None and (number < len(lines) or record is not None):
                    skipped.append(f"{path}:{number}")
                continue
            if record.get("tenant") == tenant:
                found.append(record)
    return sorted(found, key=lambda record: str(record.get("at", "")))


def tenant_report(tenant: str, registry_row: TenantStage | None, report_dir: str | os.PathLike,
                  examples: int = DEFAULT_EXAMPLES) -> dict:
    """The report as a JSON-ready dict; `unreadable` lists the lines of the report's
    files that do not read (left out of the counts)."""
    skipped: list[str] = []
    samples = metrics.read_samples(report_dir, skipped)
    by_stage = metrics.totals(samples, metrics.ACTIVITIES, tenant, "stage")
    compared = metrics.totals(samples, metrics.COMPARED, tenant, "kind")
    differences = differences_of(report_dir, tenant, skipped)
    kinds: dict[str, int] = {}
    for record in differences:
        kinds[record.get("kind", "")] = kinds.get(record.get("kind", ""), 0) + 1
    return {
        "tenant": tenant,
        "stage": registry_row.stage if registry_row else DEFAULT_STAGE,
        "in_registry": registry_row is not None,
        "changed_at": None if registry_row is None else format_timestamp(registry_row.changed_at),
        "previous_stage": None if registry_row is None else registry_row.previous_stage,
        "activities_by_stage": {stage: by_stage.get(stage, 0) for stage in STAGES},
        "activities": sum(by_stage.values()),
        "reads_compared": dict(sorted(compared.items())),
        "differences_by_kind": dict(sorted(kinds.items())),
        "differences": len(differences),
        "first_differences": differences[:examples],
        "unreadable": skipped,
    }


def render_report(report: dict) -> str:
    if report["in_registry"]:
        head = f"tenant {report['tenant']}: stage {report['stage']} since {report['changed_at']}"
        if report["previous_stage"]:
            head += f" (before: {report['previous_stage']})"
    else:
        head = f"tenant {report['tenant']}: not in the registry, so {report['stage']}"
    lines = [head, f"activities written, by the stage each was handled under: {report['activities']:,}"]
    lines += [f"  {stage:<12} {n:>10,}" for stage, n in report["activities_by_stage"].items()]
    compared = report["reads_compared"]
    lines.append(f"reads compared: {sum(compared.values()):,}"
                 + (" (" + ", ".join(f"{kind} {n:,}" for kind, n in compared.items()) + ")" if compared else ""))
    kinds = report["differences_by_kind"]
    lines.append(f"differences: {report['differences']:,}"
                 + (" (" + ", ".join(f"{kind} {n:,}" for kind, n in kinds.items()) + ")" if kinds else ""))
    if report["first_differences"]:
        lines.append(f"first {len(report['first_differences'])}:")
        for record in report["first_differences"]:
            lines.append(f"  {record.get('at')}  {record.get('stage', record.get('mode'))}  {record.get('kind')}  "
                         f"lead {record.get('lead_id')!r}  {record.get('detail')}")
    unreadable = report.get("unreadable") or []
    if unreadable:
        lines.append(f"unreadable lines left out of these counts: {len(unreadable):,} ({', '.join(unreadable[:5])}"
                     + (" ..." if len(unreadable) > 5 else "") + ")")
    return "\n".join(lines)

"""The summary a run prints, from its counters and its outcome files, for every engine:
events read, stored, evaluated, duplicates, dead letters by reason, outcomes, the
campaigns that fired most, the campaign flows' emails and webhooks, and the rate.

    python -c "from orion.summary import render_summary; print(render_summary({'events_read': 3}, 1.0))"
"""
from __future__ import annotations

import collections
from pathlib import Path

from orion.settings import is_remote, output_prefixes


def campaigns_fired(out_dir: Path | str) -> dict[str, int]:
    """Qualified outcomes per "tenant/campaign", counted from the outcome files a run
    wrote (the counters stay a bounded set of names: none per campaign)."""
    import orjson

    fired: collections.Counter = collections.Counter()
    prefix, _ = output_prefixes(out_dir)
    for lines in _outcome_files(prefix):
        with lines:
            for line in lines:
                if b'"qualified": true' in line or b'"qualified":true' in line:
                    outcome = orjson.loads(line)
                    fired[f"{outcome['tenant']}/{outcome['campaign']}"] += 1
    return dict(fired)


def _outcome_files(prefix: str):
    """The committed outcome files PREFIX-*.jsonl, each opened for reading bytes. The
    files a run has not finished are hidden, and skipped: Beam's under `.temp-*`,
    Flink's FileSink's `.outcomes-*.inprogress.*`."""
    if is_remote(prefix):
        # A URL (gs://...): Beam's file systems read it, whichever engine wrote it.
        from apache_beam.io.filesystems import FileSystems

        for found in FileSystems.match([prefix + "-*.jsonl"])[0].metadata_list:
            yield FileSystems.open(found.path)
        return
    for path in Path(prefix).parent.glob(Path(prefix).name + "-*.jsonl"):
        yield open(path, "rb")


def render_summary(totals: dict[str, int], seconds: float, fired: dict[str, int] | None = None) -> str:
    """The run's summary from its counters; `fired`: qualified outcomes per campaign
    (campaigns_fired), for the ten that fired most."""
    read = totals.get("events_read", 0)
    dead = {name.split(":", 1)[1]: n for name, n in totals.items() if name.startswith("dead_letters:")}
    fired = fired or {}
    lines = [
        f"events read:      {read}",
        f"stored:           {totals.get('stored', 0)}",
        f"evaluated:        {totals.get('evaluated', 0)} (each once: the input's new activities and the flows')",
        f"duplicates:       {totals.get('duplicates', 0)}",
        f"dead letters:     {sum(dead.values())}"
        + "".join(f"\n  {reason}: {n}" for reason, n in sorted(dead.items())),
        f"outcomes:         {totals.get('outcomes', 0)} ({totals.get('qualified', 0)} qualified)",
        "campaigns fired (top 10):",
    ]
    top = sorted(fired.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    lines += [f"  {n:6d}  {name}" for name, n in top] or ["  none"]
    if "leads_seeded_from_store" in totals:
        lines.append(f"leads seeded:     {totals['leads_seeded_from_store']} (profiles and history read from the store)")
    if totals.get("hot_lead_releases"):
        lines.append(f"hot leads:        {totals['hot_lead_releases']} early releases (a lead's buffer reached "
                     "its bound: released in order before the watermark; what arrives later behind it is late)")
    if "migration_differences" in totals:
        kinds = {name.split(":", 1)[1]: n for name, n in totals.items() if name.startswith("migration_differences:")}
        lines.append(f"store differences: {totals['migration_differences']} (differences-*.jsonl)"
                     + "".join(f"\n  {kind}: {n}" for kind, n in sorted(kinds.items())))
    lines += _flow_summary(totals)
    rate = read / seconds if seconds > 0 else 0.0
    lines.append(f"elapsed:          {seconds:.2f} s ({rate:,.0f} events/s)")
    return "\n".join(lines)


def _flow_summary(totals: dict[str, int]) -> list[str]:
    """Campaign flows (with an outbox): what was queued, held and dead-lettered. The
    stored count above includes the activities flow steps generated."""
    if "emails_requested" not in totals and "flow_activities" not in totals and "outbox_queued" not in totals:
        return []
    held = {name.split(":", 1)[1]: n for name, n in totals.items() if name.startswith("emails_held:")}
    return [
        "campaign flows:",
        f"  emails queued:     {totals.get('queued_emails', 0)} ({totals.get('emails_assembled', 0)} assembled)",
        f"  emails held:       {totals.get('queued_held', 0)}"
        + (" (held back this run: " + ", ".join(f"{reason} {n}" for reason, n in sorted(held.items())) + ")"
           if held else ""),
        f"  webhooks queued:   {totals.get('queued_webhooks', 0)}",
        f"  already queued:    {totals.get('outbox_duplicates', 0)} (by an earlier run; not queued twice)",
        f"  flow activities:   {totals.get('flow_activities', 0)} (stored with the history)",
        f"  flow dead letters: {totals.get('flow_dead_letters', 0)} (among the dead letters above)",
    ]

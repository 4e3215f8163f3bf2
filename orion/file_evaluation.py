"""Evaluate a JSONL file of activities against a rules directory, without an engine:
each lead's activities in event-time order (ties by event id), duplicates (same tenant
and event id) evaluated once, bad lines to a dead-letter file with their reason.

This is `orion evaluate`; the streaming Beam graph calls the same core per lead.

    orion evaluate --rules orion/samples/rules --events orion/samples/events.jsonl
"""
from __future__ import annotations

import collections
import json
import sys
import time
from pathlib import Path
from typing import IO, Callable, Iterable, NamedTuple

from orion.activities import Activity
from orion.deadletters import DeadLetter
from orion.intake import bounded_lines, decompressing, read_lines
from orion.rules import RuleSet, evaluate_lead

PROGRESS_EVERY_SECONDS = 2.0


class EvaluationSummary(NamedTuple):
    lines: int
    activities: int
    duplicates: int
    leads: int
    dead_letters: collections.Counter
    outcomes: int
    qualified: collections.Counter  # campaign (tenant/name) -> qualified runs
    seconds: float

    def render(self) -> str:
        rate = self.lines / self.seconds if self.seconds > 0 else float("inf")
        lines = [
            f"events read:      {self.lines}",
            f"evaluated:        {self.activities} activities of {self.leads} leads",
            f"duplicates:       {self.duplicates}",
            f"dead letters:     {sum(self.dead_letters.values())}"
            + "".join(f"\n  {reason}: {n}" for reason, n in sorted(self.dead_letters.items())),
            f"outcomes:         {self.outcomes} ({sum(self.qualified.values())} qualified)",
            "campaigns fired (top 10):",
        ]
        top = sorted(self.qualified.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
        lines += [f"  {n:6d}  {name}" for name, n in top] or ["  none"]
        lines.append(f"elapsed:          {self.seconds:.2f} s ({rate:,.0f} events/s)")
        return "\n".join(lines)


def read_activities(
    lines: Iterable[str | bytes],
    rules: RuleSet,
    source: str,
    dead_letter: Callable[[DeadLetter], None],
    progress: Callable[[int], None] = lambda n: None,
) -> tuple[dict[tuple[str, str], list[Activity]], int, int]:
    """Parse lines into activities grouped by (tenant, lead), first delivery of each
    (tenant, event id) only. Returns (by lead, lines read, duplicates)."""
    by_lead: dict[tuple[str, str], list[Activity]] = {}
    seen: set[tuple[str, str]] = set()
    duplicates = 0
    # A file object is read through bounded_lines: an overlong line is never held whole.
    counted = _Counted(bounded_lines(lines) if hasattr(lines, "read") else lines, progress)
    for found in read_lines(counted, rules.activity_types, source, allowed_lateness_ms=None):
        if isinstance(found, DeadLetter):
            dead_letter(found)
            continue
        event_key = (found.tenant, found.event_id)
        if event_key in seen:
            duplicates += 1
            continue
        seen.add(event_key)
        by_lead.setdefault((found.tenant, found.lead_id), []).append(found)
    return by_lead, counted.count, duplicates


class _Counted:
    """Counts the lines it hands out and reports progress every few thousand."""

    def __init__(self, lines: Iterable, progress: Callable[[int], None]):
        self.lines, self.progress, self.count = lines, progress, 0

    def __iter__(self):
        for line in self.lines:
            self.count += 1
            if self.count % 4096 == 0:
                self.progress(self.count)
            yield line


def evaluate_file(
    rules: RuleSet,
    events: Path | str,
    outcomes_out: IO[str],
    dead_letters_out: IO[str],
    progress_out: IO[str] | None = sys.stderr,
    clock: Callable[[], float] = time.monotonic,
) -> EvaluationSummary:
    """Evaluate every activity in `events` ("-" reads standard input); write outcomes and
    dead letters as JSONL; return the summary."""
    started = clock()
    dead = collections.Counter()
    last_report = [started]

    def dead_letter(letter: DeadLetter) -> None:
        dead[letter.reason] += 1
        dead_letters_out.write(letter.to_json() + "\n")

    def progress(count: int) -> None:
        now = clock()
        if progress_out is not None and now - last_report[0] >= PROGRESS_EVERY_SECONDS:
            last_report[0] = now
            progress_out.write(f"... read {count:,} events ({count / (now - started):,.0f}/s)\n")
            progress_out.flush()

    source = "stdin" if str(events) == "-" else str(events)
    # Bytes, so that a line that is not UTF-8 becomes a dead letter, not a crash.
    # (a .gz or .bz2 file is inflated as it is read, as orion run reads it)
    raw = sys.stdin.buffer if source == "stdin" else open(events, "rb")
    stream = raw if source == "stdin" else decompressing(raw, source)
    try:
        by_lead, lines, duplicates = read_activities(stream, rules, source, dead_letter, progress)
    finally:
        if source != "stdin":
            stream.close()
            raw.close()
    qualified = collections.Counter()
    outcome_count = 0
    for (tenant, lead), activities in sorted(by_lead.items()):
        _, outcomes = evaluate_lead(rules, None, activities)
        for outcome in outcomes:
            outcome_count += 1
            if outcome.qualified:
                qualified[f"{outcome.tenant}/{outcome.campaign}"] += 1
            outcomes_out.write(json.dumps(outcome.to_json_dict(), ensure_ascii=False) + "\n")
    return EvaluationSummary(
        lines=lines,
        activities=sum(len(a) for a in by_lead.values()),
        duplicates=duplicates,
        leads=len(by_lead),
        dead_letters=dead,
        outcomes=outcome_count,
        qualified=qualified,
        seconds=clock() - started,
    )

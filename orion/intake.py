"""Turning what sources deliver into activities or dead letters, engine-neutral.

A file is read line by line (JSONL), in order, with `ReplayLateness`. A message (Pub/Sub)
carries one activity, a JSON array of activities, or JSONL lines: collectors aggregate
many events per message to cut cost, as the personalization vendor did. Every element
that is not a valid activity becomes a DeadLetter with its reason; the rest go on.

    python -c "from orion.intake import parse_payload; from orion.activities import ActivityTypes; print(list(parse_payload(b'[1]', ActivityTypes(), 'demo')))"
"""
from __future__ import annotations

import json
from typing import Iterable, Iterator

import orjson

from orion.activities import MALFORMED_JSON, Activity, ActivityTypes, BadActivity, parse_activity
from orion.deadletters import DeadLetter
from orion.sequencing import LATE, ReplayLateness


def _text(raw: str | bytes) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, (bytes, bytearray)) else raw


def parse_one(raw, types: ActivityTypes, source: str) -> Activity | DeadLetter:
    try:
        return parse_activity(raw, types)
    except BadActivity as bad:
        element = raw if isinstance(raw, (str, bytes, bytearray)) else json.dumps(raw, default=str)
        return DeadLetter(_text(element).rstrip("\n"), bad.reason, bad.detail, source)


def parse_payload(payload: str | bytes, types: ActivityTypes, source: str) -> Iterator[Activity | DeadLetter]:
    """One message -> its activities and dead letters, in message order."""
    stripped = payload.lstrip()
    if stripped[:1] in (b"[", "["):
        try:
            items = orjson.loads(payload)
        except orjson.JSONDecodeError as err:
            yield DeadLetter(_text(payload), MALFORMED_JSON, f"a batch is a JSON array: {err}", source)
            return
        for n, item in enumerate(items):
            yield parse_one(item, types, f"{source}[{n}]")
        return
    lines = payload.splitlines()
    if len(lines) <= 1:
        yield parse_one(payload, types, source)
        return
    for n, line in enumerate(lines):
        if line.strip():
            yield parse_one(line, types, f"{source}:{n + 1}")


def read_lines(
    lines: Iterable[str | bytes], types: ActivityTypes, source: str, allowed_lateness_ms: int | None
) -> Iterator[Activity | DeadLetter]:
    """A JSONL file, in order -> activities and dead letters (bad lines, and late lines
    unless allowed_lateness_ms is None: then the whole file is one batch, put in order)."""
    lateness = ReplayLateness(allowed_lateness_ms) if allowed_lateness_ms is not None else None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        found = parse_one(line, types, f"{source}:{number}")
        if lateness is not None and isinstance(found, Activity):
            late = lateness.check(found)
            if late is not None:
                found = DeadLetter(_text(line).rstrip("\n"), LATE, late, f"{source}:{number}")
        yield found

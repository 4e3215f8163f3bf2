"""Turning what sources deliver into activities or dead letters, engine-neutral.

A file is read line by line (JSONL), in order, with `ReplayLateness`. A message (Pub/Sub)
carries one activity, a JSON array of activities, or JSONL lines: collectors aggregate
many events per message to cut cost, as the personalization vendor did. Every element
that is not a valid activity becomes a DeadLetter with its reason; the rest go on.

The input limits of `orion.activities` hold per activity, whatever carries it: a line, a
message, or an item of a JSON array (a message may be far larger than one activity).
An item over MAX_ACTIVITY_BYTES is `too_large`; one that breaks the array for orjson
(nested too deep, a lone surrogate, a syntax error) is refused alone, the other items of
its array are judged on their own.

    python -c "from orion.intake import parse_payload; from orion.activities import ActivityTypes; print(list(parse_payload(b'[1]', ActivityTypes(), 'demo')))"
"""
from __future__ import annotations

import json
from typing import Iterable, Iterator

import orjson

from orion.activities import (
    MALFORMED_JSON,
    MAX_ACTIVITY_BYTES,
    TOO_LARGE,
    Activity,
    ActivityTypes,
    BadActivity,
    json_text_size,
    parse_activity,
    split_json_array,
    too_large,
)
from orion.deadletters import DeadLetter
from orion.sequencing import LATE, ReplayLateness


def _text(raw: str | bytes) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, (bytes, bytearray)) else raw


def _element_text(value) -> str:
    """A decoded element as JSON text for its dead letter, whatever it holds."""
    try:
        return json.dumps(value, default=str)
    except (RecursionError, TypeError, ValueError) as err:  # nested past the stack, odd keys
        return f"<a {type(value).__name__} that cannot be written as JSON: {type(err).__name__}>"


def parse_one(raw, types: ActivityTypes, source: str) -> Activity | DeadLetter:
    try:
        return parse_activity(raw, types)
    except BadActivity as bad:
        element = _text(raw) if isinstance(raw, (str, bytes, bytearray)) else _element_text(raw)
        return DeadLetter(element.rstrip("\n"), bad.reason, bad.detail, source)


def _compact_size(item) -> tuple[int, bytes | None]:
    """An array item's size as compact JSON (the collector publishes exactly that)."""
    try:
        encoded = orjson.dumps(item)
    except TypeError:  # nested past orjson's limit: parse_activity refuses it for its depth
        return 0, None
    return len(encoded), encoded


def parse_payload(payload: str | bytes, types: ActivityTypes, source: str) -> Iterator[Activity | DeadLetter]:
    """One message -> its activities and dead letters, in message order."""
    stripped = payload.lstrip()
    if stripped[:1] in (b"[", "["):
        try:
            items = orjson.loads(payload)
        except orjson.JSONDecodeError as err:
            parts = split_json_array(payload)
            if parts is None:
                yield DeadLetter(_text(payload), MALFORMED_JSON, f"a batch is a JSON array: {err}", source)
                return
            for n, part in enumerate(parts):  # each judged alone, its text measured
                yield parse_one(part.strip(), types, f"{source}[{n}]")
            return
        # Each item may be an activity of the largest size; measured only when they could be.
        measure = json_text_size(payload) > MAX_ACTIVITY_BYTES
        for n, item in enumerate(items):
            if measure:
                size, encoded = _compact_size(item)
                if size > MAX_ACTIVITY_BYTES:
                    yield DeadLetter(encoded.decode("utf-8"), TOO_LARGE, too_large(size).detail, f"{source}[{n}]")
                    continue
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

"""What the collector does with a request body, engine- and HTTP-free: split it into
events, check each against the key's tenant and its activity schemas, and say per event
whether it is accepted and why not.

A body is one JSON object (one event), a JSON array of events, or JSONL (one event per
line), the same three forms the graph's ParseActivities reads from a Pub/Sub message. It
must be UTF-8.

The tenant comes from the API key. An event may leave out `tenant` (the key's is filled
in) or name the key's tenant; an event naming another tenant is refused with the reason
`wrong_tenant`, so a key of tenant A can never write events of tenant B. Every other
refusal uses the dead-letter reasons of `parse_activity` (malformed_json, missing_field,
bad_field, unknown_type, bad_attribute, bad_timestamp).

    python -c "from orion.collector.checking import check_body; from orion.activities import ActivityTypes; print(check_body(b'[{}]', 'acme', ActivityTypes(), 10))"
"""
from __future__ import annotations

import json
from typing import Any, NamedTuple

from orion.activities import MALFORMED_JSON, ActivityTypes, BadActivity, parse_activity

WRONG_TENANT = "wrong_tenant"
UNAVAILABLE = "unavailable"  # counted for events of a request Pub/Sub did not take


class BodyRefused(Exception):
    """The whole request is refused: `status` is the HTTP status, `error` a short code."""

    def __init__(self, status: int, error: str, detail: str):
        super().__init__(f"{error}: {detail}")
        self.status, self.error, self.detail = status, error, detail


class CheckedBody(NamedTuple):
    results: list[dict]   # one per event, in body order: event_id, status, reason, detail
    accepted: list[bytes]  # the accepted activities, each one encoded JSON object
    refused_reasons: list[str]


def split_body(body: bytes, max_events: int) -> list[Any]:
    """Body -> its events: decoded JSON values, or raw text for JSONL lines that are not
    JSON (refused one by one later). Raises BodyRefused for a body that is none of the
    three forms, or holds more than max_events."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BodyRefused(400, MALFORMED_JSON, f"the body is not UTF-8: {err}") from None
    stripped = text.strip()
    if not stripped:
        raise BodyRefused(400, MALFORMED_JSON, "the body is empty; send an event, a JSON array of events or JSONL")
    try:
        decoded = json.loads(stripped)
    except ValueError as err:
        lines = [line for line in stripped.splitlines() if line.strip()]
        if len(lines) < 2 or stripped[0] == "[":
            raise BodyRefused(400, MALFORMED_JSON, f"the body is not JSON: {err}") from None
        events: list[Any] = []
        for line in lines:
            try:
                events.append(json.loads(line))
            except ValueError:
                events.append(line)  # refused on its own, as malformed_json
    else:
        events = decoded if isinstance(decoded, list) else [decoded]
    if not events:
        raise BodyRefused(400, MALFORMED_JSON, "the batch is empty")
    if len(events) > max_events:
        raise BodyRefused(413, "too_many_events", f"{len(events)} events in one request; at most {max_events}")
    return events


def _event_id(event: Any) -> Any:
    if isinstance(event, dict):
        value = event.get("event_id")
        return value if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    return None


def check_event(event: Any, tenant: str, types: ActivityTypes) -> tuple[bytes | None, str | None, str | None]:
    """One event -> (encoded activity, None, None) or (None, reason, detail)."""
    if isinstance(event, dict):
        named = event.get("tenant")
        if named is None:
            event = {**event, "tenant": tenant}
        elif not isinstance(named, bool) and isinstance(named, (str, int)) and str(named) != tenant:
            return None, WRONG_TENANT, f"this key writes events of tenant {tenant!r}, not {str(named)!r}"
    try:
        activity = parse_activity(event, types)
    except BadActivity as bad:
        return None, bad.reason, bad.detail
    if activity.tenant != tenant:  # a tenant of another JSON type that still names another
        return None, WRONG_TENANT, f"this key writes events of tenant {tenant!r}, not {activity.tenant!r}"
    encoded = json.dumps(activity.to_json_dict(), ensure_ascii=False, separators=(",", ":"))
    return encoded.encode("utf-8"), None, None


def check_body(body: bytes, tenant: str, types: ActivityTypes, max_events: int) -> CheckedBody:
    results: list[dict] = []
    accepted: list[bytes] = []
    refused: list[str] = []
    for event in split_body(body, max_events):
        encoded, reason, detail = check_event(event, tenant, types)
        if encoded is not None:
            accepted.append(encoded)
            results.append({"event_id": _event_id(event), "status": "accepted"})
        else:
            refused.append(reason)
            results.append({"event_id": _event_id(event), "status": "refused", "reason": reason, "detail": detail})
    return CheckedBody(results, accepted, refused)

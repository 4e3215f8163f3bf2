"""What the collector does with a request body, engine- and HTTP-free: split it into
events, check each against the key's tenant and its activity schemas, and say per event
whether it is accepted and why not.

A body is one JSON object (one event), a JSON array of events, or JSONL (one event per
line), the same three forms the graph's ParseActivities reads from a Pub/Sub message. It
must be UTF-8.

Bodies may be compressed (Content-Encoding gzip or deflate): `decompress_body` inflates
them (the app runs it off the event loop) to at most the body limit and at most
MAX_RATIO times their compressed size, so a small body that would inflate to gigabytes
costs next to nothing.

The input limits are the graph's (`orion.activities`): an event is at most
MAX_ACTIVITY_BYTES as published (compact JSON, tenant filled in: exactly what the graph
measures), else `too_large`; it nests at most MAX_NESTING_DEPTH levels. An event that
breaks the body for the JSON parser (nested too deep, a lone surrogate) is refused on its
own when the body's other events can still be told apart (a JSON array, or JSONL).

The tenant comes from the API key. An event may leave out `tenant` (the key's is filled
in) or name the key's tenant; an event naming another tenant is refused with the reason
`wrong_tenant`, so a key of tenant A can never write events of tenant B. Every other
refusal uses the dead-letter reasons of `parse_activity` (malformed_json, too_large,
missing_field, bad_field, unknown_type, bad_attribute, bad_timestamp).

    python -c "from orion.collector.checking import check_body; from orion.activities import ActivityTypes; print(check_body(b'[{}]', 'acme', ActivityTypes(), 10))"
"""
from __future__ import annotations

import zlib
from typing import Any, NamedTuple, Sequence

import orjson

from orion.activities import (MALFORMED_JSON, MAX_ACTIVITY_BYTES, TOO_LARGE, ActivityTypes, BadActivity,
                              parse_activity, split_json_array, too_large)

WRONG_TENANT = "wrong_tenant"
UNAVAILABLE = "unavailable"  # counted for events of a request Pub/Sub did not take
BAD_ENCODING = "bad_encoding"
MAX_RATIO = 100  # a compressed body may inflate at most this many times its size

_DECODERS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class BodyRefused(Exception):
    """The whole request is refused: `status` is the HTTP status, `error` a short code."""

    def __init__(self, status: int, error: str, detail: str):
        super().__init__(f"{error}: {detail}")
        self.status, self.error, self.detail = status, error, detail


class CheckedBody(NamedTuple):
    results: list[dict]   # one per event, in body order: event_id, status, reason, detail
    accepted: list[bytes]  # the accepted activities, each one encoded JSON object
    refused_reasons: list[str]
    accepted_leads: Sequence[str] = ()  # "tenant/lead_id" of each accepted activity (Kafka places leads by it)


def content_coding(header: str | None) -> str | None:
    """The Content-Encoding a body must be decoded with (None: as it is). Raises
    BodyRefused(415) for codings the collector does not take."""
    coding = (header or "").strip().lower()
    if coding in ("", "identity"):
        return None
    if coding in _DECODERS:
        return coding
    raise BodyRefused(415, BAD_ENCODING, f"Content-Encoding {coding[:40]!r} is not taken; send gzip, deflate "
                      "or no Content-Encoding")


def decompress_body(raw: bytes, coding: str, max_bytes: int, max_ratio: float = MAX_RATIO) -> bytes:
    """A gzip or deflate body, inflated to at most `max_bytes` and at most `max_ratio`
    times its own size, whichever is less: BodyRefused(413) past that, (400) when it is
    not what it claims to be. Never inflates more than the cap plus one byte."""
    cap = int(min(max_bytes, max_ratio * len(raw)))
    try:
        if coding == "deflate":
            try:
                out = _inflate(raw, zlib.MAX_WBITS, cap, members=False)
            except zlib.error:  # raw deflate without the zlib wrapper, as some clients send it
                out = _inflate(raw, -zlib.MAX_WBITS, cap, members=False)
        else:
            out = _inflate(raw, _DECODERS[coding], cap, members=True)
    except zlib.error as err:
        raise BodyRefused(400, BAD_ENCODING, f"the body is not valid {coding} data: {err}") from None
    if len(out) > cap:
        if cap < max_bytes:
            raise BodyRefused(413, TOO_LARGE, f"the {coding} body inflates to more than {max_ratio:g} times "
                              f"its {len(raw):,} bytes")
        raise BodyRefused(413, TOO_LARGE, f"the body inflates to more than {max_bytes:,} bytes")
    return bytes(out)


def _inflate(data: bytes, wbits: int, cap: int, members: bool) -> bytearray:
    """Inflate up to cap + 1 bytes (more than cap means: over); gzip may hold several members."""
    out = bytearray()
    while True:
        inflater = zlib.decompressobj(wbits)
        out += inflater.decompress(data, cap + 1 - len(out))
        if len(out) > cap:
            return out
        if not inflater.eof:
            raise BodyRefused(400, BAD_ENCODING, "the compressed body ends before its data does")
        data = inflater.unused_data
        if not data:
            return out
        if not members:
            raise BodyRefused(400, BAD_ENCODING, "data follows the end of the compressed body")


def _decoded_or_text(text: str) -> Any:
    """One event's JSON text -> its decoded value, or the text itself when it does not
    decode (parse_activity then refuses it with its reason: malformed_json, too_large)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def split_body(body: bytes, max_events: int) -> list[Any]:
    """Body -> its events: decoded JSON values, or raw text for those that are not JSON
    (refused one by one later). Raises BodyRefused for a body that is none of the three
    forms, or holds more than max_events."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BodyRefused(400, MALFORMED_JSON, f"the body is not UTF-8: {err}") from None
    stripped = text.strip()
    if not stripped:
        raise BodyRefused(400, MALFORMED_JSON, "the body is empty; send an event, a JSON array of events or JSONL")
    try:
        decoded = orjson.loads(stripped)
    except orjson.JSONDecodeError as err:
        if stripped[0] == "[":
            items = split_json_array(stripped)
            if items is None:
                raise BodyRefused(400, MALFORMED_JSON, f"the body is not JSON: {err}") from None
            events = [_decoded_or_text(item) for item in items]
        else:
            # JSONL is split at line feeds only: U+2028 and the like may sit inside strings
            lines = [line for line in stripped.split("\n") if line.strip()]
            if len(lines) < 2:
                raise BodyRefused(400, MALFORMED_JSON, f"the body is not JSON: {err}") from None
            events = [_decoded_or_text(line) for line in lines]
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
        if isinstance(value, str) and (value.isascii() or _encodes(value)):
            return value
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    return None


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_event(event: Any, tenant: str, types: ActivityTypes) -> tuple[bytes | None, str | None, str | None]:
    """One event -> (encoded activity, None, None) or (None, reason, detail)."""
    encoded, reason, detail, _ = _check_event(event, tenant, types)
    return encoded, reason, detail


def _check_event(event: Any, tenant: str, types: ActivityTypes) -> tuple[bytes | None, str | None, str | None,
                                                                           str | None]:
    """check_event, and the accepted activity's lead key "tenant/lead_id"."""
    if isinstance(event, dict):
        named = event.get("tenant")
        if named is None:
            event = {**event, "tenant": tenant}
        elif not isinstance(named, bool) and isinstance(named, (str, int)) and str(named) != tenant:
            return None, WRONG_TENANT, f"this key writes events of tenant {tenant!r}, not {str(named)!r}", None
    try:
        activity = parse_activity(event, types)
    except BadActivity as bad:
        return None, bad.reason, bad.detail, None
    if activity.tenant != tenant:  # a tenant of another JSON type that still names another
        return None, WRONG_TENANT, f"this key writes events of tenant {tenant!r}, not {activity.tenant!r}", None
    try:
        encoded = orjson.dumps(activity.to_json_dict())
    except TypeError as err:  # a value no JSON can carry; orjson-decoded input has none
        return None, MALFORMED_JSON, f"the event cannot be written as JSON: {err}", None
    if len(encoded) > MAX_ACTIVITY_BYTES:  # as published: what the graph measures
        return None, TOO_LARGE, too_large(len(encoded)).detail, None
    return encoded, None, None, f"{activity.tenant}/{activity.lead_id}"


def check_body(body: bytes, tenant: str, types: ActivityTypes, max_events: int) -> CheckedBody:
    results: list[dict] = []
    accepted: list[bytes] = []
    refused: list[str] = []
    leads: list[str] = []
    for event in split_body(body, max_events):
        encoded, reason, detail, lead = _check_event(event, tenant, types)
        if encoded is not None:
            accepted.append(encoded)
            leads.append(lead)
            results.append({"event_id": _event_id(event), "status": "accepted"})
        else:
            refused.append(reason)
            results.append({"event_id": _event_id(event), "status": "refused", "reason": reason, "detail": detail})
    return CheckedBody(results, accepted, refused, leads)

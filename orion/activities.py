"""Activities: the record every source produces, the built-in activity types with their
attribute schemas, tenants' custom types, and the parser that turns raw JSON into a
validated `Activity` or a `BadActivity` with a dead-letter reason.

Plain Python, no engine imports: the Beam DoFns and the Flink functions both call
`parse_activity`, so both engines accept and refuse exactly the same input.

    python -c "from orion.activities import *; print(parse_activity(
        '{\"event_id\":\"e1\",\"tenant\":\"acme\",\"lead_id\":\"7\",\"type\":\"open_email\",'
        '\"occurred_at\":\"2026-11-22T10:00:00Z\",\"attributes\":{\"email\":\"welcome\"}}',
        ActivityTypes()))"
"""
from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any, Mapping, NamedTuple

import orjson

# --- the record ------------------------------------------------------------------


class Activity(NamedTuple):
    """One validated activity. `occurred_at` is epoch milliseconds, UTC (event time)."""

    event_id: str
    tenant: str
    lead_id: str
    type: str
    occurred_at: int
    attributes: dict

    def to_json_dict(self) -> dict:
        return {
            "event_id": self.event_id,
            "tenant": self.tenant,
            "lead_id": self.lead_id,
            "type": self.type,
            "occurred_at": self.occurred_at,
            "attributes": self.attributes,
        }


ACTIVITY_FIELDS = ("event_id", "tenant", "lead_id", "type", "occurred_at", "attributes")
REQUIRED_FIELDS = ("event_id", "tenant", "lead_id", "type", "occurred_at")

# Dead-letter reasons a parse can give; every stage of the graph uses this same vocabulary.
MALFORMED_JSON = "malformed_json"
MISSING_FIELD = "missing_field"
BAD_FIELD = "bad_field"
UNKNOWN_TYPE = "unknown_type"
BAD_ATTRIBUTE = "bad_attribute"
BAD_TIMESTAMP = "bad_timestamp"
TOO_LARGE = "too_large"

# Input limits, the same for every way in (files, Pub/Sub messages, the HTTP collector),
# so what one source accepts no other refuses. An activity's JSON text may be at most
# MAX_ACTIVITY_BYTES (UTF-8; inside a JSON array, its compact JSON; on a line of a file,
# the line without its line end): larger is `too_large`, and its dead letter keeps only
# the start of it (orion.intake: a file's overlong line is never held whole either).
# It may nest at most MAX_NESTING_DEPTH levels, the activity object being the first:
# deeper is `malformed_json`. The depth is what every later stage can take: Beam pickles
# elements and the stores encode attributes recursively, and both give up (RecursionError,
# which would stop the job) long before orjson's own parse limit of 1,024 levels.
MAX_ACTIVITY_BYTES = 1_000_000
MAX_NESTING_DEPTH = 64


class BadActivity(ValueError):
    """Raised by `parse_activity`; `reason` is one short code, `detail` says what to fix."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# --- time ---------------------------------------------------------------------------

MS_PER_UNIT = {
    "minutes": 60_000,
    "hours": 3_600_000,
    "days": 86_400_000,
    "weeks": 7 * 86_400_000,
    "months": 30 * 86_400_000,  # a month is 30 days, by definition of the rule language
}
MS_PER_DAY = MS_PER_UNIT["days"]
_MIN_MS = -62_135_596_800_000  # 0001-01-01T00:00:00Z
_MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


_RFC_3339 = re.compile(r"(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", re.ASCII)
_RFC_3339_NO_OFFSET = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?", re.ASCII)


def parse_timestamp(value: Any) -> int:
    """RFC 3339 text (with an offset) or epoch milliseconds -> epoch milliseconds (UTC).

    Raises ValueError with a message that says what is accepted.
    """
    if isinstance(value, bool):
        raise ValueError("a timestamp is RFC 3339 text or epoch milliseconds, not true/false")
    if isinstance(value, int):
        ms = value
    elif isinstance(value, float) and value.is_integer():
        ms = int(value)
    elif isinstance(value, str):
        # Python's ISO 8601 parser also takes week dates, the basic format and times
        # without seconds: RFC 3339 is checked first, so only it gets through.
        shape = _RFC_3339.fullmatch(value)
        if shape is None:
            if _RFC_3339_NO_OFFSET.fullmatch(value):
                raise ValueError(f"{_shown(value)} has no UTC offset; add Z or +HH:MM")
            raise ValueError(f"{_shown(value)} is not RFC 3339; write it like 2026-11-22T10:00:00Z")
        date_part, time_part, fraction, offset = shape.groups()
        offset = "+00:00" if offset in ("Z", "z") else offset
        try:
            parsed = datetime.fromisoformat(f"{date_part}T{time_part}{(fraction or '')[:7]}{offset}")
        except ValueError as err:
            raise ValueError(f"{_shown(value)} is not a valid RFC 3339 time: {err}") from None
        since_epoch = parsed - _EPOCH
        ms = (
            since_epoch.days * MS_PER_DAY
            + since_epoch.seconds * 1000
            + since_epoch.microseconds // 1000
        )
    else:
        raise ValueError(
            f"a timestamp is RFC 3339 text or epoch milliseconds, not {type(value).__name__}"
        )
    if not _MIN_MS <= ms <= _MAX_MS:
        raise ValueError(f"{_shown(value)} is outside the years 1 to 9999")
    return ms



def _shown(value) -> str:
    """A value as an error message shows it: its repr, at most about 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def format_timestamp(ms: int) -> str:
    """Epoch milliseconds -> RFC 3339 text in UTC, millisecond precision."""
    seconds, millis = divmod(ms, 1000)
    dt = datetime.fromtimestamp(seconds, tz=timezone.utc)
    # the year padded by hand: strftime's %Y does not pad years before 1000 to four digits
    return f"{dt.year:04d}" + dt.strftime("-%m-%dT%H:%M:%S") + f".{millis:03d}Z"


# --- attribute schemas --------------------------------------------------------------

ATTRIBUTE_TYPES = ("string", "number", "boolean", "date", "object", "any")


class AttributeSpec(NamedTuple):
    type: str
    required: bool = False
    enum: tuple | None = None


class ActivityType(NamedTuple):
    """An activity type: its attributes and, where it has one, the selective attribute
    (`indexed_by`) whose exact value keys the trigger index."""

    name: str
    attributes: Mapping[str, AttributeSpec]
    indexed_by: str | None = None


def _spec(type_: str, required: bool = False, enum: tuple | None = None) -> AttributeSpec:
    return AttributeSpec(type_, required, enum)


_STR = _spec("string")
_REQ_STR = _spec("string", True)

BUILTIN_TYPES: dict[str, ActivityType] = {
    t.name: t
    for t in (
        ActivityType(
            "visit_web_page",
            {"url": _REQ_STR, "referrer": _STR, "query": _STR},
            "url",
        ),
        ActivityType("fill_out_form", {"form": _REQ_STR, "fields": _spec("object")}, "form"),
        ActivityType("click_link_in_email", {"email": _REQ_STR, "link": _REQ_STR}, "email"),
        ActivityType("open_email", {"email": _REQ_STR}, "email"),
        ActivityType("email_delivered", {"email": _REQ_STR}, "email"),
        ActivityType(
            "email_bounced",
            {"email": _REQ_STR, "category": _spec("string", True, ("hard", "soft"))},
            "email",
        ),
        ActivityType("unsubscribe_email", {"email": _STR}, "email"),
        # An email a batch send queued (`orion campaign run --activities-out`): fed to
        # the graph, it counts toward the lead's communication limits as the graph's own
        # sends do (orion/campaigns/flows.py), and it is part of the lead's history.
        ActivityType(
            "email_sent",
            {"email": _REQ_STR, "campaign": _REQ_STR, "run": _STR, "operational": _spec("boolean")},
            "email",
        ),
        ActivityType(
            "data_value_changes",
            {"attribute": _REQ_STR, "old_value": _spec("any"), "new_value": _spec("any")},
            "attribute",
        ),
        ActivityType(
            "change_score", {"delta": _spec("number", True), "new_score": _spec("number")}
        ),
        ActivityType("added_to_list", {"list": _REQ_STR}, "list"),
        ActivityType("removed_from_list", {"list": _REQ_STR}, "list"),
        ActivityType("campaign_requested", {"campaign": _REQ_STR, "source": _STR}, "campaign"),
        ActivityType(
            "mobile_app_event",
            {"app": _REQ_STR, "event": _REQ_STR, "properties": _spec("object")},
            "event",
        ),
        ActivityType(
            "device_event",
            {"device": _REQ_STR, "event": _REQ_STR, "properties": _spec("object")},
            "event",
        ),
    )
}

# Attributes every lead has; tenants add their own in settings.lead_attributes.
BUILTIN_LEAD_ATTRIBUTES: dict[str, str] = {
    "email": "string",
    "first_name": "string",
    "last_name": "string",
    "company": "string",
    "title": "string",
    "phone": "string",
    "city": "string",
    "state": "string",
    "country": "string",
    "lead_source": "string",
    "created_at": "date",
    "unsubscribed": "boolean",
    "email_invalid": "boolean",
}


class ActivityTypes:
    """The activity types each tenant may send: the built-ins plus its custom types; and
    the types of the lead attributes each tenant declares (settings.lead_attributes),
    which a data_value_changes activity's new value must fit."""

    def __init__(self, custom: Mapping[str, Mapping[str, ActivityType]] | None = None,
                 lead_attributes: Mapping[str, Mapping[str, str]] | None = None):
        self._custom = {tenant: dict(types) for tenant, types in (custom or {}).items()}
        self._lead_attributes = {tenant: dict(found) for tenant, found in (lead_attributes or {}).items()}

    def lead_attribute_type(self, tenant: str, name: str) -> str | None:
        """The declared type of a lead attribute (built in, or the tenant's), or None."""
        found = BUILTIN_LEAD_ATTRIBUTES.get(name)
        if found is not None:
            return found
        declared = getattr(self, "_lead_attributes", {}).get(tenant)  # (an ActivityTypes pickled before them)
        return declared.get(name) if declared else None

    def lead_attributes(self) -> dict[str, dict[str, str]]:
        return {tenant: dict(found) for tenant, found in getattr(self, "_lead_attributes", {}).items()}

    def lookup(self, tenant: str, type_name: str) -> ActivityType | None:
        found = BUILTIN_TYPES.get(type_name)
        if found is not None:
            return found
        custom = self._custom.get(tenant)
        return custom.get(type_name) if custom else None

    def names(self, tenant: str) -> list[str]:
        return sorted(set(BUILTIN_TYPES) | set(self._custom.get(tenant, ())))

    def custom(self) -> dict[str, dict[str, ActivityType]]:
        return {tenant: dict(types) for tenant, types in self._custom.items()}


def value_has_type(value: Any, type_: str) -> bool:
    """Whether a JSON value fits an attribute type; dates must already be normalized."""
    if type_ == "any":
        return True
    if type_ == "string":
        return isinstance(value, str)
    if type_ == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if type_ == "boolean":
        return isinstance(value, bool)
    if type_ == "object":
        return isinstance(value, dict)
    if type_ == "date":
        return isinstance(value, int) and not isinstance(value, bool)
    return False


def _json_type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def nests_deeper_than(value: Any, levels: int) -> bool:
    """Whether a decoded JSON value nests more than `levels` arrays and objects deep (a
    scalar is 0 levels, `[]` one). It recurses at most `levels` deep, however deep the
    value: a value nested past any stack is judged like any other."""
    if not isinstance(value, (dict, list)):
        return False
    if levels <= 0:
        return True
    for child in value.values() if isinstance(value, dict) else value:
        if isinstance(child, (dict, list)) and nests_deeper_than(child, levels - 1):
            return True
    return False


# An attribute's value sits inside the activity object and its attributes object.
_ATTRIBUTE_LEVELS = MAX_NESTING_DEPTH - 2


def _validate_attributes(type_: ActivityType, attributes: Any) -> dict:
    if attributes is None:
        attributes = {}
    if not isinstance(attributes, dict):
        raise BadActivity(
            BAD_FIELD, f"attributes must be a JSON object, not {_json_type_name(attributes)}"
        )
    specs = type_.attributes
    normalized = None
    for name, value in attributes.items():
        spec = specs.get(name)
        if spec is None:
            known = ", ".join(specs) or "none"
            raise BadActivity(
                BAD_ATTRIBUTE,
                f"unknown attribute {name!r} for {type_.name} (its attributes: {known})",
            )
        if value is None:
            if spec.required:
                raise BadActivity(BAD_ATTRIBUTE, f"{type_.name}.{name} is required, got null")
            continue
        if spec.type == "date":
            try:
                ms = parse_timestamp(value)
            except ValueError as err:
                raise BadActivity(BAD_ATTRIBUTE, f"{type_.name}.{name}: {err}") from None
            if ms != value:
                if normalized is None:
                    normalized = dict(attributes)
                normalized[name] = ms
            continue
        if not value_has_type(value, spec.type):
            raise BadActivity(
                BAD_ATTRIBUTE,
                f"{type_.name}.{name} must be {spec.type}, got {_json_type_name(value)}",
            )
        if isinstance(value, (dict, list)) and nests_deeper_than(value, _ATTRIBUTE_LEVELS):
            raise BadActivity(
                MALFORMED_JSON,
                f"{type_.name}.{name} nests deeper than an activity may "
                f"({MAX_NESTING_DEPTH} levels, the activity object included)",
            )
        if spec.enum is not None and value not in spec.enum:
            raise BadActivity(
                BAD_ATTRIBUTE,
                f"{type_.name}.{name} must be one of {', '.join(spec.enum)}, got {value!r}",
            )
    for name, spec in specs.items():
        if spec.required and attributes.get(name) is None:
            raise BadActivity(BAD_ATTRIBUTE, f"{type_.name} needs attribute {name!r}")
    if type_.name == "change_score":
        _check_score_change(attributes)
    return attributes if normalized is None else normalized


# The largest score change an activity may make, either way: a lead's score stays a
# finite number however many changes it adds up (a float past 1.8e308 is infinite, which
# JSON cannot hold).
MAX_SCORE_CHANGE = 1_000_000_000


def _check_score_change(attributes: dict) -> None:
    for name in ("delta", "new_score"):
        value = attributes.get(name)
        if value is not None and not -MAX_SCORE_CHANGE <= value <= MAX_SCORE_CHANGE:
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
            raise BadActivity(BAD_ATTRIBUTE, f"change_score.{name} must be from {-MAX_SCORE_CHANGE:,} to "
                              f"{MAX_SCORE_CHANGE:,}, got {shown}")


def _identifier(obj: dict, field: str) -> str:
    value = obj[field]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BadActivity(
            BAD_FIELD, f"{field} must be a string or an integer, not {_json_type_name(value)}"
        )
    text = str(value)
    if not text:
        raise BadActivity(BAD_FIELD, f"{field} must not be empty")
    if not text.isascii():
        # JSON text parsed here cannot hold a lone surrogate (orjson refuses it), but an
        # already decoded object can: such an id could never be keyed, stored or logged.
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise BadActivity(
                BAD_FIELD, f"{field} is not valid Unicode text: {err.reason} at position {err.start}"
            ) from None
    if len(text) > MAX_ID_BYTES // 4 and len(text.encode("utf-8")) > MAX_ID_BYTES:
        raise BadActivity(BAD_FIELD, f"{field} is {len(text.encode('utf-8')):,} bytes long (UTF-8); an id holds at "
                          f"most {MAX_ID_BYTES}, as every store keeps it")
    return text


# The longest tenant, lead or event id, in UTF-8 bytes: what every store's id columns and
# keys hold (MySQL's VARBINARY(255)).
MAX_ID_BYTES = 255


def json_text_size(raw: str | bytes | bytearray) -> int:
    """The size in bytes (UTF-8) of JSON text, counted exactly only where it matters."""
    if isinstance(raw, str) and len(raw) > MAX_ACTIVITY_BYTES // 4:
        return len(raw.encode("utf-8", "surrogatepass"))
    return len(raw)


def too_large(size: int) -> BadActivity:
    return BadActivity(
        TOO_LARGE, f"the activity is {size:,} bytes of JSON; an activity may be at most "
        f"{MAX_ACTIVITY_BYTES:,}"
    )


# A JSON string (its closing quote may be missing at the end of the text), or one of the
# characters that give an array its shape. Linear: no nested repetition.
_ARRAY_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{},]', re.S)
_ARRAY_TOKENS_BYTES = re.compile(_ARRAY_TOKENS.pattern.encode("ascii"), re.S)


def split_json_array(text: str | bytes) -> list | None:
    """The items of a JSON array as text (or bytes), each undecoded; None when `text` is
    not one array of comma-separated items.

    Only strings and brackets are tracked, in one pass, without recursion, so one item
    that orjson refuses (nested past its limit, a lone surrogate, a syntax error) does
    not take the rest of its batch with it: each item can be judged on its own.
    """
    if isinstance(text, (bytes, bytearray)):
        pattern, quote, opening, closing = _ARRAY_TOKENS_BYTES, b'"', b"[{", b"]}"
    else:
        pattern, quote, opening, closing = _ARRAY_TOKENS, '"', "[{", "]}"
    items: list = []
    depth = 0
    start = 0
    for token in pattern.finditer(text):
        mark = token.group()[:1]
        if mark == quote:
            continue  # brackets and commas inside a string are text
        if mark in opening:
            depth += 1
            if depth == 1:
                if mark != opening[:1] or text[:token.start()].strip():
                    return None
                start = token.end()
        elif mark in closing:
            depth -= 1
            if depth < 0:
                return None
            if depth == 0:
                if mark != closing[:1] or text[token.end():].strip():
                    return None
                last = text[start:token.start()]
                if items or last.strip():
                    items.append(last)
                return items
        elif depth == 1:  # a comma between two items
            items.append(text[start:token.start()])
            start = token.end()
    return None


def parse_activity(raw: str | bytes | Mapping, types: ActivityTypes) -> Activity:
    """Raw JSON (text, bytes or an already decoded object) -> a validated Activity.

    Raises BadActivity(reason, detail) for anything that is not a valid activity of a
    type the tenant may send, or that is over the input limits (MAX_ACTIVITY_BYTES for
    text; MAX_NESTING_DEPTH always).
    """
    if isinstance(raw, (str, bytes, bytearray)):
        if len(raw) > MAX_ACTIVITY_BYTES // 4:  # only then can it be over the limit
            size = json_text_size(raw)
            if size > MAX_ACTIVITY_BYTES:
                raise too_large(size)
        # orjson: several times faster than json on this, the hottest path, and it refuses
        # what no store can hold (lone surrogates, integers past 64 bits, NaN) and JSON
        # nested past 1,024 levels, instead of recursing until the interpreter gives up.
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as err:
            raise BadActivity(MALFORMED_JSON, str(err)) from None
    else:
        obj = raw
    if not isinstance(obj, dict):
        raise BadActivity(
            MALFORMED_JSON, f"an activity is a JSON object, not {_json_type_name(obj)}"
        )
    missing = [field for field in REQUIRED_FIELDS if obj.get(field) is None]
    if missing:
        raise BadActivity(MISSING_FIELD, "missing " + ", ".join(missing))
    if len(obj) > 5:
        extra = [key for key in obj if key not in ACTIVITY_FIELDS]
        if extra:
            raise BadActivity(
                BAD_FIELD,
                f"unknown field {extra[0]!r}; an activity has {', '.join(ACTIVITY_FIELDS)}",
            )
    tenant = _identifier(obj, "tenant")
    type_name = obj["type"]
    if not isinstance(type_name, str):
        raise BadActivity(BAD_FIELD, f"type must be a string, not {_json_type_name(type_name)}")
    type_ = types.lookup(tenant, type_name)
    if type_ is None:
        raise BadActivity(
            UNKNOWN_TYPE,
            f"{type_name!r} is neither a built-in type nor a custom type of tenant {tenant!r}",
        )
    try:
        occurred_at = parse_timestamp(obj["occurred_at"])
    except ValueError as err:
        raise BadActivity(BAD_TIMESTAMP, f"occurred_at: {err}") from None
    attributes = _validate_attributes(type_, obj.get("attributes"))
    if type_name == "data_value_changes":
        _check_new_value(types, tenant, attributes)
    return Activity(
        _identifier(obj, "event_id"),
        tenant,
        _identifier(obj, "lead_id"),
        type_name,
        occurred_at,
        attributes,
    )


def _check_new_value(types: ActivityTypes, tenant: str, attributes: dict) -> None:
    """A data_value_changes activity sets a lead attribute: its new value must fit the
    attribute's declared type (null clears it); an attribute nobody declared takes any."""
    name = attributes["attribute"]
    if not name:
        raise BadActivity(BAD_ATTRIBUTE, "data_value_changes.attribute must name a lead attribute, not ''")
    value = attributes.get("new_value")
    declared = types.lead_attribute_type(tenant, name)
    if value is None or declared is None or declared == "any":
        return
    if declared == "date":
        try:
            parse_timestamp(value)
        except ValueError as err:
            raise BadActivity(BAD_ATTRIBUTE, f"data_value_changes.new_value for the date attribute {name!r}: "
                              f"{err}") from None
        return
    if not value_has_type(value, declared):
        raise BadActivity(BAD_ATTRIBUTE, f"data_value_changes.new_value for lead attribute {name!r} must be "
                          f"{declared}, got {_json_type_name(value)}")


def activity_sort_key(activity: Activity) -> tuple[int, str]:
    """A lead's activities are evaluated in event-time order, ties broken by event id."""
    return (activity.occurred_at, activity.event_id)

"""Activity parsing: every way raw input can be wrong maps to its dead-letter reason, and
valid input (RFC 3339 or epoch-ms timestamps, text, bytes or decoded JSON) becomes the
same Activity.

    .venv/bin/python -m pytest tests/test_activities.py -q
"""
from __future__ import annotations

import json

import pytest

from orion.activities import (
    BAD_ATTRIBUTE,
    BAD_FIELD,
    BAD_TIMESTAMP,
    MALFORMED_JSON,
    MISSING_FIELD,
    UNKNOWN_TYPE,
    Activity,
    ActivityType,
    ActivityTypes,
    AttributeSpec,
    BadActivity,
    activity_sort_key,
    format_timestamp,
    parse_activity,
    parse_timestamp,
)

from conftest import T0

BUILTINS = ActivityTypes()
_DROP = object()  # marks a field to leave out of raw()


def raw(**overrides) -> dict:
    base = {
        "event_id": "e1",
        "tenant": "acme",
        "lead_id": "7",
        "type": "open_email",
        "occurred_at": "2026-11-22T10:00:00Z",
        "attributes": {"email": "welcome"},
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not _DROP}



def refused(payload, types: ActivityTypes = BUILTINS) -> BadActivity:
    with pytest.raises(BadActivity) as caught:
        parse_activity(payload, types)
    return caught.value


# --- valid input ----------------------------------------------------------------------


def test_valid_json_text_becomes_an_activity_with_epoch_ms_time():
    activity = parse_activity(json.dumps(raw()), BUILTINS)
    assert activity == Activity("e1", "acme", "7", "open_email", T0, {"email": "welcome"})
    assert T0 == 1_795_341_600_000


def test_bytes_and_decoded_objects_parse_the_same_as_text():
    text = json.dumps(raw())
    assert parse_activity(text.encode(), BUILTINS) == parse_activity(text, BUILTINS)
    assert parse_activity(raw(), BUILTINS) == parse_activity(text, BUILTINS)


def test_rfc3339_with_offset_and_epoch_ms_give_the_same_instant():
    utc = parse_activity(raw(occurred_at="2026-11-22T10:00:00Z"), BUILTINS)
    offset = parse_activity(raw(occurred_at="2026-11-22T12:00:00+02:00"), BUILTINS)
    epoch = parse_activity(raw(occurred_at=1_795_341_600_000), BUILTINS)
    assert utc.occurred_at == offset.occurred_at == epoch.occurred_at == 1_795_341_600_000


def test_rfc3339_keeps_milliseconds():
    activity = parse_activity(raw(occurred_at="2026-11-22T10:00:00.123Z"), BUILTINS)
    assert activity.occurred_at == T0 + 123


def test_integral_float_epoch_ms_is_accepted():
    assert parse_activity(raw(occurred_at=1_795_341_600_000.0), BUILTINS).occurred_at == T0


def test_numeric_lead_and_event_ids_become_text():
    activity = parse_activity(raw(lead_id=42, event_id=9), BUILTINS)
    assert (activity.lead_id, activity.event_id) == ("42", "9")


def test_missing_attributes_object_means_no_attributes_for_a_type_without_required_ones():
    activity = parse_activity(raw(type="unsubscribe_email", attributes=_DROP), BUILTINS)
    assert activity.attributes == {}


def test_optional_attribute_given_as_null_is_accepted():
    activity = parse_activity(
        raw(type="visit_web_page", attributes={"url": "https://x.example/", "referrer": None}),
        BUILTINS,
    )
    assert activity.attributes["url"] == "https://x.example/"


def test_format_timestamp_round_trips_parse_timestamp():
    assert format_timestamp(T0 + 5) == "2026-11-22T10:00:00.005Z"
    assert parse_timestamp(format_timestamp(T0 + 5)) == T0 + 5


def test_activities_sort_by_event_time_then_event_id():
    a = Activity("b", "t", "1", "open_email", 2, {})
    b = Activity("a", "t", "1", "open_email", 2, {})
    c = Activity("z", "t", "1", "open_email", 1, {})
    assert sorted([a, b, c], key=activity_sort_key) == [c, b, a]


# --- malformed JSON and fields ----------------------------------------------------------


@pytest.mark.parametrize("payload", ['{"event_id": "e1",', "not json", b"\xff\xfe{", ""])
def test_malformed_json_is_refused_as_malformed_json(payload):
    assert refused(payload).reason == MALFORMED_JSON


@pytest.mark.parametrize("payload", ["[1, 2]", '"text"', "42", "null"])
def test_json_that_is_not_an_object_is_malformed_json(payload):
    error = refused(payload)
    assert error.reason == MALFORMED_JSON
    assert "JSON object" in error.detail


@pytest.mark.parametrize("field", ["event_id", "tenant", "lead_id", "type", "occurred_at"])
def test_each_missing_required_field_is_named(field):
    error = refused(raw(**{field: _DROP}))
    assert error.reason == MISSING_FIELD
    assert field in error.detail


def test_null_required_field_counts_as_missing():
    error = refused(raw(lead_id=None))
    assert error.reason == MISSING_FIELD
    assert "lead_id" in error.detail


def test_all_missing_fields_are_listed_together():
    error = refused({"event_id": "e1", "attributes": {}})
    assert error.reason == MISSING_FIELD
    for field in ("tenant", "lead_id", "type", "occurred_at"):
        assert field in error.detail


def test_unknown_top_level_field_is_a_bad_field():
    error = refused(raw(lead="7"))
    assert error.reason == BAD_FIELD
    assert "'lead'" in error.detail


@pytest.mark.parametrize(
    "field, value",
    [("lead_id", True), ("lead_id", ["7"]), ("event_id", {"id": 1}), ("tenant", 1.5), ("lead_id", "")],
)
def test_identifier_of_the_wrong_json_type_is_a_bad_field(field, value):
    error = refused(raw(**{field: value}))
    assert error.reason == BAD_FIELD
    assert field in error.detail


def test_type_that_is_not_text_is_a_bad_field():
    assert refused(raw(type=3)).reason == BAD_FIELD


def test_attributes_that_are_not_an_object_are_a_bad_field():
    error = refused(raw(attributes=["welcome"]))
    assert error.reason == BAD_FIELD
    assert "attributes" in error.detail


# --- types and attributes --------------------------------------------------------------


def test_unknown_activity_type_is_refused_as_unknown_type():
    error = refused(raw(type="open_emial"))
    assert error.reason == UNKNOWN_TYPE
    assert "open_emial" in error.detail and "acme" in error.detail


def test_unknown_attribute_is_a_bad_attribute_naming_the_known_ones():
    error = refused(raw(attributes={"email": "welcome", "subject": "Hi"}))
    assert error.reason == BAD_ATTRIBUTE
    assert "'subject'" in error.detail and "email" in error.detail


@pytest.mark.parametrize(
    "type_, attributes, named",
    [
        ("open_email", {"email": 5}, "open_email.email"),
        ("change_score", {"delta": "5"}, "change_score.delta"),
        ("change_score", {"delta": True}, "change_score.delta"),
        ("fill_out_form", {"form": "Signup", "fields": ["a"]}, "fill_out_form.fields"),
        ("mobile_app_event", {"app": "shop", "event": "open", "properties": "x"}, "properties"),
    ],
)
def test_attribute_of_the_wrong_type_is_a_bad_attribute(type_, attributes, named):
    error = refused(raw(type=type_, attributes=attributes))
    assert error.reason == BAD_ATTRIBUTE
    assert named in error.detail


def test_missing_required_attribute_is_a_bad_attribute():
    error = refused(raw(type="click_link_in_email", attributes={"email": "welcome"}))
    assert error.reason == BAD_ATTRIBUTE
    assert "'link'" in error.detail


def test_required_attribute_given_as_null_is_a_bad_attribute():
    error = refused(raw(attributes={"email": None}))
    assert error.reason == BAD_ATTRIBUTE
    assert "required" in error.detail


def test_attribute_outside_its_enum_is_a_bad_attribute():
    error = refused(raw(type="email_bounced", attributes={"email": "w", "category": "medium"}))
    assert error.reason == BAD_ATTRIBUTE
    assert "hard" in error.detail and "soft" in error.detail


@pytest.mark.parametrize(
    "value",
    [
        "2026-11-22 10:00",  # no offset
        "2026-11-22T10:00:00",  # no offset
        "22/11/2026",
        "yesterday",
        True,
        1.5,
        [],
        10**20,  # beyond year 9999
        # ISO 8601 forms Python's parser takes, which are not RFC 3339:
        "2026-W47-7T10:00:00Z",  # a week date
        "20261122T100000Z",  # the basic format
        "2026-11-22T10:00Z",  # no seconds
        "2026-11-22 10:00:00Z",  # a space for the T
        "2026-326T10:00:00Z",  # an ordinal date
        "2026-11-22T10:00:00+0100",  # an offset without its colon
    ],
)
def test_bad_timestamp_is_refused_as_bad_timestamp(value):
    error = refused(raw(occurred_at=value))
    assert error.reason == BAD_TIMESTAMP
    assert "occurred_at" in error.detail


@pytest.mark.parametrize("text, expected", [
    ("2026-11-22T10:00:00Z", T0),
    ("2026-11-22t10:00:00z", T0),  # RFC 3339 allows lower case
    ("2026-11-22T11:30:00+01:30", T0),
    ("2026-11-22T10:00:00.123456789Z", T0 + 123),  # any number of fraction digits
])
def test_rfc_3339_times_are_read(text, expected):
    assert parse_timestamp(text) == expected


def test_timestamp_without_offset_says_to_add_one():
    error = refused(raw(occurred_at="2026-11-22T10:00:00"))
    assert error.reason == BAD_TIMESTAMP
    assert "offset" in error.detail


# --- custom types ------------------------------------------------------------------------

STORE_VISIT = ActivityType(
    "store_visit",
    {
        "store": AttributeSpec("string", True),
        "minutes": AttributeSpec("number"),
        "opened_at": AttributeSpec("date"),
        "tier": AttributeSpec("string", False, ("gold", "silver")),
    },
    "store",
)
CUSTOM = ActivityTypes({"globex": {"store_visit": STORE_VISIT}})


def test_custom_type_is_accepted_for_its_own_tenant():
    activity = parse_activity(
        raw(tenant="globex", type="store_visit", attributes={"store": "Flagship", "minutes": 12}),
        CUSTOM,
    )
    assert activity.type == "store_visit" and activity.attributes["minutes"] == 12


def test_custom_type_of_another_tenant_is_an_unknown_type():
    error = refused(raw(tenant="acme", type="store_visit", attributes={"store": "Flagship"}), CUSTOM)
    assert error.reason == UNKNOWN_TYPE
    assert "acme" in error.detail


def test_custom_type_checks_required_attributes_and_enums():
    assert refused(raw(tenant="globex", type="store_visit", attributes={"minutes": 1}), CUSTOM).reason == BAD_ATTRIBUTE
    assert refused(
        raw(tenant="globex", type="store_visit", attributes={"store": "x", "tier": "bronze"}), CUSTOM
    ).reason == BAD_ATTRIBUTE


def test_date_attribute_is_normalized_to_epoch_ms():
    activity = parse_activity(
        raw(tenant="globex", type="store_visit",
            attributes={"store": "x", "opened_at": "2026-11-22T11:00:00+01:00"}),
        CUSTOM,
    )
    assert activity.attributes["opened_at"] == T0


def test_bad_date_attribute_is_a_bad_attribute():
    error = refused(
        raw(tenant="globex", type="store_visit", attributes={"store": "x", "opened_at": "soon"}),
        CUSTOM,
    )
    assert error.reason == BAD_ATTRIBUTE
    assert "opened_at" in error.detail


def test_builtin_types_are_available_to_every_tenant_including_unknown_ones():
    activity = parse_activity(raw(tenant="someone-new"), CUSTOM)
    assert activity.tenant == "someone-new"
    assert "store_visit" in CUSTOM.names("globex") and "store_visit" not in CUSTOM.names("acme")


# --- input no store can hold, refused at parse time ------------------------------------------


def test_json_nested_past_the_depth_limit_is_malformed_not_a_crash():
    deep = '{"event_id": "e1", "tenant": "acme", "lead_id": "7", "type": "open_email", ' \
           '"occurred_at": 0, "attributes": {"x": ' + "[" * 1500 + "]" * 1500 + "}}"
    error = refused(deep)
    assert error.reason == MALFORMED_JSON and "depth" in error.detail


@pytest.mark.parametrize("field", ["lead_id", "tenant", "event_id"])
def test_a_lone_surrogate_in_an_id_is_refused_at_parse_time(field):
    text = json.dumps(raw(**{field: "L\ud800"}))  # JSON text with the escape \ud800
    assert "\\ud800" in text
    error = refused(text)
    assert error.reason == MALFORMED_JSON and "surrogate" in error.detail

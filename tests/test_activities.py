"""Activity parsing: every way raw input can be wrong maps to its dead-letter reason, and
valid input (RFC 3339 or epoch-ms timestamps, text, bytes or decoded JSON) becomes the
same Activity. The input limits (size, nesting, text no store can hold) hold the same for
a line of a file, a Pub/Sub message and an item of a JSON array, and a file holding the
attacks runs to the end with its good lines stored.

    .venv/bin/python -m pytest tests/test_activities.py -q
"""
from __future__ import annotations

import io
import json
import sqlite3

import orjson
import pytest

from orion.activities import (
    BAD_ATTRIBUTE,
    BAD_FIELD,
    BAD_TIMESTAMP,
    MALFORMED_JSON,
    MAX_ACTIVITY_BYTES,
    MAX_NESTING_DEPTH,
    MISSING_FIELD,
    TOO_LARGE,
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
    split_json_array,
)
from orion.deadletters import DeadLetter
from orion.intake import TOO_LARGE_KEPT_BYTES, parse_payload, read_lines

from conftest import SAMPLE_RULES, T0

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


@pytest.mark.parametrize("field", ["lead_id", "tenant", "event_id"])
def test_a_lone_surrogate_in_an_id_of_a_decoded_object_is_a_bad_field(field):
    """Already decoded input (an item of a JSON array, a collector's event) skips orjson's
    check: the id itself is checked, so KeyByLead never meets text it cannot encode."""
    error = refused(raw(**{field: "L\ud800"}))
    assert error.reason == BAD_FIELD and field in error.detail and "surrogate" in error.detail


def test_a_decoded_object_with_a_lone_surrogate_id_is_a_dead_letter_that_can_be_written():
    (found,) = parse_payload(b"[" + json.dumps(raw(lead_id="\ud800")).encode() + b"]", BUILTINS, "m")
    assert isinstance(found, DeadLetter) and found.reason == MALFORMED_JSON  # orjson: in text, refused whole
    from orion.intake import parse_one

    dead = parse_one(raw(lead_id="\udfff"), BUILTINS, "m[0]")
    assert dead.reason == BAD_FIELD
    assert "\\udfff" in dead.to_json()  # kept as an escape, so the dead letter can be written


# --- input limits: the same for a file line, a message and an array item -----------------


def padded(size: int, **overrides) -> str:
    """A valid activity whose JSON text is exactly `size` bytes (ASCII)."""
    text = json.dumps(raw(type="visit_web_page", attributes={"url": ""}, **overrides))
    return text.replace('"url": ""', '"url": "' + "x" * (size - len(text)) + '"')


def test_an_activity_of_the_largest_size_is_accepted_and_one_byte_more_is_too_large():
    largest = padded(MAX_ACTIVITY_BYTES)
    assert len(largest.encode()) == MAX_ACTIVITY_BYTES
    assert len(parse_activity(largest, BUILTINS).attributes["url"]) > 999_000
    assert len(parse_activity(largest.encode(), BUILTINS).attributes["url"]) > 999_000
    error = refused(padded(MAX_ACTIVITY_BYTES + 1))
    assert error.reason == TOO_LARGE and "1,000,001 bytes" in error.detail and "1,000,000" in error.detail


def test_size_is_counted_in_utf8_bytes_not_characters():
    text = json.dumps(raw(type="visit_web_page", attributes={"url": "é" * 600_000}), ensure_ascii=False)
    assert len(text) < MAX_ACTIVITY_BYTES < len(text.encode())
    assert refused(text).reason == TOO_LARGE
    assert refused(text.encode()).reason == TOO_LARGE


def kept_only_its_start(letter: DeadLetter, big: str, size: int) -> bool:
    """A too_large dead letter keeps the first TOO_LARGE_KEPT_BYTES of its element and
    says how large it was, so a letter never copies a megabyte."""
    return (letter.reason == TOO_LARGE and letter.element == big[:TOO_LARGE_KEPT_BYTES]
            and f"{size:,} bytes" in letter.detail and "keeps its first 1,000 bytes" in letter.detail
            and len(letter.to_json()) < 2 * TOO_LARGE_KEPT_BYTES)


@pytest.mark.parametrize("size", [1_100_000, 10_000_000])
def test_an_oversized_line_or_message_is_too_large_and_the_rest_go_through(size):
    big = padded(size, event_id="big")
    good = [json.dumps(raw(event_id=f"g{n}", occurred_at=T0 + n)) for n in range(3)]
    found = list(read_lines([good[0] + "\n", big + "\n", good[1] + "\n", good[2]], BUILTINS, "f.jsonl", None))
    assert [type(f).__name__ for f in found] == ["Activity", "DeadLetter", "Activity", "Activity"]
    assert (found[1].reason, found[1].source) == (TOO_LARGE, "f.jsonl:2")
    assert kept_only_its_start(found[1], big, size)
    (message,) = parse_payload(big.encode(), BUILTINS, "sub")
    assert kept_only_its_start(message, big, size)
    jsonl = list(parse_payload("\n".join([good[0], big, good[1]]).encode(), BUILTINS, "sub"))
    assert [getattr(f, "reason", None) for f in jsonl] == [None, TOO_LARGE, None]
    assert kept_only_its_start(jsonl[1], big, size)


@pytest.mark.parametrize("line_end", ["\n", "\r\n", ""])
def test_a_line_of_exactly_the_limit_is_read_whatever_ends_it_and_one_byte_more_is_too_large(line_end):
    largest, over = padded(MAX_ACTIVITY_BYTES, event_id="largest"), padded(MAX_ACTIVITY_BYTES + 1, event_id="over")
    text = (largest + line_end + over + line_end + json.dumps(raw(event_id="after")) + line_end)
    if not line_end:  # no line ends: one line, over the limit
        text = largest + over
    for lines in (io.BytesIO(text.encode()), io.StringIO(text), text.encode().splitlines(keepends=True)):
        found = list(read_lines(lines, BUILTINS, "f.jsonl", 60_000))
        if not line_end:
            assert [(f.reason, f.source) for f in found] == [(TOO_LARGE, "f.jsonl:1")]
            assert f"{2 * MAX_ACTIVITY_BYTES + 1:,} bytes" in found[0].detail
            continue
        assert [getattr(f, "event_id", None) or f.reason for f in found] == ["largest", TOO_LARGE, "after"]
        assert found[1].source == "f.jsonl:2" and kept_only_its_start(found[1], over, MAX_ACTIVITY_BYTES + 1)


def test_a_multibyte_character_is_never_cut_in_two_where_a_dead_letter_is_cut():
    big = json.dumps(raw(type="visit_web_page", attributes={"url": "x" + "é" * 600_000}), ensure_ascii=False)
    (letter,) = read_lines([big.encode()], BUILTINS, "f.jsonl", None)
    assert letter.reason == TOO_LARGE and "\ufffd" not in letter.element
    assert big.startswith(letter.element) and len(big[:len(letter.element) + 1].encode()) > TOO_LARGE_KEPT_BYTES


def test_a_json_array_may_exceed_the_limit_but_each_of_its_items_may_not():
    small = [raw(event_id=f"s{n}", type="visit_web_page", attributes={"url": "u" * 2_000}) for n in range(600)]
    payload = json.dumps(small).encode()
    assert len(payload) > MAX_ACTIVITY_BYTES
    found = list(parse_payload(payload, BUILTINS, "sub"))
    assert len(found) == 600 and all(isinstance(f, Activity) for f in found)

    big = json.loads(padded(1_100_000, event_id="big"))
    found = list(parse_payload(json.dumps([small[0], big, small[1]]).encode(), BUILTINS, "sub"))
    assert [getattr(f, "reason", None) for f in found] == [None, TOO_LARGE, None]
    assert found[1].source == "sub[1]" and found[1].element.startswith('{"event_id":"big"')
    assert len(found[1].element) == TOO_LARGE_KEPT_BYTES and "keeps its first 1,000 bytes" in found[1].detail


def nested(depth: int) -> str:
    """An activity whose JSON nests `depth` levels, counting the activity object as one."""
    inner = depth - 3  # activity, attributes and the fields object
    return json.dumps(raw(type="fill_out_form", attributes={"form": "f", "fields": {}})).replace(
        '"fields": {}', '"fields": {"x": ' + "[" * inner + "]" * inner + "}")


def test_nesting_up_to_the_limit_is_accepted_and_deeper_is_refused_in_text_and_decoded_form():
    assert parse_activity(nested(MAX_NESTING_DEPTH), BUILTINS).attributes["form"] == "f"
    assert parse_activity(orjson.loads(nested(MAX_NESTING_DEPTH)), BUILTINS).type == "fill_out_form"
    for deeper in (nested(MAX_NESTING_DEPTH + 1), nested(1_000)):  # 1,000: orjson reads it, Beam could not pickle it
        for form in (deeper, orjson.loads(deeper)):
            error = refused(form)
            assert error.reason == MALFORMED_JSON and f"{MAX_NESTING_DEPTH} levels" in error.detail


def test_a_decoded_object_nested_far_past_any_parser_is_refused_without_recursion():
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    error = refused(raw(type="fill_out_form", attributes={"form": "f", "fields": {"x": deep}}))
    assert error.reason == MALFORMED_JSON
    from orion.intake import parse_one

    dead = parse_one(raw(type="fill_out_form", attributes={"form": "f", "fields": {"x": deep}}), BUILTINS, "m")
    assert dead.reason == MALFORMED_JSON and dead.to_json()  # its element could not be JSON: said so, not raised


def test_one_bad_item_of_a_json_array_is_refused_alone():
    """Items orjson refuses inside an array (past its depth, a lone surrogate, broken
    syntax) would sink the whole message: each item is judged on its own instead."""
    good = [json.dumps(raw(event_id=f"g{n}")) for n in range(3)]
    deep = nested(1_500)
    surrogate = json.dumps(raw(event_id="s", lead_id="\ud800"))
    payload = "[" + ",".join([good[0], deep, good[1], surrogate, '{"event_id": }', good[2]]) + "]"
    found = list(parse_payload(payload.encode(), BUILTINS, "sub"))
    assert [getattr(f, "reason", None) for f in found] == [None, MALFORMED_JSON, None, MALFORMED_JSON,
                                                             MALFORMED_JSON, None]
    assert [f.event_id for f in found if isinstance(f, Activity)] == ["g0", "g1", "g2"]
    assert "depth" in found[1].detail and "surrogate" in found[3].detail
    assert [f.source for f in found if isinstance(f, DeadLetter)] == ["sub[1]", "sub[3]", "sub[4]"]
    assert found[1].element == deep  # as it arrived
    (whole,) = parse_payload(b"[" + good[0].encode() + b", {", BUILTINS, "sub")  # no array at all
    assert whole.reason == MALFORMED_JSON and whole.source == "sub"


@pytest.mark.parametrize("text, items", [
    ("[]", []), ("  [ ]  ", []), ("[1]", ["1"]), ('[1, "a,]", {"b": [2, 3]}]', ["1", ' "a,]"', ' {"b": [2, 3]}']),
    ('["\\"],"]', ['"\\"],"']), ("[1,,2]", ["1", "", "2"]), ("[[[[]]]]", ["[[[]]]"]),
])
def test_split_json_array_tracks_strings_and_brackets(text, items):
    assert split_json_array(text) == items
    assert split_json_array(text.encode()) == [item.encode() for item in items]


@pytest.mark.parametrize("text", ["", "[1", "x[1]", "[1] x", "[1}", '{"a": 1}', "]", '["open]', "[1]]"])
def test_split_json_array_refuses_what_is_not_one_array(text):
    assert split_json_array(text) is None


# --- the attacks, against the whole graph -------------------------------------------------


def test_a_file_with_every_input_attack_runs_to_the_end_and_stores_its_good_lines(tmp_path, capsys):
    """`orion run` over a file holding, between good lines, a 3 KB line nested 1,500
    levels, one nested 1,000 levels (orjson reads that; Beam could not pickle it), lone
    surrogates in JSON text, and a 1.1 MB activity: exit 0, every good line stored, each
    attack one dead letter with its reason."""
    from orion.cli import main

    def event(n: int, **fields) -> dict:
        found = {"event_id": f"g{n}", "tenant": "acme", "lead_id": f"L{n}", "type": "visit_web_page",
                 "occurred_at": T0 + n, "attributes": {"url": f"https://acme.example/{n}"}}
        found.update(fields)
        return found

    deep = '{"event_id": "deep", "tenant": "acme", "lead_id": "D", "type": "visit_web_page", ' \
           '"occurred_at": 0, "attributes": {"url": ' + "[" * 1500 + "]" * 1500 + "}}"
    assert 2_900 < len(deep) < 3_300
    attacks = [
        (deep, MALFORMED_JSON),
        (nested(1_000).replace('"e1"', '"deep-1000"'), MALFORMED_JSON),
        (json.dumps(event(90, lead_id="\ud800")), MALFORMED_JSON),
        (json.dumps(event(91, tenant="acme\udc00")), MALFORMED_JSON),
        (padded(1_100_000, event_id="big", occurred_at=T0), TOO_LARGE),
    ]
    lines = []
    for n, (attack, _) in enumerate(attacks):
        lines += [json.dumps(event(n)), attack]
    lines.append(json.dumps(event(len(attacks))))
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(lines) + "\n")
    db = tmp_path / "store.db"
    out = tmp_path / "out"

    status = main(["run", "--events", str(events), "--rules", str(SAMPLE_RULES), "--store", f"sqlite:///{db}",
                   "--out-dir", str(out), "--outbox", "none"])

    assert status == 0
    with sqlite3.connect(db) as connection:
        stored = sorted(row[0] for row in connection.execute("SELECT event_id FROM activities"))
    assert stored == sorted(f"g{n}" for n in range(len(attacks) + 1))
    dead = [json.loads(line) for f in out.glob("dead-letters-*.jsonl") for line in f.read_text().splitlines()]
    assert sorted((d["source"].rsplit(":", 1)[1], d["reason"]) for d in dead) == sorted(
        (str(2 * n + 2), reason) for n, (_, reason) in enumerate(attacks))
    assert "dead letters:     5" in capsys.readouterr().out


@pytest.mark.parametrize("field", ["lead_id", "event_id", "tenant"])
def test_an_id_longer_than_every_store_keeps_is_a_bad_field(field):
    """Ids are at most 255 bytes of UTF-8 (MySQL's id columns): longer ones were stored
    by some stores and refused by others."""
    base = {"event_id": "e1", "tenant": "acme", "lead_id": "L1", "type": "visit_web_page", "occurred_at": T0,
            "attributes": {"url": "https://acme.example/"}}
    assert parse_activity({**base, field: "é" * 127}, ActivityTypes())  # 254 bytes
    for long_id in ("x" * 256, "é" * 128, "x" * 200_000):
        with pytest.raises(BadActivity) as refused:
            parse_activity({**base, field: long_id}, ActivityTypes())
        assert refused.value.reason == BAD_FIELD and "at most 255" in str(refused.value)


def test_a_new_value_must_fit_the_type_of_the_lead_attribute_it_sets(tmp_path):
    """data_value_changes wrote any value into a declared lead attribute (employees:
    "lots", vip: "yes"), which every filter on it then quietly missed."""
    from orion.rules import load_rules

    (tmp_path / "acme.yaml").write_text(
        "tenant: acme\nsettings:\n  lead_attributes: {employees: number, vip: boolean, signed_up: date}\n")
    types = load_rules(tmp_path).activity_types

    def change(attribute, value, tenant="acme"):
        return parse_activity({"event_id": "e", "tenant": tenant, "lead_id": "L", "type": "data_value_changes",
                               "occurred_at": T0, "attributes": {"attribute": attribute, "new_value": value}}, types)

    for attribute, value in (("employees", 12), ("employees", 2.5), ("vip", True), ("signed_up", "2026-01-01T00:00:00Z"),
                             ("signed_up", T0), ("email", "a@b.example"), ("unsubscribed", False), ("employees", None),
                             ("nickname", {"any": ["thing"]})):
        assert change(attribute, value).attributes["new_value"] == value
    for attribute, value, said in (("employees", "lots", "must be number, got string"),
                                   ("employees", [1, 2], "must be number, got array"),
                                   ("vip", "yes", "must be boolean"), ("signed_up", "not a date", "not RFC 3339"),
                                   ("email", 5, "must be string"), ("unsubscribed", "no", "must be boolean"),
                                   ("", "x", "must name a lead attribute")):
        with pytest.raises(BadActivity) as refused:
            change(attribute, value)
        assert refused.value.reason == BAD_ATTRIBUTE and said in str(refused.value), (attribute, value)
    # another tenant's declarations are not this one's
    assert change("employees", "lots", tenant="globex").attributes["new_value"] == "lots"

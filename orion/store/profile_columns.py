"""A lead profile as SQL columns. The SQL stores keep each lead's profile in one table,
`lead_profiles`: the encoded profile (`data`, orion.profiles) and, beside it, the lead's
attributes, score and lists as columns of their own, so SQL users and the batch
campaigns' selection can read them without decoding the profile. A row that has only
those columns (written with SQL: the lead database `orion campaign init` users filled by
hand) is a lead profile too: it reads as a profile with those attributes, score and lists.

    python -c "from orion.store.profile_columns import *; print(profile_of_columns('{\\"email\\": \\"a@b.example\\"}', 3, '[]'))"
"""
from __future__ import annotations

import json
import re

from orion.campaigns.flows import LeadFlows
from orion.profiles import LeadRecord, ProfileError, decode_profile, encode_profile
from orion.rules.model import LeadState

# The columns of a profile that has no readable lead part: no attributes, score 0, no lists.
EMPTY_COLUMNS = ("{}", 0.0, "[]")

_ENCODER = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False)
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# lead_profiles.lists as read -> the frozenset: most leads share a few combinations.
_LIST_SETS: dict[str, frozenset] = {}


def _json_text(value) -> str:
    """Compact JSON, valid UTF-8: a lone surrogate (an attribute from the input can hold
    one) is written as its JSON escape, as orion.profiles writes it."""
    text = _ENCODER.encode(value)
    if text.isascii():
        return text
    return _LONE_SURROGATE.sub(lambda found: f"\\u{ord(found.group()):04x}", text)


def _text(value):
    return value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else value


def profile_columns(data: str) -> tuple[str, float, str]:
    """(attributes JSON, score, lists JSON) of an encoded profile, as a store writes them
    beside it; EMPTY_COLUMNS for text that is not a profile (to the store's interface a
    profile is opaque text, and any text may be written)."""
    try:
        lead = decode_profile(data).flows.lead
        return _json_text(lead.attributes), float(lead.score), _json_text(sorted(lead.lists))
    except (ProfileError, TypeError, ValueError):
        return EMPTY_COLUMNS


def lead_state_of_columns(attributes, score, lists) -> LeadState:
    """A lead's state from its attributes, score and lists columns (JSON text, a number,
    JSON text; None: none); ValueError, saying which, if they are unreadable."""
    attributes, lists = _text(attributes), _text(lists)
    found = json.loads(attributes) if attributes else {}
    if not isinstance(found, dict):
        raise ValueError(f"attributes must be a JSON object, not {type(found).__name__}")
    names = _LIST_SETS.get(lists) if lists else frozenset()
    if names is None:
        listed = json.loads(lists)
        if not isinstance(listed, list) or not all(isinstance(name, str) for name in listed):
            raise ValueError("lists must be a JSON array of list names")
        names = frozenset(listed)
        if len(_LIST_SETS) < 4096:
            _LIST_SETS[lists] = names
    return LeadState(found, float(score or 0), names)


def profile_of_columns(attributes, score, lists) -> str:
    """The profile text of a row that has only the columns: a profile with those
    attributes, score and lists and nothing else. Columns that cannot be read give a
    text that says so and is not a profile, so a reader that decodes it (the graph's
    seeding) dead-letters it with the row's values rather than guessing."""
    try:
        state = lead_state_of_columns(attributes, score, lists)
    except ValueError as err:
        return (f"unreadable lead_profiles row ({err}): attributes {_text(attributes)!r}, score {score!r}, "
                f"lists {_text(lists)!r}")
    return encode_profile(LeadRecord(flows=LeadFlows(lead=state)))

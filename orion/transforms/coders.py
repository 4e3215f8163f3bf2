"""Coders with a schema and a version for Orion's long-lived Beam state, instead of
pickle: a pickled class breaks when its module changes, which would lose every lead's
state on a pipeline update (`--update`) or a restore from a snapshot.

- `ActivityCoder`: an activity as compact JSON of its six fields (the same shape the
  intake reads), through orjson;
- `LeadRecordCoder`: a lead's LeadRecord as versioned profile JSON with its history
  counters (orion.profiles: every older version still decodes).

    python -c "from orion.transforms.coders import ActivityCoder; print(ActivityCoder().encode(None) if 0 else 'ok')"
"""
from __future__ import annotations

import json

import orjson
from apache_beam.coders import Coder

from orion.activities import Activity
from orion.profiles import LeadRecord, decode_profile, encode_profile


class ActivityCoder(Coder):
    """Activity <-> JSON bytes [event_id, tenant, lead_id, type, occurred_at, attributes]."""

    def encode(self, activity: Activity) -> bytes:
        try:
            return orjson.dumps(tuple(activity))
        except TypeError:  # what orjson refuses (a lone surrogate, an int past 64 bits)
            return json.dumps(tuple(activity), ensure_ascii=True).encode("ascii")

    def decode(self, encoded: bytes) -> Activity:
        try:
            return Activity(*orjson.loads(encoded))
        except orjson.JSONDecodeError:
            return Activity(*json.loads(encoded))

    def is_deterministic(self) -> bool:
        return False  # attribute objects keep their key order, which may differ

    def to_type_hint(self):
        return Activity


class LeadRecordCoder(Coder):
    """LeadRecord <-> versioned profile JSON bytes, history counters included."""

    def encode(self, record: LeadRecord) -> bytes:
        return encode_profile(record, history=True).encode("utf-8", "surrogatepass")

    def decode(self, encoded: bytes) -> LeadRecord:
        return decode_profile(encoded.decode("utf-8", "surrogatepass"))

    def is_deterministic(self) -> bool:
        return True

    def to_type_hint(self):
        return LeadRecord

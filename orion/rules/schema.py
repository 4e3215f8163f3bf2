"""The JSON Schema of a rule file: the structure a tenant's YAML must have.

Structure only: whether an operator suits an attribute's type, whether a list, template,
activity type or campaign exists, and the like are semantic checks in `compiler.py`,
which needs the whole tenant to answer them. Every object is closed
(`additionalProperties: false`) so a misspelt key is an error, not a silent no-op.

    python -c "import json, orion.rules.schema as s; print(json.dumps(s.RULE_FILE_SCHEMA, indent=1))"
"""
from __future__ import annotations

from orion.activities import ATTRIBUTE_TYPES, MS_PER_UNIT

UNITS = list(MS_PER_UNIT)

STRING_OPERATORS = (
    "is", "is_not", "contains", "not_contains", "starts_with", "ends_with",
    "matches", "in", "not_in", "is_empty", "is_not_empty",
)
NUMBER_OPERATORS = (
    "is", "is_not", "in", "not_in", "gt", "ge", "lt", "le", "between",
    "is_empty", "is_not_empty",
)
BOOLEAN_OPERATORS = ("is", "is_not", "is_empty", "is_not_empty")
DATE_OPERATORS = ("in_past", "before", "after", "between", "is_empty", "is_not_empty")
# Values inside object attributes (form fields, app properties) have no declared type.
ANY_OPERATORS = tuple(
    dict.fromkeys(STRING_OPERATORS + NUMBER_OPERATORS + BOOLEAN_OPERATORS)
)
OPERATORS = tuple(dict.fromkeys(ANY_OPERATORS + DATE_OPERATORS))
OPERATORS_BY_TYPE = {
    "string": STRING_OPERATORS,
    "number": NUMBER_OPERATORS,
    "boolean": BOOLEAN_OPERATORS,
    "date": DATE_OPERATORS,
    "any": ANY_OPERATORS,
    "object": ("is_empty", "is_not_empty"),
}

STEP_KINDS = (
    "send_email", "change_score", "change_data_value", "add_to_list", "remove_from_list",
    "wait", "remove_from_flow", "request_campaign", "webhook",
)

_NAME = {"type": "string", "minLength": 1}
_DURATION = {
    "type": "object",
    "additionalProperties": False,
    "required": ["n", "unit"],
    "properties": {"n": {"type": "integer", "minimum": 1}, "unit": {"enum": UNITS}},
}
_OPERATORS = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "properties": {op: {} for op in OPERATORS},
}
_WHERE = {"type": "object", "additionalProperties": _OPERATORS}
_FILTER = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "maxProperties": 1,
    "properties": {
        "lead": _WHERE,
        "score": _OPERATORS,
        "member_of_list": _NAME,
        "not_member_of_list": _NAME,
        "activity_history": {
            "type": "object",
            "additionalProperties": False,
            "required": ["activity", "in_past"],
            "properties": {
                "activity": _NAME,
                "where": _WHERE,
                "at_least": {"type": "integer", "minimum": 0},
                "at_most": {"type": "integer", "minimum": 0},
                "in_past": _DURATION,
            },
        },
    },
}
_FILTERS = {"type": "array", "items": _FILTER}
_LOGIC = {"type": "string", "minLength": 1}

_ACTIONS = {
    "send_email": {
        "type": "object",
        "additionalProperties": False,
        "required": ["template"],
        "properties": {"template": _NAME, "operational": {"type": "boolean"}},
    },
    "change_score": {
        "type": "object",
        "additionalProperties": False,
        "minProperties": 1,
        "maxProperties": 1,
        "properties": {"delta": {"type": "number"}, "set": {"type": "number"}},
    },
    "change_data_value": {
        "type": "object",
        "additionalProperties": False,
        "required": ["attribute", "value"],
        "properties": {"attribute": _NAME, "value": {}},
    },
    "add_to_list": {
        "type": "object",
        "additionalProperties": False,
        "required": ["list"],
        "properties": {"list": _NAME},
    },
    "remove_from_list": {
        "type": "object",
        "additionalProperties": False,
        "required": ["list"],
        "properties": {"list": _NAME},
    },
    "wait": {
        "type": "object",
        "additionalProperties": False,
        "minProperties": 1,
        "maxProperties": 1,
        "properties": {"duration": _DURATION, "until": {"type": ["string", "integer"]}},
    },
    "remove_from_flow": {
        "type": "object",
        "additionalProperties": False,
        "required": ["campaigns"],
        "properties": {"campaigns": {"type": "array", "minItems": 1, "items": _NAME}},
    },
    "request_campaign": {
        "type": "object",
        "additionalProperties": False,
        "required": ["campaign"],
        "properties": {"campaign": _NAME},
    },
    "webhook": {
        "type": "object",
        "additionalProperties": False,
        "required": ["name"],
        "properties": {"name": _NAME},
    },
}
_ACTION_STEP = {"type": "object", "additionalProperties": False, "properties": _ACTIONS}
_STEP = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        **_ACTIONS,
        "choices": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["if", "then"],
                "properties": {"if": _FILTERS, "logic": _LOGIC, "then": _ACTION_STEP},
            },
        },
    },
}

_ATTRIBUTE_SPEC = {
    "anyOf": [
        {"enum": list(ATTRIBUTE_TYPES)},
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["type"],
            "properties": {
                "type": {"enum": list(ATTRIBUTE_TYPES)},
                "required": {"type": "boolean"},
                "enum": {"type": "array", "minItems": 1, "items": {"type": "string"}},
            },
        },
    ]
}

_SETTINGS = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "communication_limits": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "per_day": {"type": "integer", "minimum": 0},
                "per_7_days": {"type": "integer", "minimum": 0},
            },
        },
        "lists": {"type": "array", "items": _NAME},
        "lead_attributes": {
            "type": "object",
            "additionalProperties": {"enum": ["string", "number", "boolean", "date"]},
        },
        "activity_types": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "required": ["attributes"],
                "properties": {
                    "description": {"type": "string"},
                    "attributes": {"type": "object", "additionalProperties": _ATTRIBUTE_SPEC},
                    "indexed_by": _NAME,
                },
            },
        },
    },
}

_CAMPAIGN = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": _NAME,
        "description": {"type": "string"},
        "type": {"enum": ["trigger", "batch"]},
        "status": {"enum": ["active", "inactive"]},
        "priority": {"type": "integer"},
        "triggers": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["activity"],
                "properties": {"activity": _NAME, "where": _WHERE},
            },
        },
        "filters": _FILTERS,
        "logic": _LOGIC,
        "qualification": {
            "anyOf": [
                {"enum": ["once", "every_time"]},
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["once_every"],
                    "properties": {"once_every": _DURATION},
                },
            ]
        },
        "schedule": {
            "type": "object",
            "additionalProperties": False,
            "minProperties": 1,
            "properties": {
                "at": {"type": ["string", "integer"]},
                "every": _DURATION,
                "starting": {"type": ["string", "integer"]},
            },
        },
        "flow": {"type": "array", "items": _STEP},
    },
}

RULE_FILE_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Orion rule file: one tenant's settings and campaigns",
    "type": "object",
    "additionalProperties": False,
    "required": ["tenant"],
    "properties": {
        "tenant": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]*$"},
        "settings": _SETTINGS,
        "campaigns": {"type": "array", "items": _CAMPAIGN},
    },
}

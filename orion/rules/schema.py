"""The JSON Schema of a rule file: the structure a tenant's YAML must have.

Structure only: whether an operator suits an attribute's type, whether a list, template,
activity type or campaign exists, and the like are semantic checks in `compiler.py`,
which needs the whole tenant to answer them. Every object is closed
(`additionalProperties: false`) so a misspelt key is an error, not a silent no-op.

    python -c "import json, orion.rules.schema as s; print(json.dumps(s.RULE_FILE_SCHEMA, indent=1))"
"""
from __future__ import annotations

import re

from orion.activities import ATTRIBUTE_TYPES, MS_PER_UNIT
from orion.rules.limits import MAX_CASCADE_ACTIVITIES, MAX_EMAIL_BYTES, MIN_EMAIL_BYTES

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
        # as orion.activities.MAX_SCORE_CHANGE bounds a change_score activity's
        "properties": {"delta": {"type": "number", "minimum": -1_000_000_000, "maximum": 1_000_000_000},
                       "set": {"type": "number", "minimum": -1_000_000_000, "maximum": 1_000_000_000}},
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
        # A tenant's budgets (orion/rules/limits.py has the defaults and the ceilings).
        "limits": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "max_email_bytes": {"type": "integer", "minimum": MIN_EMAIL_BYTES, "maximum": MAX_EMAIL_BYTES},
                "max_cascade_activities": {"type": "integer", "minimum": 1,
                                           "maximum": MAX_CASCADE_ACTIVITIES},
            },
        },
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

# Experiences: what `POST /v1/decide` answers for a placement (docs/decisions.md).
# The request's context is the page and the visitor's device, not the lead: these are its
# fields, each with the string operators, and the local time of day with its own.
CONTEXT_FIELDS = ("url", "referrer", "device", "country")
TIME_OF_DAY_OPERATORS = ("between", "before", "after", "is_empty", "is_not_empty")
_TIME_OF_DAY = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "properties": {
        "between": {"type": "array", "minItems": 2, "items": {"type": "string"}},
        "before": {"type": "string"},
        "after": {"type": "string"},
        "is_empty": {},
        "is_not_empty": {},
    },
}
_CONTENT = {"json": {}, "template": {"type": "string"}}
_VARIANT = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "weight"],
    "properties": {"name": _NAME, "weight": {"type": "number", "minimum": 0, "maximum": 1_000_000_000}, **_CONTENT},
}
_EXPERIENCE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "placement", "variants"],
    "properties": {
        "name": _NAME,
        "description": {"type": "string"},
        "placement": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]*\\Z"},
        "status": {"enum": ["active", "inactive"]},
        "priority": {"type": "integer"},
        "schedule": {
            "type": "object",
            "additionalProperties": False,
            "minProperties": 1,
            "properties": {"starting": {"type": ["string", "integer"]}, "ending": {"type": ["string", "integer"]}},
        },
        "audience": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "filters": _FILTERS,
                "logic": _LOGIC,
                "context": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {**{field: _OPERATORS for field in CONTEXT_FIELDS}, "local_time": _TIME_OF_DAY},
                },
            },
        },
        "variants": {"type": "array", "minItems": 1, "items": _VARIANT},
        "control": {
            "type": "object",
            "additionalProperties": False,
            "required": ["weight"],
            "properties": {"weight": {"type": "number", "minimum": 0, "maximum": 1_000_000_000}, **_CONTENT},
        },
        "goal": {
            "type": "object",
            "additionalProperties": False,
            "required": ["activity", "within"],
            "properties": {"activity": _NAME, "where": _WHERE, "within": _DURATION},
        },
    },
}

RULE_FILE_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Orion rule file: one tenant's settings, campaigns and experiences",
    "type": "object",
    "additionalProperties": False,
    "required": ["tenant"],
    "properties": {
        "tenant": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]*\\Z"},
        "settings": _SETTINGS,
        "campaigns": {"type": "array", "items": _CAMPAIGN},
        "experiences": {"type": "array", "items": _EXPERIENCE},
    },
}


# --- a quick check for documents that are valid -------------------------------------

_JSON_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    # Stricter than JSON Schema (which also takes 1.0 as an integer): a stricter check
    # only sends a document on to the full validator.
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}
_ANNOTATIONS = frozenset({"$schema", "title", "description"})


def quick_validator(schema: dict):
    """A function `valid(document) -> bool` for the subset of JSON Schema this file uses,
    many times faster than jsonschema. True only when jsonschema would find no error;
    False when it might find one (or the schema uses a keyword this does not know), so
    the caller asks jsonschema, which words the errors. Most rule files are valid."""
    checks = []
    for keyword, value in schema.items():
        if keyword in _ANNOTATIONS:
            continue
        make = _QUICK_KEYWORDS.get(keyword)
        if make is None:
            return lambda instance: False
        check = make(value, schema)
        if check is not None:
            checks.append(check)
    if not checks:
        return lambda instance: True
    if len(checks) == 1:
        return checks[0]
    return lambda instance: all(check(instance) for check in checks)


def _quick_type(value, schema):
    types = [_JSON_TYPES[t] for t in (value if isinstance(value, list) else [value])]
    return lambda instance: any(is_type(instance) for is_type in types)


def _quick_properties(value, schema):
    validators = {name: quick_validator(sub) for name, sub in value.items()}

    def check(instance) -> bool:
        if not isinstance(instance, dict):
            return True
        for name, valid in validators.items():
            if name in instance and not valid(instance[name]):
                return False
        return True

    return check


def _quick_additional_properties(value, schema):
    known = frozenset(schema.get("properties", {}))
    if value is False:
        return lambda instance: not isinstance(instance, dict) or all(key in known for key in instance)
    if value is True:
        return None
    valid = quick_validator(value)
    return lambda instance: not isinstance(instance, dict) or all(
        key in known or valid(item) for key, item in instance.items()
    )


def _quick_required(value, schema):
    return lambda instance: not isinstance(instance, dict) or all(name in instance for name in value)


def _quick_items(value, schema):
    valid = quick_validator(value)
    return lambda instance: not isinstance(instance, list) or all(valid(item) for item in instance)


def _quick_enum(value, schema):
    # Same type and equal: JSON Schema never takes true for 1; a stricter check is safe.
    return lambda instance: any(type(option) is type(instance) and option == instance for option in value)


def _quick_any_of(value, schema):
    branches = [quick_validator(branch) for branch in value]
    return lambda instance: any(valid(instance) for valid in branches)


def _quick_pattern(value, schema):
    search = re.compile(value).search
    return lambda instance: not isinstance(instance, str) or search(instance) is not None


_QUICK_KEYWORDS = {
    "type": _quick_type,
    "properties": _quick_properties,
    "additionalProperties": _quick_additional_properties,
    "required": _quick_required,
    "items": _quick_items,
    "enum": _quick_enum,
    "anyOf": _quick_any_of,
    "pattern": _quick_pattern,
    "minLength": lambda n, schema: lambda instance: not isinstance(instance, str) or len(instance) >= n,
    "minItems": lambda n, schema: lambda instance: not isinstance(instance, list) or len(instance) >= n,
    "minProperties": lambda n, schema: lambda instance: not isinstance(instance, dict) or len(instance) >= n,
    "maxProperties": lambda n, schema: lambda instance: not isinstance(instance, dict) or len(instance) <= n,
    "minimum": lambda n, schema: lambda instance: (
        not isinstance(instance, (int, float)) or isinstance(instance, bool) or instance >= n
    ),
    "maximum": lambda n, schema: lambda instance: (
        not isinstance(instance, (int, float)) or isinstance(instance, bool) or instance <= n
    ),
}

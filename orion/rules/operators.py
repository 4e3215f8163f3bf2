"""Operators of the rule language: type-checked once at load time, compiled into small
predicates `predicate(value, now_ms) -> bool` that run at evaluation time.

String comparisons ignore case (as marketers expect: "Contact Us" is "contact us");
`matches` uses the regular expression as written, compiled once by RE2, which runs in time
linear in the text (orion/rules/regex.py; add `(?i)` to ignore case).
A missing value is empty: `is_empty` holds, the negative operators (is_not, not_contains,
not_in) hold, every other operator fails. A value of the wrong type behaves the same way.

    python -c "from orion.rules.operators import compile_condition as c; print(c('gt', 3, 'number')(5, 0))"
"""
from __future__ import annotations

from typing import Any, Callable

from orion.activities import MS_PER_UNIT, parse_timestamp
from orion.rules.regex import CASEFOLD_SAFE_UNDER_IGNORECASE, RegexError, compile_search, required_literal
from orion.rules.schema import OPERATORS_BY_TYPE
from orion.rules.source import short_repr

__all__ = [
    "CASEFOLD_SAFE_UNDER_IGNORECASE", "NEGATIVE_OPERATORS", "OperandError", "Predicate", "compile_condition",
    "compile_conditions", "required_literal",
]

Predicate = Callable[[Any, int], bool]

NEGATIVE_OPERATORS = frozenset({"is_not", "not_contains", "not_in"})


class OperandError(ValueError):
    """An operator that does not suit the attribute, or an operand that does not suit the
    operator; the message says how to fix it."""


_NUMBER = (int, float)


def _is_number(v: Any) -> bool:
    return isinstance(v, _NUMBER) and v.__class__ is not bool  # bool has no subclasses


def _as_ms(v: Any) -> int | None:
    """A date attribute's value as epoch ms: activities carry ms already; lead attributes
    set from data_value_changes may carry RFC 3339 text."""
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, str):
        try:
            return parse_timestamp(v)
        except ValueError:
            return None
    return None


def _is_empty(v: Any) -> bool:
    return v is None or v == "" or v == [] or v == {}


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if value is None:
        return "nothing"
    if isinstance(value, str):
        return f"the text {short_repr(value)}"
    if _is_number(value):
        return f"the number {value}"
    return f"a {'list' if isinstance(value, list) else 'mapping'}"


def _scalar(operand: Any, attr_type: str, op: str) -> Any:
    """Check a scalar operand against the attribute type; return it normalized."""
    if attr_type == "string":
        if not isinstance(operand, str):
            hint = " (quote it in YAML)" if isinstance(operand, (bool, int, float)) else ""
            raise OperandError(f"{op} needs text for a string attribute, got {_describe(operand)}{hint}")
        return operand.casefold()
    if attr_type == "number":
        if not _is_number(operand):
            raise OperandError(f"{op} needs a number for a number attribute, got {_describe(operand)}")
        return operand
    if attr_type == "boolean":
        if not isinstance(operand, bool):
            raise OperandError(f"{op} needs true or false for a boolean attribute, got {_describe(operand)}")
        return operand
    if attr_type == "date":
        try:
            return parse_timestamp(operand)
        except ValueError as err:
            raise OperandError(f"{op} needs a date: {err}") from None
    # "any": a value inside a form's fields or an app event's properties.
    if isinstance(operand, str):
        return operand.casefold()
    if isinstance(operand, bool) or _is_number(operand):
        return operand
    raise OperandError(f"{op} needs text, a number or true/false, got {_describe(operand)}")


def _same(value: Any, expected: Any) -> bool:
    """Equality that ignores case for text and never confuses true with 1."""
    if isinstance(expected, str):
        return isinstance(value, str) and value.casefold() == expected
    if isinstance(expected, bool):
        return isinstance(value, bool) and value is expected
    return _is_number(value) and value == expected


def _duration_ms(operand: Any, op: str) -> int:
    if (
        not isinstance(operand, dict)
        or set(operand) != {"n", "unit"}
        or not isinstance(operand["n"], int)
        or isinstance(operand["n"], bool)
        or operand["n"] < 1
        or operand["unit"] not in MS_PER_UNIT
    ):
        raise OperandError(
            f"{op} needs {{n: <whole number >= 1>, unit: <{'|'.join(MS_PER_UNIT)}>}}, "
            f"got {short_repr(operand)}"
        )
    return operand["n"] * MS_PER_UNIT[operand["unit"]]


def compile_condition(op: str, operand: Any, attr_type: str) -> Predicate:
    """Type-check `op: operand` for an attribute of `attr_type`; return its predicate.

    Raises OperandError with a message for the rule author.
    """
    allowed = OPERATORS_BY_TYPE[attr_type]
    if op not in allowed:
        raise OperandError(
            f"operator {short_repr(op)} does not apply to a {attr_type} attribute; "
            f"use one of {', '.join(allowed)}"
        )
    if op in ("is_empty", "is_not_empty"):
        if operand is not True:
            other = "is_not_empty" if op == "is_empty" else "is_empty"
            raise OperandError(f"write `{op}: true` (for the opposite, use `{other}: true`)")
        if op == "is_empty":
            return lambda v, now: _is_empty(v)
        return lambda v, now: not _is_empty(v)

    if attr_type == "date":
        return _compile_date(op, operand)

    if op in ("is", "is_not"):
        # _same, written out for each kind of operand: these run for every activity.
        expected = _scalar(operand, attr_type, op)
        if isinstance(expected, str):
            if op == "is":
                return lambda v, now: isinstance(v, str) and v.casefold() == expected
            return lambda v, now: not (isinstance(v, str) and v.casefold() == expected)
        if isinstance(expected, bool):
            if op == "is":
                return lambda v, now: v is expected
            return lambda v, now: v is not expected
        if op == "is":
            return lambda v, now: isinstance(v, _NUMBER) and v.__class__ is not bool and v == expected
        return lambda v, now: not (isinstance(v, _NUMBER) and v.__class__ is not bool and v == expected)

    if op in ("in", "not_in"):
        if not isinstance(operand, list) or not operand:
            raise OperandError(f"{op} needs a non-empty list, like [a, b]")
        options = [_scalar(item, attr_type, op) for item in operand]
        texts = frozenset(o for o in options if isinstance(o, str))
        others = [o for o in options if not isinstance(o, str)]

        if not others:
            if op == "in":
                return lambda v, now: isinstance(v, str) and v.casefold() in texts
            return lambda v, now: not (isinstance(v, str) and v.casefold() in texts)

        def member(v: Any) -> bool:
            if isinstance(v, str):
                return v.casefold() in texts
            return any(_same(v, o) for o in others)

        if op == "in":
            return lambda v, now: member(v)
        return lambda v, now: not member(v)

    if op in ("contains", "not_contains", "starts_with", "ends_with"):
        if not isinstance(operand, str) or not operand:
            raise OperandError(f"{op} needs non-empty text, got {_describe(operand)}")
        text = operand.casefold()
        if op == "contains":
            return lambda v, now: isinstance(v, str) and text in v.casefold()
        if op == "not_contains":
            return lambda v, now: not (isinstance(v, str) and text in v.casefold())
        if op == "starts_with":
            return lambda v, now: isinstance(v, str) and v.casefold().startswith(text)
        return lambda v, now: isinstance(v, str) and v.casefold().endswith(text)

    if op == "matches":
        if not isinstance(operand, str):
            raise OperandError(f"matches needs a regular expression as text, got {_describe(operand)}")
        try:
            search = compile_search(operand)
        except RegexError as err:
            raise OperandError(f"bad regular expression {short_repr(operand)}: {err}") from None
        return lambda v, now: isinstance(v, str) and search(v)

    if op in ("gt", "ge", "lt", "le"):
        if not _is_number(operand):
            raise OperandError(f"{op} needs a number, got {_describe(operand)}")
        limit = operand
        if op == "gt":
            return lambda v, now: isinstance(v, _NUMBER) and v.__class__ is not bool and v > limit
        if op == "ge":
            return lambda v, now: isinstance(v, _NUMBER) and v.__class__ is not bool and v >= limit
        if op == "lt":
            return lambda v, now: isinstance(v, _NUMBER) and v.__class__ is not bool and v < limit
        return lambda v, now: isinstance(v, _NUMBER) and v.__class__ is not bool and v <= limit

    if op == "between":
        low, high = _range(operand, lambda x: _scalar(x, "number", op))
        return lambda v, now: isinstance(v, _NUMBER) and v.__class__ is not bool and low <= v <= high

    raise OperandError(f"operator {short_repr(op)} is not supported for {attr_type}")  # pragma: no cover


def _range(operand: Any, convert: Callable[[Any], Any]) -> tuple[Any, Any]:
    if not isinstance(operand, list) or len(operand) != 2:
        raise OperandError(f"between needs [low, high], got {short_repr(operand)}")
    low, high = convert(operand[0]), convert(operand[1])
    if low > high:
        raise OperandError(f"between needs low <= high, got {short_repr(operand)}; swap them")
    return low, high


def _compile_date(op: str, operand: Any) -> Predicate:
    if op == "in_past":
        span = _duration_ms(operand, op)
        return lambda v, now: (ms := _as_ms(v)) is not None and now - span <= ms <= now
    if op == "between":
        low, high = _range(operand, lambda x: _scalar(x, "date", op))
        return lambda v, now: (ms := _as_ms(v)) is not None and low <= ms <= high
    moment = _scalar(operand, "date", op)
    if op == "before":
        return lambda v, now: (ms := _as_ms(v)) is not None and ms < moment
    return lambda v, now: (ms := _as_ms(v)) is not None and ms > moment  # after


def compile_conditions(conditions: dict, attr_type: str) -> Predicate:
    """All `op: operand` pairs on one attribute, AND'ed, as one predicate."""
    predicates = [compile_condition(op, operand, attr_type) for op, operand in conditions.items()]
    if len(predicates) == 1:
        return predicates[0]
    return lambda v, now: all(p(v, now) for p in predicates)

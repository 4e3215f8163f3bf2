"""Reading rule files: YAML with line numbers, schema validation, and errors that name
file:line and say how to fix the problem.

YAML is read with a safe loader that remembers the line of every key and list item, keeps
dates as text (the rule language parses them itself) and reads only true/false as booleans,
so `country: {is: NO}` means Norway, not false.

Rule files come from tenants, so reading one has budgets: a file holds at most
MAX_RULE_FILE_BYTES, nests at most MAX_YAML_DEPTH levels, and may not use YAML aliases
(`*name`), which would let a few hundred bytes stand for gigabytes. A file past a budget
is refused with file:line and how to fix it; nothing is expanded to say so. Every value
an error message shows goes through `short_repr`, which never builds more than it shows.

    python -m orion.cli rules validate orion/samples/rules
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Iterable, NamedTuple

import jsonschema
import yaml

from orion.rules.schema import RULE_FILE_SCHEMA, quick_validator


# Budgets of a rule file (docs/rules.md, "Limits").
MAX_RULE_FILE_BYTES = 1_000_000
MAX_YAML_DEPTH = 64
# The longest value (as text) an error message shows.
SHOWN_CHARS = 80


def short_repr(value: Any, limit: int = SHOWN_CHARS) -> str:
    """`repr(value)` cut to about `limit` characters, built without ever producing more:
    a string is cut before it is quoted, a list or mapping shows its first few items, and
    nesting stops a few levels down. Safe on any structure a rule file can hold."""
    text = _bounded_repr(value, limit + 1, 3)
    return text if len(text) <= limit else text[: max(limit - 3, 1)] + "..."


def _bounded_repr(value: Any, budget: int, levels: int) -> str:
    if isinstance(value, str):
        return repr(value[:budget]) if len(value) <= budget else repr(value[:budget]) + "..."
    if isinstance(value, bytes):
        return repr(value[:budget]) + ("..." if len(value) > budget else "")
    if isinstance(value, (bool, float)) or value is None:
        return repr(value)
    if isinstance(value, int):
        return repr(value) if value.bit_length() <= 256 else "<a number of %d bits>" % value.bit_length()
    if isinstance(value, dict):
        opening, closing = "{", "}"
        items = value.items()
    elif isinstance(value, (list, tuple, set, frozenset)):
        opening, closing = ("(", ")") if isinstance(value, tuple) else ("[", "]")
        items = value
    else:
        return "<" + type(value).__name__ + ">"
    if levels <= 0:
        return opening + "..." + closing if len(value) else opening + closing
    parts: list[str] = []
    used = 2
    for item in items:
        if used >= budget:
            parts.append("...")
            break
        if isinstance(value, dict):
            key, item_value = item
            piece = (_bounded_repr(key, budget - used, levels - 1) + ": "
                     + _bounded_repr(item_value, budget - used, levels - 1))
        else:
            piece = _bounded_repr(item, budget - used, levels - 1)
        parts.append(piece)
        used += len(piece) + 2
    return opening + ", ".join(parts) + closing


def short_text(value: Any, limit: int = SHOWN_CHARS) -> str:
    """`str(value)` for a message, cut to about `limit` characters (a key or a name)."""
    if not isinstance(value, str):
        return short_repr(value, limit)
    return value if len(value) <= limit else value[: limit - 3] + "..."


class RuleError(NamedTuple):
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class RuleErrors(ValueError):
    """Raised when rules do not load; carries every error found, not only the first."""

    def __init__(self, errors: Iterable[RuleError]):
        self.errors = sorted(errors, key=lambda e: (e.file, e.line, e.message))
        super().__init__("\n".join(str(e) for e in self.errors))


class LineDict(dict):
    """A YAML mapping that remembers its own line and the line of each key."""

    line: int = 0
    key_lines: dict


class LineList(list):
    """A YAML sequence that remembers its own line and the line of each item."""

    line: int = 0
    item_lines: list


# libyaml's parser when PyYAML was built with it: the pure-Python scanner spends seconds on
# a rules directory of a thousand campaigns.
_SafeBase = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class SafeLineLoader(_SafeBase):
    """A safe YAML loader that records lines, reports duplicate keys, and leaves dates as
    text."""

    def __init__(self, stream):
        super().__init__(stream)
        self.duplicate_keys: list[tuple[int, Any]] = []
        self.bad_keys: list[tuple[int, Any]] = []  # keys that are not text
        self.constructing_line = 1  # the line of the node being made: where a value that does not read is

    def construct_object(self, node, deep=False):
        self.constructing_line = node.start_mark.line + 1
        return super().construct_object(node, deep)

    def construct_yaml_int(self, node):
        value = super().construct_yaml_int(node)
        if abs(value).bit_length() > _MAX_INT_BITS:  # (0x... and 0b... pass Python's digit limit)
            raise _UnusableNumber("the number has more digits than a rule can use")
        return value

    def construct_yaml_float(self, node):
        value = super().construct_yaml_float(node)
        if value != value or value in (_INF, -_INF):
            raise _UnusableNumber(f"{short_text(self.construct_scalar(node), 40)!r} is not a number a rule can use "
                                  "(.nan and .inf are not); write a finite number")
        return value


class _UnusableNumber(ValueError):
    """A number that reads but that no rule can use; its message says why."""


_MAX_INT_BITS = 14_000  # about 4,200 decimal digits, under Python's limit for reading and printing one
_INF = float("inf")


# Only YAML 1.2 booleans, and no implicit timestamps: copy the resolvers, then prune them.
SafeLineLoader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag not in ("tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:bool")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
SafeLineLoader.add_constructor("tag:yaml.org,2002:int", SafeLineLoader.construct_yaml_int)
SafeLineLoader.add_constructor("tag:yaml.org,2002:float", SafeLineLoader.construct_yaml_float)
SafeLineLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


class YamlBudgetError(ValueError):
    """A rule file past a budget of the YAML reader; `line` is where, 1-based."""

    def __init__(self, line: int, message: str, alias: bool = False):
        super().__init__(message)
        self.line = line
        self.message = message
        self.alias = alias


def _first_alias_line(text: str, default: int) -> int:
    """The line of the first alias in `text`. A composed document no longer knows where
    an alias was written (the alias is the anchored node itself), the parser's events do."""
    try:
        for event in yaml.parse(text, Loader=_SafeBase):
            if isinstance(event, yaml.AliasEvent):
                return event.start_mark.line + 1
    except yaml.YAMLError:
        pass
    return default


def check_node_budget(root: yaml.Node) -> None:
    """Refuse a composed YAML document that uses an alias or nests deeper than
    MAX_YAML_DEPTH. Walks each node once, without recursion, and never follows an alias,
    so an alias bomb costs no more than its own few nodes."""
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, int, int]] = [(root, 1, root.start_mark.line + 1)]
    while stack:
        node, depth, line = stack.pop()
        if id(node) in seen:
            raise YamlBudgetError(line, "YAML aliases (*name) are not allowed in rule files (a few of them "
                                  "can stand for gigabytes); write the value out in full instead of "
                                  "referring to an anchor (&name)", alias=True)
        seen.add(id(node))
        if depth > MAX_YAML_DEPTH:
            raise YamlBudgetError(node.start_mark.line + 1,
                                  f"the YAML nests deeper than {MAX_YAML_DEPTH} levels; "
                                  "flatten the structure (no rule needs that depth)")
        # Children go on the stack last first, so nodes are met in document order: an
        # anchor always before its aliases, and the alias is what gets reported.
        if isinstance(node, yaml.MappingNode):
            for key, value in reversed(node.value):
                key_line = key.start_mark.line + 1
                stack.append((value, depth + 1, key_line))
                stack.append((key, depth + 1, key_line))
        elif isinstance(node, yaml.SequenceNode):
            for item in reversed(node.value):
                stack.append((item, depth + 1, item.start_mark.line + 1))


def _construct_mapping(loader: SafeLineLoader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    mapping = LineDict()
    mapping.line = node.start_mark.line + 1
    mapping.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            # Every key of the rule language is text: a number, a date, a list or an empty
            # key is a mistake, reported; the key goes on as text so the rest is checked.
            loader.bad_keys.append((key_node.start_mark.line + 1, key))
            key = "" if key is None else key if isinstance(key, (int, float)) else short_repr(key)
            key = str(key)
        if key in mapping:
            loader.duplicate_keys.append((key_node.start_mark.line + 1, key))
        mapping[key] = loader.construct_object(value_node, deep=True)
        mapping.key_lines[key] = key_node.start_mark.line + 1
    return mapping


def _construct_sequence(loader: SafeLineLoader, node: yaml.SequenceNode) -> LineList:
    sequence = LineList(loader.construct_object(child, deep=True) for child in node.value)
    sequence.line = node.start_mark.line + 1
    sequence.item_lines = [child.start_mark.line + 1 for child in node.value]
    return sequence


SafeLineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
SafeLineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def line_of(doc: Any, path: Iterable[Any]) -> int:
    """The line of the deepest node along `path` (keys and indexes) that exists."""
    line = getattr(doc, "line", 1)
    node = doc
    for step in path:
        if isinstance(node, LineDict) and step in node:
            line = node.key_lines.get(step, line)
            node = node[step]
        elif isinstance(node, LineList) and isinstance(step, int) and step < len(node):
            line = node.item_lines[step]
            node = node[step]
        else:
            break
    return line


def suggest(word: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' when a close match exists, else ''."""
    word = str(word) if isinstance(word, (str, int, float)) else ""
    if not word or len(word) > 100:  # nothing close to it, and difflib is quadratic
        return ""
    close = difflib.get_close_matches(word, [c for c in choices if isinstance(c, str)], n=1, cutoff=0.6)
    return f" (did you mean {short_repr(close[0])}?)" if close else ""


def _where(path: list) -> str:
    return ".".join(short_text(p, 40) if not isinstance(p, int) else f"[{p}]" for p in path).replace(
        ".[", "["
    ) or "the file"


def _schema_message(error: jsonschema.ValidationError) -> tuple[list, str]:
    """A jsonschema error -> (path of the offending node, message for a rule author)."""
    path = list(error.absolute_path)
    where = _where(path)
    validator = error.validator
    if validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = list(error.schema.get("properties", {}))
        extra = [key for key in error.instance if key not in allowed]
        key = extra[0] if extra else "?"
        parent = path[-1] if path else None
        what = "operator" if parent is not None and allowed and "is_not_empty" in allowed else "key"
        return path + [key], (
            f"unknown {what} {short_repr(key)} in {where}{suggest(key, allowed)}; "
            f"expected one of {', '.join(allowed)}"
        )
    if validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return path, f"{where} needs {short_repr(missing)}"
    if validator == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return path, f"{where} must be {_article(expected)}, got {_json_name(error.instance)}"
    if validator == "enum":
        options = ", ".join(str(v) for v in error.validator_value)
        return path, (
            f"{where} is {short_repr(error.instance)}{suggest(error.instance, map(str, error.validator_value))}; "
            f"expected one of {options}"
        )
    if validator in ("minProperties", "maxProperties") and isinstance(error.instance, dict):
        allowed = list(error.schema.get("properties", {}))
        if validator == "minProperties":
            return path, f"{where} is empty; give one of {', '.join(allowed)}"
        return path, f"{where} takes exactly one of {', '.join(allowed)}, got {', '.join(map(str, error.instance))}"
    if validator == "minItems":
        return path, f"{where} needs at least {error.validator_value} item(s)"
    if validator == "minimum":
        return path, f"{where} must be at least {error.validator_value}, got {short_repr(error.instance)}"
    if validator == "minLength":
        return path, f"{where} must not be empty"
    if validator == "pattern":
        return path, f"{where} {short_repr(error.instance)} may hold only letters, digits, '_', '.', '-'"
    if validator in ("anyOf", "oneOf") and error.context:
        # Explain the branch written for this kind of value: for a mapping where a name
        # or a mapping is allowed, what is wrong inside the mapping, not "not one of the names".
        same_kind = [e for e in error.context if _branch_takes(e, error.instance)]
        best = jsonschema.exceptions.best_match(same_kind or error.context)
        inner_path, message = _schema_message(best)
        return inner_path, message
    if validator == "maximum":
        return path, f"{where} must be at most {error.validator_value}, got {short_repr(error.instance)}"
    return path, f"{where}: {short_text(error.message, 200)}"


def _branch_takes(error: jsonschema.ValidationError, instance: Any) -> bool:
    """Whether the anyOf branch that raised `error` is written for `instance`'s JSON type."""
    branch = error.relative_schema_path[0] if error.relative_schema_path else None
    parent = error.parent.schema.get(error.parent.validator) if error.parent is not None else None
    if not isinstance(parent, list) or not isinstance(branch, int) or branch >= len(parent):
        return True
    schema = parent[branch]
    wanted = schema.get("type") if isinstance(schema, dict) else None
    if wanted is None and isinstance(schema, dict) and "enum" in schema:
        return any(type(v) is type(instance) for v in schema["enum"])
    if wanted is None:
        return True
    kinds = {"object": dict, "array": list, "string": str, "integer": int, "number": (int, float),
             "boolean": bool, "null": type(None)}
    wanted = wanted if isinstance(wanted, list) else [wanted]
    return any(isinstance(instance, kinds.get(w, object)) for w in wanted)


def _article(type_name: str) -> str:
    return ("an " if type_name[:1] in "aeiou" else "a ") + type_name


def _json_name(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"number {value}"
    if isinstance(value, str):
        return f"text {short_repr(value)}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a YAML {type(value).__name__} value"


# JSON Schema takes 1.0 as an integer and NaN as a number; a rule may not (a wait of 1.0
# minutes made times that are not whole milliseconds, which no store takes).
_STRICT_TYPES = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
    "integer", lambda checker, value: isinstance(value, int) and not isinstance(value, bool))
_VALIDATOR = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=_STRICT_TYPES)(
    RULE_FILE_SCHEMA)
# Says yes to a valid file in a fraction of jsonschema's time; anything else goes to
# jsonschema, which finds and words every error.
_QUICKLY_VALID = quick_validator(RULE_FILE_SCHEMA)


class RuleFile(NamedTuple):
    path: str
    doc: Any  # a LineDict
    broken: frozenset  # paths (tuples) of the nodes that failed the schema
    # every prefix of those paths (one look-up a question, however many errors the file has)
    broken_prefixes: frozenset = frozenset()

    def is_broken(self, *prefix) -> bool:
        """Whether anything at or below `prefix` failed the schema (so skip it)."""
        return prefix in self.broken_prefixes


def read_rule_file(path: Path, display: str) -> tuple[RuleFile | None, list[RuleError]]:
    """Parse and schema-check one file. Returns the document (None if unreadable) and
    its errors; a document with errors is still returned so later checks can skip just
    the broken parts."""
    try:
        with path.open("rb") as opened:
            data = opened.read(MAX_RULE_FILE_BYTES + 1)
        if len(data) > MAX_RULE_FILE_BYTES:
            return None, [RuleError(display, 1, f"the file is larger than {MAX_RULE_FILE_BYTES:,} bytes, the most "
                                    "a rule file may hold; split the tenant's campaigns over several files")]
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        return None, [RuleError(display, 1, f"cannot read the file: {short_text(str(err), 200)}")]
    loader = SafeLineLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            doc = None
        else:
            check_node_budget(node)
            doc = loader.construct_document(node)
    except YamlBudgetError as err:
        line = _first_alias_line(text, err.line) if err.alias else err.line
        return None, [RuleError(display, line, err.message)]
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else 1
        problem = short_text(str(err.problem or err), 200)
        return None, [RuleError(display, line, f"YAML syntax error: {problem}; check indentation and quoting")]
    except yaml.YAMLError as err:
        return None, [RuleError(display, 1, f"YAML error: {short_text(str(err), 200)}")]
    except RecursionError:
        return None, [RuleError(display, 1, f"the YAML nests too deep; keep it under {MAX_YAML_DEPTH} levels")]
    except _UnusableNumber as err:
        return None, [RuleError(display, loader.constructing_line, str(err))]
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as err:
        # a value whose tag or form does not read (!!int abc, !!map [1], 5,000 digits)
        if "Exceeds the limit" in str(err):
            return None, [RuleError(display, loader.constructing_line, "the number has more digits than a rule can use")]
        return None, [RuleError(display, loader.constructing_line,
                                f"a value does not read: {short_text(str(err), 200)}; check its tag (!!int, !!float, "
                                "!!map ...) or write it plainly")]
    finally:
        loader.dispose()
    errors = [
        RuleError(display, line, f"duplicate key {short_repr(key)}; each key may appear once in a mapping")
        for line, key in loader.duplicate_keys
    ]
    errors += [
        RuleError(display, line, f"the key {short_repr(key)} is not text; every key of a rule file is a name "
                  "(quote it if it is one)")
        for line, key in loader.bad_keys
    ]
    if not isinstance(doc, LineDict):
        errors.append(
            RuleError(display, 1, "a rule file is a mapping with tenant:, settings:, campaigns: and experiences:")
        )
        return None, errors
    broken = set()
    for error in () if _QUICKLY_VALID(doc) else _VALIDATOR.iter_errors(doc):
        path_, message = _schema_message(error)
        broken.add(tuple(error.absolute_path))
        errors.append(RuleError(display, line_of(doc, path_), message))
    return RuleFile(display, doc, frozenset(broken),
                    frozenset(path[:n] for path in broken for n in range(len(path) + 1))), errors


def rule_files(directory: Path) -> list[Path]:
    """Every .yaml/.yml file under `directory`, in a stable order."""
    return sorted(
        p for p in directory.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()
    )

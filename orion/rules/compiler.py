"""Loading a rules directory: every file is read within its budgets and schema-checked
(source.py), then each tenant's settings and campaigns are checked for meaning (unknown
activity types, attributes, lists and campaigns; operators that do not suit an attribute;
regular expressions RE2 does not take; bad logic; duplicate names; request_campaign
cycles; template names that are not allowed, templates the tenant does not have or that
do not compile, and includes of templates it cannot use) and compiled once into a
`RuleSet`. Every value an error message shows is cut short (`short_repr`).

Experiences (what `POST /v1/decide` answers, orion/decisions) are checked in the same
pass, with the same filter language, and compiled into `TenantExperiences`
(`load_experiences`): a tenant with a broken experience has broken rules, as with a
broken campaign.

All errors are collected, each with file:line and how to fix it; `load_rules` raises
`RuleErrors` holding every one of them, `check_rules` returns them.

    python -m orion.cli rules validate orion/samples/rules
"""
from __future__ import annotations

import gc
import json
import re
from pathlib import Path
from typing import Any, Iterable

import jinja2
import jinja2.meta

from orion.activities import (
    BUILTIN_LEAD_ATTRIBUTES,
    BUILTIN_TYPES,
    MAX_ID_BYTES,
    MS_PER_DAY,
    MS_PER_UNIT,
    ActivityType,
    ActivityTypes,
    AttributeSpec,
    parse_timestamp,
)
from orion.rules.index import TenantRules, RuleSet
from orion.rules.logic import LogicError, parse_logic
from orion.rules.model import (
    CONTAINS,
    CONTROL,
    EXACT,
    EXPERIENCE_IMPRESSION,
    PREFIX,
    Campaign,
    Experience,
    ExperienceGoal,
    Filter,
    HistoryCounter,
    LeadState,
    TenantExperiences,
    Trigger,
    Variant,
    attribute_getter,
)
from orion.rules.operators import OperandError, compile_conditions, required_literal
from orion.rules.regex import program_budget
from orion.rules.schema import STEP_KINDS, TIME_OF_DAY_OPERATORS
from orion.rules.source import (
    MAX_RULE_FILE_BYTES,
    RuleError,
    RuleErrors,
    RuleFile,
    line_of,
    read_rule_file,
    rule_files,
    short_repr,
    short_text,
    suggest,
)
from orion.rules.template_lookup import (
    BUILTIN_TEMPLATE_DIR,
    TEMPLATE_SUFFIX,
    TemplateFileTooLarge,
    TemplateSearch,
    TenantTemplateLoader,
    read_template,
    template_filename,
    template_name_problem,
)
from orion.templates.sandbox import TemplateLimitError, TemplateSandbox, unknown_name

__all__ = ["BUILTIN_TEMPLATE_DIR", "DEFAULT_PRIORITY", "IMPRESSION_TYPE", "TEMPLATE_SUFFIX", "check_rules",
           "load_experiences", "load_rules", "template_search_path"]

MAX_CAMPAIGN_NAME_BYTES = MAX_ID_BYTES  # the outbox's and roll-ups' campaign columns hold what an id column does
DEFAULT_PRIORITY = 100
# The activity type of experience impressions, which every tenant with experiences has.
IMPRESSION_TYPE = ActivityType(
    EXPERIENCE_IMPRESSION,
    {"experience": AttributeSpec("string", True), "variant": AttributeSpec("string", True),
     "placement": AttributeSpec("string", True), "control": AttributeSpec("boolean"),
     "url": AttributeSpec("string")},
    "experience",
)
# The longest content snippet (Jinja2 source) an experience variant may hold.
MAX_SNIPPET_CHARS = 20_000
# Templates one template may pull in through include, import and extends, all levels.
MAX_REFERENCED_TEMPLATES = 100
# Template source one tenant's rules may have compiled at load, in all (each template once,
# with what it includes, imports and extends): Jinja compiles about 100 KB a second, so
# this bounds the time one tenant adds to every job's load to about half a minute.
MAX_TENANT_TEMPLATE_BYTES = 3_000_000


def load_rules(directory: str | Path, template_dirs: Iterable[str | Path] = ()) -> RuleSet:
    """Load, check and compile every rule file under `directory`.

    Raises RuleErrors with every error found.
    """
    rules, errors = _compile_directory(Path(directory), [Path(d) for d in template_dirs])
    if errors:
        raise RuleErrors(errors)
    return rules


def load_serving_rules(directory: str | Path, template_dirs: Iterable[str | Path] = (), *,
                       experiences: dict | None = None) -> tuple[RuleSet, dict[str, list[RuleError]]]:
    """The rules a job serves: every tenant whose rules load, and, by tenant, the errors
    of those that do not. One tenant's broken rules must not stop every tenant's job:
    its campaigns do not run (its activities are still parsed, stored and kept in its
    leads' profiles, with the activity types its settings declare) until its rules are
    fixed. RuleErrors
    still, with every error, when an error belongs to no tenant (a file that names none,
    a missing directory): nobody can tell whose campaigns would be missing.
    `experiences`, if given, is filled with each tenant's TenantExperiences."""
    directory = Path(directory)
    file_tenants: dict[str, str] = {}
    rules, errors = _compile_directory(directory, [Path(d) for d in template_dirs], file_tenants, experiences)
    if not errors:
        return rules, {}
    refused: dict[str, list[RuleError]] = {}
    for error in errors:
        tenant = file_tenants.get(error.file) or _tenant_of_template(directory, error.file, rules)
        if tenant is None:
            raise RuleErrors(errors)
        refused.setdefault(tenant, []).append(error)
    kept = {tenant: found for tenant, found in rules.tenants.items() if tenant not in refused}
    # A refused tenant keeps the activity types and lead attributes its settings declare
    # (each one compiled only if it checked out), so its activities of its own types are
    # still parsed, stored and kept; only a file that does not read at all leaves it the
    # built-in types.
    lead_attributes = rules.activity_types.lead_attributes()
    typed = set(kept) | set(refused)
    types = ActivityTypes({tenant: rules.activity_types._custom.get(tenant, {}) for tenant in typed},
                          {tenant: lead_attributes.get(tenant, {}) for tenant in typed})
    if experiences is not None:
        for tenant in refused:
            experiences.pop(tenant, None)
    return RuleSet(kept, types), {tenant: RuleErrors(found).errors for tenant, found in sorted(refused.items())}


def load_experiences(directory: str | Path, template_dirs: Iterable[str | Path] = ()
                     ) -> tuple[RuleSet, dict[str, TenantExperiences], dict[str, list[RuleError]]]:
    """What the decision service serves: the rules of every tenant whose rules load (as
    `load_serving_rules`), each such tenant's experiences, and the errors of the tenants
    whose rules do not."""
    found: dict[str, TenantExperiences] = {}
    rules, refused = load_serving_rules(directory, template_dirs, experiences=found)
    return rules, {tenant: found[tenant] for tenant in rules.tenants if tenant in found}, refused


def _tenant_of_template(directory: Path, file: str, rules: RuleSet) -> str | None:
    """The tenant of an error in a template file of a tenant's own folder
    (RULES/templates/TENANT/...), else None."""
    try:
        parts = Path(file).resolve().relative_to((directory / "templates").resolve()).parts
    except (ValueError, OSError):
        return None
    return parts[0] if len(parts) > 1 and parts[0] in rules.tenants else None


def check_rules(directory: str | Path, template_dirs: Iterable[str | Path] = ()) -> list[RuleError]:
    """Every error in the rules under `directory`, sorted by file and line."""
    _, errors = _compile_directory(Path(directory), [Path(d) for d in template_dirs])
    return RuleErrors(errors).errors


def template_search_path(rules_dir: Path, tenant: str, extra: list[Path]) -> list[Path]:
    """Where a tenant's send_email templates are looked up, first match wins: the
    tenant's own folder, the shared folder of the rules directory, any extra folders,
    then the templates shipped with Orion (see orion/rules/template_lookup.py for what
    keeps a tenant out of the others' folders)."""
    return TemplateSearch(rules_dir, tenant, extra).folders


# --- per-tenant compilation ---------------------------------------------------------


class _Settings:
    def __init__(self) -> None:
        self.lists: set[str] = set()
        self.lead_attributes: dict[str, str] = dict(BUILTIN_LEAD_ATTRIBUTES)
        self.activity_types: dict[str, ActivityType] = {}
        self.limits: dict[str, int] = {}
        self.budgets: dict[str, int] = {}  # settings.limits
        self.seen: dict[tuple, str] = {}  # what was declared where, for clash messages


EMAIL_BLOCKS = ("subject", "html", "text")


def _email_blocks_problem(name: str, filename: str, trees: dict) -> str | None:
    """An email template renders its subject, html and text blocks, its own or those of
    the layouts it extends: one that has none of them (no block at all, or misspelt)
    would send empty emails."""
    from jinja2 import nodes

    found: set[str] = set()
    current, chain = filename, set()
    while current in trees and current not in chain:
        chain.add(current)
        tree = trees[current]
        found.update(block.name for block in tree.find_all(nodes.Block))
        extends = tree.find(nodes.Extends)
        if extends is None or not isinstance(extends.template, nodes.Const) or \
                not isinstance(extends.template.value, str):
            break
        current = template_filename(extends.template.value)
    if found & set(EMAIL_BLOCKS):
        return None
    if extends_by_variable(trees.get(current)):
        return None  # a layout chosen when it renders: its blocks are not known now
    defined = ", ".join(sorted(found)) or "none"
    return (f"template {short_repr(name)} defines none of the blocks an email renders ({', '.join(EMAIL_BLOCKS)}; "
            f"its blocks: {short_text(defined, 200)}); wrap its parts in {{% block subject %}}...{{% endblock %}}, "
            "{% block html %}... and {% block text %}...")


def extends_by_variable(tree) -> bool:
    from jinja2 import nodes

    if tree is None:
        return False
    extends = tree.find(nodes.Extends)
    return extends is not None and not isinstance(extends.template, nodes.Const)


# The longest duration a rule may give (waits, history windows, schedules, goals).
MAX_DURATION_YEARS = 100


class _TenantCompiler:
    def __init__(self, tenant: str, files: list[RuleFile], rules_dir: Path, template_dirs: list[Path]):
        self.tenant = tenant
        self.files = files
        self.rules_dir = rules_dir
        self.template_dirs = template_dirs
        self.errors: list[RuleError] = []
        self.settings = _Settings()
        self.counters: dict[str, HistoryCounter] = {}
        self.checked_templates: dict[str, str | None] = {}
        self.template_trees: dict[str, Any] = {}  # template files compiled at load, by path: each once
        self.template_bytes = 0  # their source, in all

    def error(self, file: RuleFile, path: Iterable[Any], message: str) -> None:
        self.errors.append(RuleError(file.path, line_of(file.doc, list(path)), message))

    def check_durations(self) -> None:
        """Every duration ({n, unit}: waits, windows, schedules, goals) at most
        MAX_DURATION_YEARS long: a longer one would put times past the year 9999, which no
        store, profile or schedule can hold."""
        limit = MAX_DURATION_YEARS * 365 * MS_PER_DAY

        def walk(file: RuleFile, node, path: tuple) -> None:
            if isinstance(node, dict):
                n, unit = node.get("n"), node.get("unit")
                if (len(node) == 2 and type(n) is int and unit in MS_PER_UNIT and n * MS_PER_UNIT[unit] > limit):
                    self.error(file, path + ("n",), f"{short_text(n, 40)} {unit} is longer than "
                               f"{MAX_DURATION_YEARS} years, the longest duration a rule may give")
                    return
                for key, value in node.items():
                    walk(file, value, path + (key,))
            elif isinstance(node, list):
                for i, value in enumerate(node):
                    walk(file, value, path + (i,))

        for file in self.files:
            walk(file, file.doc, ())

    # settings -------------------------------------------------------------------

    def read_settings(self) -> None:
        s = self.settings
        for file in self.files:
            settings = file.doc.get("settings")
            if not isinstance(settings, dict) or ("settings",) in file.broken:
                continue
            base = ("settings",)
            if not file.is_broken(*base, "lists") and isinstance(settings.get("lists"), list):
                s.lists.update(settings["lists"])
            limits = settings.get("communication_limits")
            if isinstance(limits, dict) and not file.is_broken(*base, "communication_limits"):
                if ("limits",) in s.seen:
                    self.error(file, base + ("communication_limits",),
                               f"communication_limits of tenant {short_repr(self.tenant)} are already set at "
                               f"{s.seen[('limits',)]}; keep one")
                else:
                    s.seen[("limits",)] = f"{file.path}:{line_of(file.doc, base + ('communication_limits',))}"
                    s.limits = dict(limits)
            budgets = settings.get("limits")
            if isinstance(budgets, dict) and not file.is_broken(*base, "limits"):
                for name, value in budgets.items():
                    if ("budget", name) in s.seen:
                        self.error(file, base + ("limits", name),
                                   f"limits.{name} of tenant {short_repr(self.tenant)} is already set at "
                                   f"{s.seen[('budget', name)]}; keep one")
                    else:
                        s.seen[("budget", name)] = f"{file.path}:{line_of(file.doc, base + ('limits', name))}"
                        s.budgets[name] = value
            declared = settings.get("lead_attributes")
            for name, type_ in declared.items() if isinstance(declared, dict) else ():
                path = base + ("lead_attributes", name)
                if file.is_broken(*path) or ("settings", "lead_attributes") in file.broken:
                    continue
                if name in BUILTIN_LEAD_ATTRIBUTES:
                    self.error(file, path, f"lead attribute {short_repr(name)} is built in; remove it from lead_attributes")
                elif ("lead", name) in s.seen:
                    self.error(file, path, f"lead attribute {short_repr(name)} is already declared at {s.seen[('lead', name)]}")
                else:
                    s.seen[("lead", name)] = f"{file.path}:{line_of(file.doc, path)}"
                    s.lead_attributes[name] = type_
            declared = settings.get("activity_types")
            for name, decl in declared.items() if isinstance(declared, dict) else ():
                if file.is_broken(*base, "activity_types", name) or (*base, "activity_types") in file.broken:
                    continue
                self.read_activity_type(file, base + ("activity_types", name), name, decl)
        if any(isinstance(file.doc.get("experiences"), list) and file.doc["experiences"] for file in self.files):
            s.activity_types[EXPERIENCE_IMPRESSION] = IMPRESSION_TYPE

    def read_activity_type(self, file: RuleFile, path: tuple, name: str, decl: dict) -> None:
        s = self.settings
        if name in BUILTIN_TYPES:
            self.error(file, path, f"{short_repr(name)} is a built-in activity type; give the custom type another name")
            return
        if name == EXPERIENCE_IMPRESSION:
            self.error(file, path, f"{short_repr(name)} is the activity type of experience impressions, which "
                       "a tenant with experiences has; give the custom type another name")
            return
        if ("type", name) in s.seen:
            self.error(file, path, f"activity type {short_repr(name)} is already declared at {s.seen[('type', name)]}")
            return
        attributes = {}
        for attr, spec in decl["attributes"].items():
            if isinstance(spec, str):
                attributes[attr] = AttributeSpec(spec)
            else:
                enum = tuple(spec["enum"]) if "enum" in spec else None
                if enum is not None and spec["type"] != "string":
                    self.error(file, path + ("attributes", attr, "enum"),
                               "enum applies to string attributes only; set type: string or drop enum")
                attributes[attr] = AttributeSpec(spec["type"], bool(spec.get("required", False)), enum)
        indexed_by = decl.get("indexed_by")
        if indexed_by is not None and (indexed_by not in attributes or attributes[indexed_by].type != "string"):
            self.error(file, path + ("indexed_by",),
                       f"indexed_by must name a string attribute of {short_repr(name)}; "
                       f"its string attributes: {', '.join(a for a, sp in attributes.items() if sp.type == 'string') or 'none'}")
            indexed_by = None
        s.seen[("type", name)] = f"{file.path}:{line_of(file.doc, path)}"
        s.activity_types[name] = ActivityType(name, attributes, indexed_by)

    def activity_type(self, name: str) -> ActivityType | None:
        return BUILTIN_TYPES.get(name) or self.settings.activity_types.get(name)

    # conditions -----------------------------------------------------------------

    def compile_where(self, file: RuleFile, path: tuple, type_: ActivityType, where: dict) -> tuple | None:
        """`where` of a trigger or history filter -> ((getter, predicate), ...), or None."""
        conditions = []
        ok = True
        for attr, ops in where.items():
            attr_path = path + (attr,)
            if file.is_broken(*attr_path):
                ok = False
                continue
            head, _, rest = str(attr).partition(".")
            spec = type_.attributes.get(head)
            if spec is None:
                self.error(file, attr_path,
                           f"{type_.name} has no attribute {short_repr(head)}{suggest(head, type_.attributes)}; "
                           f"its attributes: {', '.join(type_.attributes) or 'none'}")
                ok = False
                continue
            attr_type = spec.type
            if rest:
                if spec.type != "object":
                    self.error(file, attr_path, f"{type_.name}.{head} is {spec.type}, so it has no field {short_repr(rest)}")
                    ok = False
                    continue
                attr_type = "any"
            try:
                conditions.append((attribute_getter(str(attr)), compile_conditions(ops, attr_type)))
            except OperandError as err:
                self.error(file, attr_path, f"{type_.name}.{attr}: {err}")
                ok = False
                continue
            if spec.enum and rest == "":
                for op in ("is", "is_not", "in", "not_in"):
                    values = ops.get(op)
                    for value in values if isinstance(values, list) else [values] if values is not None else []:
                        if value not in spec.enum:
                            self.error(file, attr_path,
                                       f"{type_.name}.{head} is one of {', '.join(spec.enum)}, never {short_repr(value)}")
                            ok = False
            self.check_list_value(file, attr_path, type_, head, ops)
        return tuple(conditions) if ok else None

    def check_list_value(self, file: RuleFile, path: tuple, type_: ActivityType, attr: str, ops: dict) -> None:
        if attr != "list" or type_.name not in ("added_to_list", "removed_from_list"):
            return
        for op in ("is", "in"):
            values = ops.get(op)
            for value in values if isinstance(values, list) else [values] if values is not None else []:
                if isinstance(value, str):
                    self.check_list(file, path, value)

    def check_list(self, file: RuleFile, path: tuple, name: str) -> bool:
        if name in self.settings.lists:
            return True
        known = sorted(self.settings.lists)
        self.error(file, path,
                   f"unknown list {short_repr(name)}{suggest(name, known)}; declare it under settings.lists "
                   f"(tenant {short_repr(self.tenant)} has: {', '.join(known) or 'no lists'})")
        return False

    def compile_filters(self, file: RuleFile, path: tuple, filters: list) -> tuple[Filter, ...] | None:
        compiled = []
        ok = True
        for i, spec in enumerate(filters):
            if file.is_broken(*path, i):
                ok = False
                continue
            made = self.compile_filter(file, path + (i,), i + 1, spec)
            if made is None:
                ok = False
            else:
                compiled.append(made)
        return tuple(compiled) if ok else None

    def compile_filter(self, file: RuleFile, path: tuple, number: int, spec: dict) -> Filter | None:
        kind, body = next(iter(spec.items()))
        here = path + (kind,)
        if kind == "lead":
            conditions = []
            for attr, ops in body.items():
                attr_type = self.settings.lead_attributes.get(attr)
                if attr_type is None:
                    known = sorted(self.settings.lead_attributes)
                    self.error(file, here + (attr,),
                               f"unknown lead attribute {short_repr(attr)}{suggest(attr, known)}; "
                               "declare it under settings.lead_attributes")
                    return None
                try:
                    conditions.append((attr, compile_conditions(ops, attr_type)))
                except OperandError as err:
                    self.error(file, here + (attr,), f"lead.{attr}: {err}")
                    return None
            described = " and ".join(_describe_ops(attr, ops) for attr, ops in body.items())

            if len(conditions) == 1:
                ((attr, pred),) = conditions

                def test(state: LeadState, now: int) -> bool:
                    return pred(state.attributes.get(attr), now)

                if self.settings.lead_attributes[attr] == "string":
                    return Filter(number, described, test, (attr, pred))
            else:
                def test(state: LeadState, now: int, conditions=tuple(conditions)) -> bool:
                    attributes = state.attributes
                    return all(pred(attributes.get(attr), now) for attr, pred in conditions)

            return Filter(number, described, test)
        if kind == "score":
            try:
                predicate = compile_conditions(body, "number")
            except OperandError as err:
                self.error(file, here, f"score: {err}")
                return None
            return Filter(number, _describe_ops("score", body), lambda state, now: predicate(state.score, now))
        if kind in ("member_of_list", "not_member_of_list"):
            if not self.check_list(file, here, body):
                return None
            if kind == "member_of_list":
                return Filter(number, f"member of list {short_repr(body)}", lambda state, now: body in state.lists)
            return Filter(number, f"not member of list {short_repr(body)}", lambda state, now: body not in state.lists)
        return self.compile_history_filter(file, here, number, body)

    def compile_history_filter(self, file: RuleFile, path: tuple, number: int, body: dict) -> Filter | None:
        type_ = self.activity_type(body["activity"])
        if type_ is None:
            self.unknown_activity_type(file, path + ("activity",), body["activity"])
            return None
        window = body["in_past"]
        if window["unit"] in ("minutes", "hours"):
            self.error(file, path + ("in_past",),
                       "activity history is counted per day; give in_past in days, weeks or months")
            return None
        where = body.get("where", {})
        conditions = self.compile_where(file, path + ("where",), type_, where)
        if conditions is None:
            return None
        at_least = body.get("at_least")
        at_most = body.get("at_most")
        if at_least is None and at_most is None:
            at_least = 1
        if at_least is not None and at_most is not None and at_least > at_most:
            self.error(file, path, f"at_least {at_least} is more than at_most {at_most}; no lead can match")
            return None
        low = at_least or 0
        high = at_most if at_most is not None else float("inf")
        days = window["n"] * MS_PER_UNIT[window["unit"]] // MS_PER_DAY
        key = json.dumps([type_.name, where], sort_keys=True, separators=(",", ":"))
        known = self.counters.get(key)
        retention = max(days + 1, known.retention_days if known else 0)
        self.counters[key] = HistoryCounter(key, type_.name, conditions, retention,
                                            *_index_plan(type_, where, conditions))

        def test(state: LeadState, now: int) -> bool:
            per_day = state.history.get(key)
            if not per_day:
                return low == 0
            first_day = now // MS_PER_DAY - days
            count = 0
            for day, n in per_day.items():
                if day >= first_day:
                    count += n
            return low <= count <= high

        times = f"at least {low}" if at_most is None else (
            f"at most {at_most}" if at_least is None else f"{low} to {at_most}")
        where_text = " where " + " and ".join(_describe_ops(a, o) for a, o in where.items()) if where else ""
        return Filter(number, f"{type_.name}{where_text} {times} times in past {window['n']} {window['unit']}", test)

    def unknown_activity_type(self, file: RuleFile, path: tuple, name: str) -> None:
        known = sorted(set(BUILTIN_TYPES) | set(self.settings.activity_types))
        self.error(file, path,
                   f"unknown activity type {short_repr(name)}{suggest(name, known)}; use a built-in type or "
                   "declare it under settings.activity_types")

    # campaigns ------------------------------------------------------------------

    def compile_campaigns(self) -> dict[str, Campaign]:
        campaigns: dict[str, Campaign] = {}
        where_defined: dict[str, str] = {}
        requests: dict[str, list[tuple[str, RuleFile, tuple]]] = {}
        removals: list[tuple[str, RuleFile, tuple]] = []
        for file in self.files:
            specs = file.doc.get("campaigns")
            # (not a list, `campaigns: true`: the schema's error says so; nothing to compile)
            for i, spec in enumerate(specs if isinstance(specs, list) else ()):
                path = ("campaigns", i)
                if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
                    continue
                name = spec["name"]
                if name in where_defined:
                    self.error(file, path + ("name",),
                               f"campaign {short_repr(name)} is already defined at {where_defined[name]}; "
                               "campaign names must be unique within a tenant")
                    continue
                size = len(name.encode("utf-8", "surrogatepass"))
                if size > MAX_CAMPAIGN_NAME_BYTES:
                    self.error(file, path + ("name",),
                               f"campaign name {short_repr(name)} is {size} bytes in UTF-8; at most "
                               f"{MAX_CAMPAIGN_NAME_BYTES} (the outbox and the roll-ups keep it in a key): shorten it")
                    continue
                where_defined[name] = f"{file.path}:{line_of(file.doc, path)}"
                found_requests: list[tuple[str, RuleFile, tuple]] = []
                campaign = self.compile_campaign(file, path, spec, found_requests, removals)
                requests[name] = found_requests
                if campaign is not None:
                    campaigns[name] = campaign
        self.check_campaign_references(where_defined, requests, removals)
        ordered = sorted(campaigns.values(), key=lambda c: (c.priority, c.name))
        return {c.name: c._replace(rank=rank) for rank, c in enumerate(ordered)}

    def compile_campaign(self, file: RuleFile, path: tuple, spec: dict,
                         requests: list, removals: list) -> Campaign | None:
        errors_before = len(self.errors)

        def part(key: str, default: Any, container: bool = False) -> Any:
            """The campaign's `key`, or None where the schema check found it broken (for
            lists, only when the list itself is broken: its good items are still checked)."""
            broken = (*path, key) in file.broken if container else file.is_broken(*path, key)
            return None if broken else spec.get(key, default)

        kind = part("type", "trigger")
        triggers_spec = part("triggers", [], container=True)
        if kind == "trigger":
            if triggers_spec == []:
                self.error(file, path, f"trigger campaign {short_repr(spec['name'])} needs at least one entry under "
                           "triggers (or set type: batch for a scheduled send)")
            if "schedule" in spec:
                self.error(file, path + ("schedule",), "schedule belongs to batch campaigns; set type: batch "
                           "or remove schedule")
        elif kind == "batch":
            for key in ("triggers", "qualification"):
                if key in spec:
                    self.error(file, path + (key,), f"{key} belongs to trigger campaigns; a batch campaign "
                               "selects its leads with filters")
        filters_spec = part("filters", [], container=True)
        filters = self.compile_filters(file, path + ("filters",), filters_spec) if filters_spec is not None else None
        logic_text = part("logic", "all")
        logic = None
        if logic_text is not None and filters_spec is not None:
            try:
                logic = parse_logic(logic_text, len(filters_spec))
            except LogicError as err:
                self.error(file, path + ("logic",), f"{err}")
        qualification, interval, qualification_text = self.read_qualification(part("qualification", "once") or "once")
        schedule_spec = part("schedule", None)
        schedule = self.read_schedule(file, path + ("schedule",), schedule_spec)
        flow_spec = part("flow", [], container=True)
        flow = self.check_flow(file, path + ("flow",), flow_spec or [], requests, removals)
        if len(self.errors) > errors_before or file.is_broken(*path) or filters is None or logic is None:
            # Still check the triggers, so every error is reported in one pass.
            for j, trigger in enumerate(triggers_spec or []):
                self.compile_trigger(file, path + ("triggers", j), trigger, None)
            return None
        campaign = Campaign(
            tenant=self.tenant,
            name=spec["name"],
            kind=kind,
            active=spec.get("status", "active") == "active",
            priority=spec.get("priority", DEFAULT_PRIORITY),
            triggers=(),
            filters=filters,
            logic=logic,
            logic_text=logic_text.strip().lower() if logic_text.strip().lower() in ("all", "any") else logic_text,
            qualification=qualification,
            interval_ms=interval,
            qualification_text=qualification_text,
            flow=flow,
            schedule=schedule,
            file=file.path,
            line=line_of(file.doc, list(path)),
        )
        triggers = []
        for j, trigger in enumerate(triggers_spec or []):
            made = self.compile_trigger(file, path + ("triggers", j), trigger, campaign)
            if made is not None:
                triggers.append(made)
        if len(self.errors) > errors_before or file.is_broken(*path):
            return None
        return campaign._replace(triggers=tuple(triggers))

    def compile_trigger(self, file: RuleFile, path: tuple, spec: dict, campaign: Campaign | None) -> Trigger | None:
        if not isinstance(spec, dict) or file.is_broken(*path, "activity") or "activity" not in spec:
            return None
        type_ = self.activity_type(spec["activity"])
        if type_ is None:
            self.unknown_activity_type(file, path + ("activity",), spec["activity"])
            return None
        if (*path, "where") in file.broken:
            return None
        where = spec.get("where", {})
        conditions = self.compile_where(file, path + ("where",), type_, where)
        if conditions is None:
            return None
        return Trigger(campaign, type_.name, conditions, *_index_plan(type_, where, conditions))

    def read_qualification(self, spec: Any) -> tuple[str, int, str]:
        if isinstance(spec, dict):
            every = spec["once_every"]
            return "once_every", every["n"] * MS_PER_UNIT[every["unit"]], f"once every {every['n']} {every['unit']}"
        return spec, 0, spec.replace("_", " ")

    def read_schedule(self, file: RuleFile, path: tuple, spec: dict | None) -> dict | None:
        if spec is None:
            return None
        schedule: dict[str, Any] = {}
        for key in ("at", "starting"):
            if key in spec:
                try:
                    schedule[key] = parse_timestamp(spec[key])
                except ValueError as err:
                    self.error(file, path + (key,), f"schedule.{key}: {err}")
        if "every" in spec:
            schedule["every_ms"] = spec["every"]["n"] * MS_PER_UNIT[spec["every"]["unit"]]
        if "at" in spec and ("every" in spec or "starting" in spec):
            self.error(file, path, "a schedule is either `at` (once) or `every` with an optional `starting`")
        if "starting" in spec and "every" not in spec:
            self.error(file, path, "`starting` goes with `every`; for a single send use `at`")
        return schedule

    # flow -----------------------------------------------------------------------

    def check_flow(self, file: RuleFile, path: tuple, steps: list, requests: list, removals: list) -> tuple:
        for i, step in enumerate(steps):
            here = path + (i,)
            if file.is_broken(*here):
                continue
            actions = [k for k in step if k in STEP_KINDS]
            if len(actions) > 1:
                self.error(file, here, f"a flow step does one thing, this one has {', '.join(actions)}; "
                           "split it into separate steps")
            elif not actions and "choices" not in step:
                self.error(file, here, f"empty flow step; give one of {', '.join(STEP_KINDS)}")
            for kind in actions:
                self.check_action(file, here, kind, step[kind], requests, removals)
            for j, choice in enumerate(step.get("choices", ())):
                choice_path = here + ("choices", j)
                self.compile_filters(file, choice_path + ("if",), choice["if"])
                try:
                    parse_logic(choice.get("logic", "all"), len(choice["if"]))
                except LogicError as err:
                    self.error(file, choice_path + ("logic",), str(err))
                then = choice["then"]
                then_actions = list(then)
                if len(then_actions) != 1:
                    self.error(file, choice_path + ("then",),
                               f"`then` takes exactly one of {', '.join(STEP_KINDS)}")
                for kind in then_actions:
                    self.check_action(file, choice_path + ("then",), kind, then[kind], requests, removals)
        return tuple(_plain(step) for step in steps)

    def check_action(self, file: RuleFile, path: tuple, kind: str, body: dict,
                     requests: list, removals: list) -> None:
        here = path + (kind,)
        if kind == "send_email":
            self.check_template(file, here + ("template",), body["template"])
        elif kind in ("add_to_list", "remove_from_list"):
            self.check_list(file, here + ("list",), body["list"])
        elif kind == "change_data_value":
            attr = body["attribute"]
            attr_type = self.settings.lead_attributes.get(attr)
            if attr_type is None:
                self.error(file, here + ("attribute",),
                           f"unknown lead attribute {short_repr(attr)}{suggest(attr, self.settings.lead_attributes)}; "
                           "declare it under settings.lead_attributes")
            elif body["value"] is not None:
                try:
                    compile_conditions({"is": body["value"]}, attr_type) if attr_type != "date" else parse_timestamp(body["value"])
                except (OperandError, ValueError):
                    self.error(file, here + ("value",),
                               f"lead attribute {short_repr(attr)} is {attr_type}; {short_repr(body['value'])} does not fit")
        elif kind == "wait" and "until" in body:
            try:
                parse_timestamp(body["until"])
            except ValueError as err:
                self.error(file, here + ("until",), f"wait until: {err}")
        elif kind == "request_campaign":
            requests.append((body["campaign"], file, here + ("campaign",)))
        elif kind == "remove_from_flow":
            for j, name in enumerate(body["campaigns"]):
                removals.append((name, file, here + ("campaigns", j)))

    def check_template(self, file: RuleFile, path: tuple, name: str) -> None:
        if name not in self.checked_templates:
            self.checked_templates[name] = self.find_template_problem(name)
        problem = self.checked_templates[name]
        if problem is not None:
            self.error(file, path, problem)

    def find_template_problem(self, name: str) -> str | None:
        problem = template_name_problem(name)
        if problem is not None:
            return (f"template name {short_repr(name)} {problem}; a template is named by its file "
                    f"(NAME{TEMPLATE_SUFFIX}) in {self.rules_dir / 'templates' / self.tenant}, "
                    f"{self.rules_dir / 'templates'} or a --templates folder")
        search = TemplateSearch(self.rules_dir, self.tenant, self.template_dirs)
        if search.find(name) is None:
            available = search.available()
            return (f"unknown template {short_repr(name)}{suggest(name, available)}; add "
                    f"{short_text(template_filename(name))} to {search.own} "
                    f"(available: {short_text(', '.join(available) or 'none', 400)})")
        return self.template_compile_problem(search, name)

    def template_compile_problem(self, search: TemplateSearch, name: str) -> str | None:
        """Compile the template and every template it includes, imports or extends by a
        fixed name, in the sandbox it renders in, through the tenant's own loader."""
        environment = TemplateSandbox(loader=TenantTemplateLoader(search), autoescape=True)
        pending, seen = [template_filename(name)], set()
        trees: dict = {}
        while pending:
            filename = pending.pop()
            if filename in seen:
                continue
            seen.add(filename)
            if len(seen) > MAX_REFERENCED_TEMPLATES:
                return (f"template {short_repr(name)} pulls in more than {MAX_REFERENCED_TEMPLATES} templates "
                        "through include, import and extends; use fewer")
            path = search.find(filename)
            try:
                tree = self.template_trees.get(str(path))
                if tree is None:
                    source = read_template(path)
                    self.template_bytes += len(source)
                    if self.template_bytes > MAX_TENANT_TEMPLATE_BYTES:
                        return (f"template {short_repr(name)} ({path}) brings the tenant's templates past "
                                f"{MAX_TENANT_TEMPLATE_BYTES:,} characters of source in all; use fewer or "
                                "smaller templates")
                    tree = environment.parse(source, filename, str(path))
                    environment.compile(tree, filename, str(path))
                    unknown = unknown_name(environment, tree)
                    if unknown is not None:
                        return (f"template {short_repr(name)} does not compile: {path}:{unknown[0]}: {unknown[1]}; "
                                "fix the template")
                    self.template_trees[str(path)] = tree
            except jinja2.TemplateSyntaxError as err:
                return (f"template {short_repr(name)} does not compile: {path}:{err.lineno}: "
                        f"{short_text(err.message or '', 200)}; fix the template")
            except (TemplateFileTooLarge, TemplateLimitError) as err:
                return f"template {short_repr(name)} is refused: {short_text(str(err), 200)}"
            except (OSError, UnicodeDecodeError) as err:
                return f"template {short_repr(name)} cannot be read: {short_text(str(err), 200)}"
            except RecursionError:
                return f"template {short_repr(name)} nests too deep to compile ({path}); simplify it"
            trees[filename] = tree
            for referenced in jinja2.meta.find_referenced_templates(tree):
                if referenced is None:
                    continue  # a name computed when it renders: looked up (and confined) then
                problem = template_name_problem(referenced)
                if problem is not None:
                    return (f"template {short_repr(name)} ({path}) refers to {short_repr(referenced)}, whose "
                            f"name {problem}")
                if search.find(referenced) is None:
                    return (f"template {short_repr(name)} ({path}) refers to {short_repr(referenced)}, which is "
                            f"not a template tenant {short_repr(self.tenant)} has; templates of other tenants "
                            "cannot be used")
                pending.append(template_filename(referenced))
        return _email_blocks_problem(name, template_filename(name), trees)

    def check_campaign_references(self, defined: dict, requests: dict, removals: list) -> None:
        for name, targets in requests.items():
            for target, file, path in targets:
                if target not in defined:
                    self.error(file, path, f"request_campaign names unknown campaign {short_repr(target)}"
                               f"{suggest(target, defined)}")
        for target, file, path in removals:
            if target not in defined:
                self.error(file, path, f"remove_from_flow names unknown campaign {short_repr(target)}{suggest(target, defined)}")
        # Depth-first search for request cycles; report each cycle once, at its first request.
        graph = {name: [t for t, _, _ in targets if t in defined] for name, targets in requests.items()}
        state: dict[str, int] = {}  # 1 = on the current path, 2 = done
        reported: set[frozenset] = set()

        def visit(name: str, trail: list[str]) -> None:
            state[name] = 1
            for target in graph.get(name, ()):
                if state.get(target) == 1:
                    cycle = trail[trail.index(target):] + [target]
                    members = frozenset(cycle)
                    if members not in reported:
                        reported.add(members)
                        _, file, path = next(r for r in requests[cycle[0]] if r[0] == cycle[1])
                        self.error(file, path, "request_campaign cycle: " + " -> ".join(cycle)
                                   + "; a campaign must not request itself, directly or through others")
                elif state.get(target) is None:
                    visit(target, trail + [target])
            state[name] = 2

        for name in sorted(graph):
            if state.get(name) is None:
                visit(name, [name])

    # experiences ----------------------------------------------------------------

    def compile_experiences(self) -> TenantExperiences:
        """Every experience of the tenant, checked and compiled. Their audiences' history
        counters are compiled apart from the campaigns' (TenantExperiences.counters); the
        tenant's rules then count both (see load_rules)."""
        experiences: dict[str, Experience] = {}
        where_defined: dict[str, str] = {}
        placements: dict[str, None] = {}
        campaign_counters, self.counters = self.counters, {}
        try:
            for file in self.files:
                specs = file.doc.get("experiences")
                if not isinstance(specs, list) or ("experiences",) in file.broken:
                    continue
                for i, spec in enumerate(specs):
                    path = ("experiences", i)
                    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
                        continue
                    name = spec["name"]
                    if name in where_defined:
                        self.error(file, path + ("name",),
                                   f"experience {short_repr(name)} is already defined at {where_defined[name]}; "
                                   "experience names must be unique within a tenant")
                        continue
                    where_defined[name] = f"{file.path}:{line_of(file.doc, path)}"
                    if isinstance(spec.get("placement"), str) and not file.is_broken(*path, "placement"):
                        placements[spec["placement"]] = None
                    made = self.compile_experience(file, path, spec)
                    if made is not None:
                        experiences[name] = made
            counters = tuple(self.counters.values())
        finally:
            self.counters = campaign_counters
        by_placement: dict[str, tuple] = {placement: () for placement in placements}
        for experience in sorted(experiences.values(), key=lambda e: (e.priority, e.name)):
            if experience.active:
                by_placement[experience.placement] += (experience,)
        return TenantExperiences(self.tenant, by_placement, experiences, counters)

    def compile_experience(self, file: RuleFile, path: tuple, spec: dict) -> Experience | None:
        errors_before = len(self.errors)
        broken = file.is_broken(*path)
        audience = spec.get("audience") if isinstance(spec.get("audience"), dict) else {}
        here = path + ("audience",)
        filters, logic, logic_text = (), None, "all"
        filters_spec = audience.get("filters", [])
        if (*here, "filters") not in file.broken and isinstance(filters_spec, list):
            filters = self.compile_filters(file, here + ("filters",), filters_spec)
            raw_logic = audience.get("logic", "all")
            if isinstance(raw_logic, str) and not file.is_broken(*here, "logic"):
                try:
                    logic = parse_logic(raw_logic, len(filters_spec))
                except LogicError as err:
                    self.error(file, here + ("logic",), f"{err}")
                word = raw_logic.strip().lower()
                logic_text = word if word in ("all", "any") else raw_logic
        context = self.compile_context(file, here + ("context",), audience.get("context"))
        starting = ending = None
        schedule = spec.get("schedule")
        if isinstance(schedule, dict) and not file.is_broken(*path, "schedule"):
            moments = {}
            for key in ("starting", "ending"):
                if key in schedule:
                    try:
                        moments[key] = parse_timestamp(schedule[key])
                    except ValueError as err:
                        self.error(file, path + ("schedule", key), f"schedule.{key}: {err}")
            starting, ending = moments.get("starting"), moments.get("ending")
            if starting is not None and ending is not None and starting >= ending:
                self.error(file, path + ("schedule",), "schedule.ending must come after schedule.starting")
        arms = self.compile_arms(file, path, spec)
        goal = None
        if isinstance(spec.get("goal"), dict) and not file.is_broken(*path, "goal"):
            goal = self.compile_goal(file, path + ("goal",), spec["goal"])
        if broken or len(self.errors) > errors_before or filters is None or logic is None or arms is None \
                or context is None:
            return None
        cumulative, total = [], 0.0
        for arm in arms:
            total += arm.weight
            cumulative.append(total)
        return Experience(
            tenant=self.tenant,
            name=spec["name"],
            placement=spec["placement"],
            active=spec.get("status", "active") == "active",
            priority=spec.get("priority", DEFAULT_PRIORITY),
            starting=starting,
            ending=ending,
            filters=filters,
            logic=logic,
            logic_text=logic_text,
            context=context,
            arms=arms,
            cumulative=tuple(cumulative),
            goal=goal,
            file=file.path,
            line=line_of(file.doc, list(path)),
        )

    def compile_context(self, file: RuleFile, path: tuple, spec: Any) -> tuple | None:
        """The audience's conditions on the request's context, or None on an error."""
        if spec is None:
            return ()
        if not isinstance(spec, dict) or path in file.broken:
            return None
        conditions, ok = [], True
        for field, ops in spec.items():
            if file.is_broken(*path, field):
                ok = False
                continue
            try:
                test = _time_of_day_test(ops) if field == "local_time" else compile_conditions(ops, "string")
            except OperandError as err:
                self.error(file, path + (field,), f"context.{field}: {err}")
                ok = False
                continue
            conditions.append((field, test))
        return tuple(conditions) if ok else None

    def compile_arms(self, file: RuleFile, path: tuple, spec: dict) -> tuple[Variant, ...] | None:
        """The variants, then the control group if there is one; None on an error."""
        variants = spec.get("variants")
        if not isinstance(variants, list) or (*path, "variants") in file.broken:
            return None
        arms, names, ok = [], {}, True
        for j, variant in enumerate(variants):
            here = path + ("variants", j)
            if file.is_broken(*here):
                ok = False
                continue
            name = variant["name"]
            if name == CONTROL:
                self.error(file, here + ("name",), f"{short_repr(CONTROL)} names the control group; give the "
                           "variant another name, or set the control group's share under control:")
                ok = False
            elif name in names:
                self.error(file, here + ("name",), f"variant {short_repr(name)} is already defined at line "
                           f"{names[name]}; variant names must be unique within an experience")
                ok = False
            names[name] = line_of(file.doc, list(here))
            kind, content = self.compile_content(file, here, variant, required=True)
            if kind is None:
                ok = False
                continue
            arms.append(Variant(name, float(variant["weight"]), kind, content))
        control = spec.get("control")
        if isinstance(control, dict):
            here = path + ("control",)
            if file.is_broken(*here):
                ok = False
            else:
                kind, content = self.compile_content(file, here, control, required=False)
                if kind is None:
                    ok = False
                else:
                    arms.append(Variant(CONTROL, float(control["weight"]), kind, content, control=True))
        if ok and not sum(arm.weight for arm in arms) > 0:
            self.error(file, path + ("variants",), "every weight of the experience is 0; give at least one "
                       "variant (or the control group) a weight above 0")
            ok = False
        return tuple(arms) if ok else None

    def compile_content(self, file: RuleFile, path: tuple, spec: dict, required: bool) -> tuple[str | None, Any]:
        """(kind, content) of a variant or control group; (None, None) on an error."""
        given = [key for key in ("json", "template") if key in spec]
        if len(given) > 1:
            self.error(file, path, "give the content as json: or as template:, not both")
            return None, None
        if not given:
            if required:
                self.error(file, path, "a variant needs its content: json: (any JSON value) or template: "
                           "(a Jinja2 snippet)")
                return None, None
            return "none", None
        if given[0] == "json":
            content = _plain(spec["json"])
            try:
                json.dumps(content, allow_nan=False)
            except ValueError as err:
                self.error(file, path + ("json",), f"the content is not JSON: {err} (.nan and .inf are not JSON)")
                return None, None
            return "json", content
        source = spec["template"]
        problem = _snippet_problem(source)
        if problem is not None:
            self.error(file, path + ("template",), problem)
            return None, None
        return "template", source

    def compile_goal(self, file: RuleFile, path: tuple, spec: dict) -> ExperienceGoal | None:
        type_ = self.activity_type(spec["activity"])
        if type_ is None:
            self.unknown_activity_type(file, path + ("activity",), spec["activity"])
            return None
        where = spec.get("where", {})
        conditions = self.compile_where(file, path + ("where",), type_, where)
        if conditions is None:
            return None
        within = spec["within"]
        where_text = " where " + " and ".join(_describe_ops(a, o) for a, o in where.items()) if where else ""
        return ExperienceGoal(type_.name, conditions, within["n"] * MS_PER_UNIT[within["unit"]],
                              f"{type_.name}{where_text} within {within['n']} {within['unit']}")


def _with_decision_counters(counters, decision_counters) -> list[HistoryCounter]:
    """The campaigns' history counters and the experiences' (which the graph counts for
    decisions, into the lead's profile), each key once, kept for as many days as the
    longest filter of either reads."""
    merged = {counter.key: counter for counter in counters}
    for counter in decision_counters:
        known = merged.get(counter.key)
        if known is None:
            merged[counter.key] = counter
        elif known.retention_days < counter.retention_days:
            merged[counter.key] = known._replace(retention_days=counter.retention_days)
    return list(merged.values())


_SNIPPET_SANDBOX = TemplateSandbox(autoescape=True)


def _snippet_problem(source: str) -> str | None:
    """Why a content snippet cannot be used (it does not compile in the sandbox it renders
    in, refers to other templates, or is too long), or None."""
    if len(source) > MAX_SNIPPET_CHARS:
        return (f"the template is {len(source):,} characters, more than the {MAX_SNIPPET_CHARS:,} a content "
                "snippet may hold; shorten it")
    try:
        tree = _SNIPPET_SANDBOX.parse(source)
        _SNIPPET_SANDBOX.compile(tree)
        unknown = unknown_name(_SNIPPET_SANDBOX, tree)
    except jinja2.TemplateSyntaxError as err:
        return f"the template does not compile: its line {err.lineno}: {short_text(err.message or '', 200)}"
    except TemplateLimitError as err:
        return f"the template is refused: {short_text(str(err), 200)}"
    except RecursionError:
        return "the template nests too deep to compile; simplify it"
    if unknown is not None:
        return f"the template does not compile: its line {unknown[0]}: {unknown[1]}"
    if any(True for _ in jinja2.meta.find_referenced_templates(tree)):
        return "a content snippet stands alone: it cannot include, import or extend templates"
    return None


def _time_of_day(text: Any) -> float:
    """'HH:MM' or 'HH:MM:SS' (00:00 to 24:00) -> minutes since midnight."""
    parts = text.split(":") if isinstance(text, str) else []
    if len(parts) not in (2, 3) or not all(p.isdigit() and len(p) == 2 for p in parts):
        raise OperandError(f"{short_repr(text)} is not a time of day; write it as HH:MM, like 09:30")
    hours, minutes, seconds = int(parts[0]), int(parts[1]), int(parts[2]) if len(parts) == 3 else 0
    if minutes > 59 or seconds > 59 or hours > 24 or (hours == 24 and (minutes or seconds)):
        raise OperandError(f"{short_repr(text)} is not a time of day between 00:00 and 24:00")
    return hours * 60 + minutes + seconds / 60


def _time_of_day_test(ops: dict):
    """The local-time conditions (minutes since local midnight; None: unknown) as one
    predicate. `between: [from, to]` holds from `from` up to, not including, `to`, and
    runs past midnight when `to` comes first (`[22:00, 06:00]`)."""
    tests = []
    for op, operand in ops.items():
        if op not in TIME_OF_DAY_OPERATORS:
            raise OperandError(f"operator {short_repr(op)} does not apply to local_time; use one of "
                               f"{', '.join(TIME_OF_DAY_OPERATORS)}")
        if op in ("is_empty", "is_not_empty"):
            if operand is not True:
                raise OperandError(f"write `{op}: true`")
            tests.append((lambda v: v is None) if op == "is_empty" else (lambda v: v is not None))
        elif op == "between":
            if len(operand) != 2:
                raise OperandError("between takes two times of day, [from, to]")
            low, high = _time_of_day(operand[0]), _time_of_day(operand[1])
            if low == high:
                raise OperandError("between takes two different times of day")
            if low < high:
                tests.append(lambda v, low=low, high=high: v is not None and low <= v < high)
            else:
                tests.append(lambda v, low=low, high=high: v is not None and (v >= low or v < high))
        else:
            moment = _time_of_day(operand)
            if op == "before":
                tests.append(lambda v, moment=moment: v is not None and v < moment)
            else:
                tests.append(lambda v, moment=moment: v is not None and v >= moment)
    return lambda value, now: all(test(value) for test in tests)


def _index_plan(type_: ActivityType, where: dict, conditions: tuple) -> tuple:
    """How the trigger index files conditions `where` (compiled as `conditions`, in the
    same order): (residual, selective, key_kind, key_values, residual_key), see Trigger.

    The operator the index answers on the selective attribute is, by preference: is/in
    (exact values), starts_with (a prefix), contains (a text inside). A `matches` with a
    literal part is filed under that literal and keeps the expression in its residual."""
    selective = type_.indexed_by
    ops = where.get(selective) if selective is not None else None
    kind, values, answered = None, (), None
    if isinstance(ops, dict):
        if "is" in ops or "in" in ops:
            answered = "is" if "is" in ops else "in"
            operand = ops[answered]
            kind = EXACT
            values = tuple(dict.fromkeys(v.casefold() for v in ([operand] if answered == "is" else operand)))
        elif "starts_with" in ops:
            answered, kind = "starts_with", PREFIX
            values = (ops[answered].casefold(),)
        elif "contains" in ops:
            answered, kind = "contains", CONTAINS
            values = (ops[answered].casefold(),)
        elif "matches" in ops:
            literal = required_literal(ops["matches"])
            if literal is not None:
                kind, values = CONTAINS, (literal,)
    residual_where = dict(where)
    residual = conditions
    if answered is not None:
        residual = tuple(c for attr, c in zip(where, conditions) if attr != selective)
        remaining = {op: v for op, v in ops.items() if op != answered}
        del residual_where[selective]
        if remaining:
            residual += ((attribute_getter(selective), compile_conditions(remaining, "string")),)
            residual_where[selective] = remaining
    residual_key = json.dumps(residual_where, sort_keys=True, separators=(",", ":"), default=repr)
    return residual, selective, kind, values, residual_key


def _describe_ops(attr: str, ops: dict) -> str:
    """`url starts_with "/pricing"`; is_empty and is_not_empty take no operand worth showing."""
    return " and ".join(
        f"{attr} {op}" if op in ("is_empty", "is_not_empty") else f"{attr} {op} {json.dumps(v, default=str)}"
        for op, v in ops.items()
    )


def _plain(value: Any) -> Any:
    """Line-tracking YAML nodes -> plain dicts and lists (for pickling and JSON)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


# --- the directory ------------------------------------------------------------------


def _compile_directory(directory: Path, template_dirs: list[Path], file_tenants: dict | None = None,
                       experiences: dict | None = None) -> tuple[RuleSet, list[RuleError]]:
    # Loading builds hundreds of thousands of objects (YAML nodes, line-tracking dicts,
    # compiled conditions) that all stay alive until it ends, so every cyclic-garbage
    # collection meanwhile scans them all for nothing: with collection paused, 10,000
    # campaigns load in a third of the time. Whatever garbage there is waits until the end.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _compile_directory_now(directory, template_dirs, {} if file_tenants is None else file_tenants,
                                      experiences)
    finally:
        if collecting:
            gc.enable()


_TENANT_LINE = re.compile(rb"""^tenant:[ \t]*(["']?)([A-Za-z0-9][A-Za-z0-9_.-]*)\1[ \t]*(?:#[^\r\n]*)?\r?$""", re.M)


def _tenant_line(path: Path) -> str | None:
    """The tenant a rule file names on a top-level `tenant: NAME` line, read from its
    bytes (for a file that is not valid YAML, or not UTF-8); None when it names none, or
    names two."""
    try:
        with path.open("rb") as opened:
            data = opened.read(MAX_RULE_FILE_BYTES)
    except OSError:
        return None
    found = {match.group(2).decode("ascii") for match in _TENANT_LINE.finditer(data)}
    return found.pop() if len(found) == 1 else None


def _compile_directory_now(directory: Path, template_dirs: list[Path], file_tenants: dict,
                           experiences: dict | None = None) -> tuple[RuleSet, list[RuleError]]:
    """Compile every rule file; `file_tenants` is filled with the tenant each file that
    names one names, by the path its errors cite, and `experiences` (if given) with each
    tenant's TenantExperiences."""
    errors: list[RuleError] = []
    if not directory.is_dir():
        return RuleSet({}, ActivityTypes()), [RuleError(str(directory), 1, "no such rules directory")]
    paths = rule_files(directory)
    if not paths:
        errors.append(RuleError(str(directory), 1, "no rule files (*.yaml) in this directory"))
    by_tenant: dict[str, list[RuleFile]] = {}
    for path in paths:
        display = str(path)
        rule_file, file_errors = read_rule_file(path, display)
        errors.extend(file_errors)
        if rule_file is None:
            # A file that does not read as YAML (a syntax error, an alias, a tab) still
            # names its tenant on a line of its own, most often: its errors are that
            # tenant's, whose rules are refused, not every tenant's.
            named = _tenant_line(path)
            if named is not None:
                file_tenants[display] = named
            continue
        if rule_file.is_broken("tenant") or not isinstance(rule_file.doc.get("tenant"), str):
            continue
        by_tenant.setdefault(rule_file.doc["tenant"], []).append(rule_file)
        file_tenants[display] = rule_file.doc["tenant"]

    compilers = {t: _TenantCompiler(t, files, directory, template_dirs) for t, files in sorted(by_tenant.items())}
    for compiler in compilers.values():
        compiler.read_settings()
    tenants = {}
    for tenant, compiler in compilers.items():
        compiler.check_durations()
        with program_budget():  # the tenant's patterns share one budget of compiled program
            campaigns = compiler.compile_campaigns()
            found_experiences = compiler.compile_experiences()
        errors.extend(compiler.errors)
        if experiences is not None:
            experiences[tenant] = found_experiences
        tenants[tenant] = TenantRules.build(
            tenant,
            campaigns,
            _with_decision_counters(compiler.counters.values(), found_experiences.counters),
            lists=frozenset(compiler.settings.lists),
            lead_attributes=dict(compiler.settings.lead_attributes),
            communication_limits=dict(compiler.settings.limits),
            limits=dict(compiler.settings.budgets),
            decision_counters=found_experiences.counters,
        )
    activity_types = ActivityTypes({t: c.settings.activity_types for t, c in compilers.items()},
                                   {t: c.settings.lead_attributes for t, c in compilers.items()})
    return RuleSet(tenants, activity_types), errors

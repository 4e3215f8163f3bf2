"""Shared helpers for the core tests: rule files written to a temporary directory and
loaded through the real loader, activities built through the real parser, and the
line-number look-ups the validation tests compare error positions with.

    .venv/bin/python -m pytest tests -q
"""
from __future__ import annotations

import itertools
import textwrap
from pathlib import Path

import pytest

import orion
from orion.activities import MS_PER_UNIT, Activity, ActivityTypes, parse_activity, parse_timestamp
from orion.rules import RuleSet, check_rules, evaluate_lead, load_rules
from orion.rules.model import LeadState, Outcome

# One fixed moment the tests measure time from, and the units of the rule language.
T0 = parse_timestamp("2026-11-22T10:00:00Z")
MINUTE = MS_PER_UNIT["minutes"]
HOUR = MS_PER_UNIT["hours"]
DAY = MS_PER_UNIT["days"]
WEEK = MS_PER_UNIT["weeks"]
MONTH = MS_PER_UNIT["months"]

# The sample rules shipped with Orion (the quickstart's rules).
SAMPLE_RULES = Path(orion.__file__).resolve().parent / "samples" / "rules"

_event_ids = itertools.count(1)


def make_activity(
    type_: str,
    *,
    tenant: str = "acme",
    lead: str = "1",
    at: int | str = T0,
    event_id: str | None = None,
    types: ActivityTypes | RuleSet | None = None,
    **attributes,
) -> Activity:
    """A validated Activity, built through `parse_activity` so that every activity a test
    evaluates is one the parser would accept. Pass the RuleSet (or its ActivityTypes)
    when the type is a tenant's custom type."""
    if isinstance(types, RuleSet):
        types = types.activity_types
    raw = {
        "event_id": event_id or f"e{next(_event_ids):06d}",
        "tenant": tenant,
        "lead_id": lead,
        "type": type_,
        "occurred_at": at,
        "attributes": attributes,
    }
    return parse_activity(raw, types or ActivityTypes())


def run(rules: RuleSet, activities, state: LeadState | None = None) -> tuple[LeadState, list[Outcome]]:
    """Evaluate one lead's activities; the final state and every outcome."""
    return evaluate_lead(rules, state, list(activities))


def outcome_map(outcomes) -> dict[str, Outcome]:
    """Outcomes by campaign name (for tests where each campaign appears once)."""
    found = {o.campaign: o for o in outcomes}
    assert len(found) == len(outcomes), f"a campaign appears twice: {outcomes}"
    return found


def qualified_names(outcomes) -> list[str]:
    return [o.campaign for o in outcomes if o.qualified]


def line_in(text: str, needle: str, nth: int | None = None) -> int:
    """1-based line of the line of `text` containing `needle`, which must be unique (so an
    ambiguous needle fails loudly), or of its `nth` occurrence when nth is given."""
    hits = [i for i, line in enumerate(text.splitlines(), start=1) if needle in line]
    if nth is None:
        assert len(hits) == 1, f"{needle!r} is on lines {hits}; make the needle unique"
        return hits[0]
    assert len(hits) >= nth, f"{needle!r} occurs {len(hits)} time(s), wanted #{nth}"
    return hits[nth - 1]


class RuleDirectory:
    """A rules directory under tmp_path that tests write YAML files into."""

    def __init__(self, path: Path):
        self.path = path
        self.texts: dict[str, str] = {}

    def write(self, text: str, name: str = "rules.yaml") -> Path:
        text = textwrap.dedent(text).lstrip("\n")
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        self.texts[name] = text
        return target

    def file(self, name: str = "rules.yaml") -> str:
        """The path an error names for file `name`."""
        return str(self.path / name)

    def line(self, needle: str, name: str = "rules.yaml", nth: int | None = None) -> int:
        return line_in(self.texts[name], needle, nth)

    def load(self) -> RuleSet:
        return load_rules(self.path)

    def errors(self):
        return check_rules(self.path)

    def template(self, name: str, source: str, tenant: str | None = None) -> Path:
        folder = self.path / "templates" / tenant if tenant else self.path / "templates"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{name}.j2"
        target.write_text(source, encoding="utf-8")
        return target


@pytest.fixture
def rules_dir(tmp_path) -> RuleDirectory:
    path = tmp_path / "rules"
    path.mkdir()
    return RuleDirectory(path)


@pytest.fixture
def load(rules_dir):
    """Write one rule file and load it: `rules = load(yaml_text)`."""

    def write_and_load(text: str, name: str = "rules.yaml") -> RuleSet:
        rules_dir.write(text, name)
        return rules_dir.load()

    return write_and_load


@pytest.fixture
def errors_of(rules_dir):
    """Write one rule file and return every error `check_rules` finds in the directory."""

    def write_and_check(text: str, name: str = "rules.yaml"):
        rules_dir.write(text, name)
        return rules_dir.errors()

    return write_and_check


def single_error(errors, file: str, line: int, *fragments: str):
    """Assert there is exactly one error, at file:line, whose message holds every fragment."""
    assert len(errors) == 1, "expected one error, got:\n" + "\n".join(map(str, errors))
    error = errors[0]
    assert (error.file, error.line) == (file, line), f"error at the wrong place: {error}"
    for fragment in fragments:
        assert fragment in error.message, f"{fragment!r} not in {error.message!r}"
    return error


# Session fixtures: the Bigtable emulator, a MariaDB server and a database on it (store tests), the Flink
# runner once it has shown it can start a mini-cluster (Flink tests), a Kafka broker (Kafka tests).
from store_services import bigtable_emulator, mysql_database, mysql_server  # noqa: E402,F401
from flink_services import flink  # noqa: E402,F401
from kafka_services import kafka_broker  # noqa: E402,F401
from hbase_services import hbase_server  # noqa: E402,F401  (HBase store tests: standalone HBase + Thrift)

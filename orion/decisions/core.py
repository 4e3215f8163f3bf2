"""Deciding what a lead sees in a placement: a pure function of the tenant's compiled
experiences, the lead's state (its durable profile, with the history counters the
audiences read), the request's context and the time. No HTTP, no store, no engine.

For each placement asked for, the answer is the first active experience of that
placement, in (priority, name) order, whose schedule is open and whose audience admits
the visitor: its context conditions (page url, referrer, device, country, local time of
day) and its filters (the campaign filter language). The variant is sticky and needs no
storage: a hash of (tenant, experience, lead id) picks a point in the experience's
weights, so the same lead gets the same arm on every request, on every server, until the
weights change. The control group is an arm like the others; it gets its own content,
or none.

A content snippet (Jinja2) renders in the template sandbox, with budgets of its own
(orion/templates/sandbox.py): a snippet that fails or goes past them fails that
placement, with the reason, never the request. Tokens: `lead.*` (attributes, `lead.id`,
`lead.score`; a missing one is undefined: `{{ lead.first_name | default("there") }}`),
`context.*` (the request's context as sent) and `experience.*` (name, variant, placement).
The HTML it renders is autoescaped. A snippet reads only the tokens it names, so what it
rendered is kept (a bounded number of renders) under the values of those tokens, and
the same values give the kept HTML without rendering again.

A placement's experiences are walked through an index built on first use
(PlacementIndex): a condition on a text field of the context (url, referrer, device,
country) depends on the field's value alone, so for each value seen the index keeps which
experiences it admits, and a request walks only those its context admits on every text
field, each then tested on its schedule, its local time and its filters (those that read
the lead's history last: for a profile not counted under this service's rules that is a
store read, the dearest test, and `all` is the same in any order). Likewise a filter of
an `all` audience on one string attribute of the lead (`lead: {industry: {in: [...]}}`)
depends on the lead's value alone: for each value seen, the index keeps which
experiences it refuses, and leaves them out before the walk. What the walk admits is
what testing every experience in turn admits.

    python -c "from orion.decisions.core import parse_context; print(parse_context({'local_time': '09:30'}, 0))"
"""
from __future__ import annotations

import functools
from bisect import bisect_right as _bisect_right
from hashlib import blake2b as _blake2b
from datetime import datetime, timezone
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
from jinja2.exceptions import SecurityError

from orion.campaigns.flows import lead_tokens
from orion.rules.model import Experience, LeadState, TenantExperiences, Variant
from orion.templates.sandbox import TemplateLimitError, TemplateLimits, TemplateSandbox, rendering

# What a request's context may hold. url, referrer, device and country are text; the
# local time of day comes as `local_time` (HH:MM or HH:MM:SS, the visitor's clock) or is
# worked out from `timezone` (an IANA name such as Europe/Paris) at the request's time.
TEXT_CONTEXT_FIELDS = ("url", "referrer", "device", "country")
CONTEXT_FIELDS = TEXT_CONTEXT_FIELDS + ("local_time", "timezone")
MAX_CONTEXT_TEXT = 4096  # characters of one context value
_CONTEXT_FIELD_SET = frozenset(CONTEXT_FIELDS)
_TEXT_FIELD_SET = frozenset(TEXT_CONTEXT_FIELDS)

# A snippet's budgets: a decision answers in milliseconds, an email may take longer.
SNIPPET_LIMITS = TemplateLimits(max_chars=100_000, max_steps=100_000, max_seconds=0.05, max_range=1_000)

# Why a placement has no content.
NO_MATCH = "no_match"  # no experience of the placement admits the visitor now
UNKNOWN_PLACEMENT = "unknown_placement"
CONTENT_FAILED = "content_failed"


class ContextError(ValueError):
    """A request context that cannot be used; the message says which field and why."""


class Decision(NamedTuple):
    """The answer for one placement. With an experience: its name, the arm (`variant`,
    `control` when it is the control group) and the content (`content_type` json, html
    or none). Without: `error` says why (NO_MATCH, UNKNOWN_PLACEMENT or CONTENT_FAILED)
    and `detail` says more."""

    placement: str
    experience: str | None = None
    variant: str | None = None
    control: bool = False
    content_type: str | None = None
    content: Any = None
    error: str | None = None
    detail: str | None = None

    def to_json_dict(self) -> dict:
        if self.error is not None:
            found = {"placement": self.placement, "experience": None, "content": None, "error": self.error,
                     "detail": self.detail}
            if self.experience is not None:
                found["experience"], found["variant"] = self.experience, self.variant
            return found
        return {"placement": self.placement, "experience": self.experience, "variant": self.variant,
                "control": self.control, "content_type": self.content_type, "content": self.content}


def parse_context(raw: Any, now_ms: int) -> dict:
    """A request's context -> the values the audiences test: the text fields as sent and
    `local_time` as minutes since the visitor's midnight (None when unknown). Raises
    ContextError for anything else: not an object, an unknown field, a value that is not
    text or is too long, a time or a time zone that is not one."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ContextError(f"context must be a JSON object with some of {', '.join(CONTEXT_FIELDS)}")
    if not raw.keys() <= _CONTEXT_FIELD_SET:
        shown = str(next(key for key in raw if key not in _CONTEXT_FIELD_SET))[:80]
        raise ContextError(f"context has an unknown field {shown!r}; it may hold {', '.join(CONTEXT_FIELDS)}")
    values: dict[str, Any] = {}
    for field, value in raw.items():
        if value.__class__ is not str:
            if value is None:
                continue
            if not isinstance(value, str):
                raise ContextError(f"context.{field} must be text, not {_json_kind(value)}")
        if len(value) > MAX_CONTEXT_TEXT:
            raise ContextError(f"context.{field} is {len(value):,} characters; at most {MAX_CONTEXT_TEXT:,}")
        if field in _TEXT_FIELD_SET:
            values[field] = value
    local_time = raw.get("local_time")
    if local_time is not None:
        values["local_time"] = _minutes_of(local_time)  # a str: checked above
    elif raw.get("timezone") is not None:
        zone = _zone(raw["timezone"])
        local = datetime.fromtimestamp(now_ms / 1000, tz=timezone.utc).astimezone(zone)
        values["local_time"] = local.hour * 60 + local.minute + local.second / 60
    return values


@functools.lru_cache(maxsize=4096)
def _minutes_of(text: str) -> float:
    parts = text.split(":")
    if len(parts) in (2, 3) and all(len(p) == 2 and p.isascii() and p.isdigit() for p in parts):
        hours, minutes, seconds = int(parts[0]), int(parts[1]), int(parts[2]) if len(parts) == 3 else 0
        if hours < 24 and minutes < 60 and seconds < 60:
            return hours * 60 + minutes + seconds / 60
    raise ContextError(f"context.local_time {text[:40]!r} is not a time of day; send HH:MM or HH:MM:SS, "
                       "24-hour, like 14:05")


@functools.lru_cache(maxsize=512)
def _zone(name: str) -> ZoneInfo:
    try:
        if not name or len(name) > 64 or name.startswith(("/", ".")) or ".." in name:
            raise ValueError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ContextError(f"context.timezone {name[:64]!r} is not a time zone; send an IANA name such as "
                           "Europe/Paris, or local_time HH:MM") from None


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def assign(tenant: str, experience: Experience, lead_id: str) -> Variant:
    """The lead's arm of the experience: a hash of (tenant, experience, lead) as a point
    in [0, total weight), falling in one arm's share. Sticky, with no storage; a lead's
    arm changes only when the weights or the arms change."""
    return _arm_at(experience, _assignment_hash(tenant, experience), lead_id)


def _assignment_hash(tenant: str, experience: Experience):
    """The hash of what every assignment's key starts with: UTF-8 joins, so the key of
    (tenant, experience, lead) is this prefix then the lead id's bytes. A copy of it fed
    the lead id's bytes hashes the whole key (as blake2b of the key at once does)."""
    return _blake2b(f"{tenant}\x1f{experience.name}\x1f".encode("utf-8", "surrogatepass"), digest_size=8)


def _arm_at(experience: Experience, prefix_hash, lead_id: str) -> Variant:
    return experience.arms[_arm_position(experience, prefix_hash, lead_id)]


def _arm_position(experience: Experience, prefix_hash, lead_id: str) -> int:
    hashed = prefix_hash.copy()
    hashed.update(lead_id.encode("utf-8", "surrogatepass"))
    point = int.from_bytes(hashed.digest(), "big") / 18446744073709551616.0
    position = _bisect_right(experience.cumulative, point * experience.cumulative[-1])
    arms = experience.arms
    if position >= len(arms):  # a point on the very top edge, which float rounding allows
        position = len(arms) - 1
    while arms[position].weight <= 0 and position > 0:  # never an arm switched off (weight 0)
        position -= 1
    return position


def choose(experiences: tuple[Experience, ...], state: LeadState, context: dict, now: int) -> Experience | None:
    """The first experience, in the order given, open now whose audience admits the
    visitor: the context conditions first (cheap, often decisive), then the filters.
    (Experience.scheduled, context_met and filters_met, written out.) decide() asks a
    PlacementIndex, which answers the same with fewer tests."""
    for experience in experiences:
        starting, ending = experience.starting, experience.ending
        if (starting is not None and now < starting) or (ending is not None and now >= ending):
            continue
        for field, test in experience.context:
            if not test(context.get(field), now):
                break
        else:
            if experience.logic_text != "all":
                if experience.filters_met(state, now):
                    return experience
                continue
            for found in experience.filters:
                if not found.test(state, now):
                    break
            else:
                return experience
    return None


# Values of one text field of the context (or of one lead attribute) a PlacementIndex
# keeps the admitted (refused) experiences of, at most; past them, a context value has its
# experiences worked out on every request, and a lead's value prunes nothing.
INDEXED_VALUES = 1024
# Placements whose indexes a PlacementIndexes keeps; past it they are built again.
INDEXED_PLACEMENTS = 4096


class Candidate(NamedTuple):
    """An experience as a PlacementIndex tries it: its schedule, the context conditions
    the index does not answer (local_time), its filters' tests in the order they are run
    (`all`: those that read the store's history last; None: another logic, which
    Experience.filters_met applies), the hash of its assignments' keys' start and, for
    each arm, its Decision when that is the same for every lead (None: a snippet, rendered
    for each)."""

    experience: Experience
    starting: int | None
    ending: int | None
    residual: tuple[tuple[str, Any], ...]
    filters: tuple | None
    prefix_hash: Any  # hashlib's blake2b, fed the start of the key (_assignment_hash)
    decisions: tuple


class _HistoryProbe(dict):
    """An empty history that notes being read: which filters read the store's history."""

    def get(self, key, default=None):
        self.read = True
        return default

    def __getitem__(self, key):
        self.read = True
        raise KeyError(key)

    def __contains__(self, key):
        self.read = True
        return False


def reads_history(test, now: int = 0) -> bool:
    """Whether a filter's test reads the lead's history (a store read when the lead's
    history is counted on first use). Only the order of tests follows from it."""
    probe = _HistoryProbe()
    try:
        test(LeadState(history=probe), now)
    except Exception:  # noqa: BLE001 - a test that fails on an empty lead is tested in its place
        return False
    return getattr(probe, "read", False)


def _candidate(experience: Experience) -> Candidate:
    residual = tuple((field, test) for field, test in experience.context if field not in TEXT_CONTEXT_FIELDS)
    filters = None
    if experience.logic_text == "all":
        filters = tuple(found.test for found in sorted(experience.filters, key=lambda found: reads_history(found.test)))
    return Candidate(experience, experience.starting, experience.ending, residual, filters,
                     _assignment_hash(experience.tenant, experience),
                     tuple(None if arm.kind == "template" else
                           Decision(experience.placement, experience.name, arm.name, arm.control, arm.kind, arm.content)
                           for arm in experience.arms))


class PlacementIndex:
    """A placement's experiences, in order, indexed by the text fields of the context
    their conditions test. A condition on url, referrer, device or country depends on
    the value alone (the text operators do not read the time), so for each value of such
    a field seen, the index keeps the experiences whose condition on it admits the value
    (an experience without one admits every value), as a bit mask, for at most
    INDEXED_VALUES values a field; the same for the lead's values of the string
    attributes that `all` audiences test alone (Filter.attribute), as the experiences
    they refuse. `choose` walks only the experiences every field admits and no attribute
    refuses, in order, and tests the rest of their audience."""

    __slots__ = ("candidates", "fields", "everyone", "_admitted", "_by_field", "_by_attribute")

    def __init__(self, experiences: tuple[Experience, ...]):
        self.candidates = tuple(_candidate(experience) for experience in experiences)
        fields: dict[str, None] = {}
        for experience in experiences:
            for field, _ in experience.context:
                if field in TEXT_CONTEXT_FIELDS:
                    fields[field] = None
        self.fields = tuple(fields)
        self.everyone = (1 << len(experiences)) - 1
        self._admitted: dict[str, dict] = {field: {} for field in self.fields}
        self._by_field = tuple(self._admitted.items())
        # The filters of `all` audiences that test one string attribute of the lead: for
        # each such attribute, (name, the masks kept by value, ((bit, predicate), ...)).
        tests: dict[str, list] = {}
        for number, candidate in enumerate(self.candidates):
            if candidate.filters is not None:
                for found in candidate.experience.filters:
                    if found.attribute is not None:
                        name, predicate = found.attribute
                        tests.setdefault(name, []).append((1 << number, predicate))
        self._by_attribute = tuple((name, {}, tuple(found)) for name, found in tests.items())

    def admitted(self, field: str, value, now: int) -> int:
        """The mask of the experiences whose conditions on `field` admit `value`."""
        kept = self._admitted[field]
        mask = kept.get(value)
        if mask is None:
            mask = 0
            for number, candidate in enumerate(self.candidates):
                for named, test in candidate.experience.context:
                    if named == field and not test(value, now):
                        break
                else:
                    mask |= 1 << number
            if len(kept) < INDEXED_VALUES:
                kept[value] = mask
        return mask

    def _pruned(self, mask: int, attributes: dict, now: int) -> int:
        """`mask` less the experiences whose filter on a string attribute of the lead
        refuses the lead's value. Only a cheaper way to the same answer: the walk tests
        those filters again. A value that is not text or null, or one past the
        INDEXED_VALUES an attribute keeps, prunes nothing."""
        for name, kept, tests in self._by_attribute:
            value = attributes.get(name)
            if value is not None and value.__class__ is not str:
                continue
            refused = kept.get(value)
            if refused is None:
                if len(kept) >= INDEXED_VALUES:
                    continue
                refused = 0
                for bit, predicate in tests:
                    if not predicate(value, now):
                        refused |= bit
                kept[value] = refused
            mask &= ~refused
        return mask

    def choose(self, state: LeadState, context: dict, now: int) -> Candidate | None:
        """What choose() answers for these experiences, as a Candidate."""
        mask = self.everyone
        for field, kept in self._by_field:
            value = context.get(field)
            found = kept.get(value)
            mask &= found if found is not None else self.admitted(field, value, now)
        if mask and self._by_attribute:
            mask = self._pruned(mask, state.attributes, now)
        candidates = self.candidates
        while mask:
            lowest = mask & -mask
            mask ^= lowest
            candidate = candidates[lowest.bit_length() - 1]
            starting, ending = candidate.starting, candidate.ending
            if (starting is not None and now < starting) or (ending is not None and now >= ending):
                continue
            for field, test in candidate.residual:
                if not test(context.get(field), now):
                    break
            else:
                filters = candidate.filters
                if filters is None:
                    if candidate.experience.filters_met(state, now):
                        return candidate
                    continue
                for test in filters:
                    if not test(state, now):
                        break
                else:
                    return candidate
        return None


class PlacementIndexes:
    """The PlacementIndex of each placement's experiences, built on first use and kept
    while those experiences are the ones decided from (for at most INDEXED_PLACEMENTS)."""

    def __init__(self, entries: int = INDEXED_PLACEMENTS):
        self.entries = entries
        self._indexes: dict[int, tuple[tuple, PlacementIndex]] = {}

    def index(self, experiences: tuple[Experience, ...]) -> PlacementIndex:
        found = self._indexes.get(id(experiences))
        if found is not None and found[0] is experiences:
            return found[1]
        if len(self._indexes) >= self.entries:
            self._indexes.clear()
        index = PlacementIndex(experiences)
        # the experiences are kept with their index, so their id names no other tuple
        self._indexes[id(experiences)] = (experiences, index)
        return index


_DEFAULT_INDEXES = PlacementIndexes()


# Renders kept by a SnippetRenderer at most; past it the oldest tenth is dropped.
RENDERED_ENTRIES = 10_000
_MISSING = object()  # a token a snippet names that the lead or the context does not have
_TOKEN_NAMES = ("lead", "context", "experience")


class Snippet(NamedTuple):
    """A compiled snippet and what it reads: `inputs`, the (token, name) pairs it looks up
    (`lead.first_name`, `context["device"]`), or None when its HTML may depend on more
    than those (then it is rendered every time)."""

    template: jinja2.Template
    inputs: tuple[tuple[str, str], ...] | None
    number: int  # the snippet's place among the renderer's, in the keys of its renders
    # The template's globals as one plain dict, made once: Jinja's new_context copies them
    # out of a ChainMap on every render, twice.
    globals: dict


def snippet_inputs(environment: jinja2.Environment, source: str) -> tuple[tuple[str, str], ...] | None:
    """The (token, name) pairs a snippet reads, when `lead` and `context` appear only as
    `token.name` or `token["name"]` with a constant name that is not a dict method (so a
    look-up gives that one value), the snippet assigns none of the token names and uses
    nothing random (the `random` filter, `lipsum`); None otherwise. `experience` may be
    used in any way: it is the same for every render of a snippet."""
    from jinja2 import nodes

    found: set[tuple[str, str]] = set()

    def visit(node, parent) -> bool:
        if isinstance(node, nodes.Name):
            if node.name == "lipsum" or (node.name in _TOKEN_NAMES and node.ctx != "load"):
                return False
            if node.name in ("lead", "context"):
                if isinstance(parent, nodes.Getattr) and parent.node is node and not hasattr(dict, parent.attr):
                    found.add((node.name, parent.attr))
                elif isinstance(parent, nodes.Getitem) and parent.node is node and \
                        isinstance(parent.arg, nodes.Const) and isinstance(parent.arg.value, str):
                    found.add((node.name, parent.arg.value))
                else:
                    return False
        elif isinstance(node, nodes.Filter) and node.name == "random":
            return False
        elif isinstance(node, nodes.Const) and node.value == "random":  # map("random") and the like
            return False
        return all(visit(child, node) for child in node.iter_child_nodes())

    return tuple(sorted(found)) if visit(environment.parse(source), None) else None


class SnippetRenderer:
    """Renders content snippets in the sandbox, each compiled once (per experience and
    arm) on first use, and keeps what they render under the values of the tokens they
    read (see snippet_inputs), for at most `entries` renders. `render` raises
    ContentFailed with a dead-letter reason; a failed render is not kept."""

    def __init__(self, limits: TemplateLimits = SNIPPET_LIMITS, entries: int = RENDERED_ENTRIES):
        self.limits = limits
        self.entries = entries
        self.environment = TemplateSandbox(autoescape=True)
        self._compiled: dict[tuple, Snippet] = {}
        self._by_arm: dict[int, tuple[Variant, Experience, Snippet]] = {}  # the same, by the arm's id
        self._rendered: dict[tuple, str] = {}
        self.renders = 0  # renders run (not answered from what was kept)

    def _snippet(self, experience: Experience, arm: Variant) -> Snippet:
        by_arm = self._by_arm.get(id(arm))
        if by_arm is not None and by_arm[0] is arm and by_arm[1] is experience:
            return by_arm[2]
        key = (experience.tenant, experience.name, experience.placement, arm.name, arm.content)
        snippet = self._compiled.get(key)
        if snippet is None:
            template = self.environment.from_string(arm.content)
            snippet = self._compiled[key] = Snippet(template, snippet_inputs(self.environment, arm.content),
                                                    len(self._compiled), dict(template.globals))
        if len(self._by_arm) >= RENDERED_ENTRIES:
            self._by_arm.clear()
        # the arm and the experience are kept with it, so the arm's id names no other arm
        self._by_arm[id(arm)] = (arm, experience, snippet)
        return snippet

    def render(self, experience: Experience, arm: Variant, lead_id: str, state: LeadState, raw_context: dict) -> str:
        try:
            snippet = self._snippet(experience, arm)
            kept = None
            if snippet.inputs is not None:
                kept = self._key(snippet, lead_id, state, raw_context)
                if kept is not None:
                    found = self._rendered.get(kept)
                    if found is not None:
                        return found
            template = snippet.template
            # What template.new_context(tokens) makes: the globals, then the tokens.
            parent = snippet.globals.copy()
            parent["lead"] = lead_tokens(lead_id, state)
            parent["context"] = raw_context
            parent["experience"] = {"name": experience.name, "variant": arm.name, "placement": experience.placement}
            environment = self.environment
            self.renders += 1
            max_chars = self.limits.max_chars
            with rendering(self.limits) as budget:
                pieces, size = [], 0
                for piece in template.root_render_func(environment.context_class(
                        environment, parent, template.name, template.blocks, globals=snippet.globals)):
                    size += len(piece)
                    if size > max_chars:
                        budget.chars(size, "the content")
                    budget.tick()
                    pieces.append(piece)
            html = "".join(pieces)
        except Exception as err:  # noqa: BLE001 - a snippet is tenant code: whatever it raises fails this placement only
            raise ContentFailed(_reason(err), f"the content of {experience.name!r} ({arm.name}) failed: "
                                f"{type(err).__name__}: {str(err)[:300]}") from None
        if kept is not None:
            rendered = self._rendered
            if len(rendered) >= self.entries:
                # The oldest tenth at once (insertion order): a full map costs a deletion
                # now and then, not one on every render.
                for key in list(rendered)[: max(1, self.entries // 10)]:
                    del rendered[key]
            rendered[kept] = html
        return html

    @staticmethod
    def _key(snippet: Snippet, lead_id: str, state: LeadState, raw_context: dict) -> tuple | None:
        """The key of a render: the snippet and the values of the tokens it reads (as
        lead_tokens gives them: `id` and `score` over attributes of those names), each with
        its type (True and 1 render differently), floats by their repr (-0.0 and 0.0 too);
        None when a value is not plain text, number, boolean or null (a list, an object):
        such a render is not kept."""
        values = [snippet.number]
        attributes = state.attributes
        for token, name in snippet.inputs:
            if token == "lead":
                value = lead_id if name == "id" else state.score if name == "score" else attributes.get(name, _MISSING)
            else:
                value = raw_context.get(name, _MISSING)
            kind = value.__class__
            if kind is str or kind is int or kind is bool or value is None or value is _MISSING:
                values.append((kind, value))
            elif kind is float:
                values.append((kind, repr(value)))
            else:
                return None
        return tuple(values)


class ContentFailed(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _reason(err: BaseException) -> str:
    if isinstance(err, SecurityError):
        return "template_unsafe"
    if isinstance(err, TemplateLimitError):
        return err.reason
    return "template_failed"


def decide(experiences: TenantExperiences | None, renderer: SnippetRenderer, lead_id: str, state: LeadState,
           placements: list[str], context: dict, raw_context: dict, now: int,
           indexes: PlacementIndexes | None = None) -> list[Decision]:
    """One Decision per placement, in the order asked (each placement once). `indexes`:
    the caller's PlacementIndexes (default: one this module keeps)."""
    decisions = []
    by_placement = experiences.by_placement if experiences is not None else {}
    if indexes is None:
        indexes = _DEFAULT_INDEXES
    for placement in (dict.fromkeys(placements) if len(placements) > 1 else placements):
        candidates = by_placement.get(placement)
        if candidates is None:
            known = ", ".join(sorted(by_placement)[:20]) or "none"
            decisions.append(Decision(placement, error=UNKNOWN_PLACEMENT,
                                      detail=f"no experience has placement {placement[:80]!r} (this tenant's "
                                      f"placements: {known})"))
            continue
        found = indexes.index(candidates).choose(state, context, now)
        if found is None:
            decisions.append(Decision(placement, error=NO_MATCH,
                                      detail="no experience of this placement is for this visitor now"))
            continue
        chosen = found.experience
        position = _arm_position(chosen, found.prefix_hash, lead_id)
        same = found.decisions[position]
        if same is not None:
            decisions.append(same)
            continue
        arm = chosen.arms[position]
        try:
            content = renderer.render(chosen, arm, lead_id, state, raw_context)
        except ContentFailed as failed:
            decisions.append(Decision(placement, chosen.name, arm.name, arm.control, error=CONTENT_FAILED,
                                      detail=f"{failed.reason}: {failed.detail}"))
            continue
        decisions.append(Decision(placement, chosen.name, arm.name, arm.control, "html", content))
    return decisions

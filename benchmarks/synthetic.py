"""Deterministic synthetic data for the benchmarks: activity events of four tenants and a
rules directory with any number of active trigger campaigns.

Events cover every built-in activity type, each with the attributes its schema requires
(and some optional ones). Leads are Zipf-skewed: a few leads are very active, most are
seen once or twice; page, form, email and app-event popularity is Zipf-skewed too.
Each tenant has its own profile (B2B software, retail app, connected devices, media), so
the activity-type mix differs by tenant.

Campaigns follow the mix marketers actually build: most triggers name exact values of
the type's selective attribute (`is` or `in` on url, form, email, list, campaign, event),
some use starts_with / contains / matches or numeric conditions, some have smart-list
filters (score, lead attributes, list membership, activity history) and the
qualification varies (once, every_time, once_every). Campaign i is drawn from its own
seeded generator, so the 10-campaign rule set is the first 10 campaigns of the
1,000-campaign one, and the events do not depend on the number of campaigns at all.

    .venv/bin/python -m benchmarks.synthetic --events 20000 --campaigns 1000 --out benchmarks/data/demo
    .venv/bin/orion evaluate --rules benchmarks/data/demo/rules --events benchmarks/data/demo/events.jsonl
"""
from __future__ import annotations

import argparse
import bisect
import itertools
import json
import random
import re
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import yaml

from orion.activities import BUILTIN_TYPES, MS_PER_DAY, MS_PER_UNIT, format_timestamp, parse_timestamp

DEFAULT_SEED = 20261122
START_MS = parse_timestamp("2026-11-01T00:00:00Z")
# Events are spread evenly over this span, so `once_every` and `in_past` windows of a
# day to a month are exercised by the leads that come back.
EVENT_SPAN_MS = 21 * MS_PER_UNIT["days"]

# One lead per this many events (66,666 leads drawn for 200,000 events): with the Zipf
# skew below, about 40,000 leads show up, almost half of them once, the busiest 1% carry
# almost 40% of the events and the busiest lead of each tenant about 6% of its events.
EVENTS_PER_LEAD = 3
LEAD_SKEW = 0.9
VALUE_SKEW = 1.0  # page, form, email ... popularity among events
# How strongly marketers prefer popular values when they pick a trigger's value: barely.
# A few campaigns watch the pricing page; most watch one webinar's page, one form, one
# nurture email. Together with the catalog sizes and the filter mix this sets the
# qualified rate, tuned to about 5% of events at 1,000 campaigns.
TRIGGER_VALUE_SKEW = 0.1

# Long-tail values per tenant, on top of a few headline ones (home page, "Contact Us",
# "Welcome", first_open, heartbeat ...). With the skews above they set how many events
# the campaigns' exact triggers can hit.
CATALOG_SIZES = {"url": 4000, "form": 300, "email": 1200, "list": 80, "campaign": 100,
                 "app_event": 1500, "device_event": 600}

CAMPAIGNS_PER_RULE_FILE = 500
GENERATED_MARKER = ".synthetic-rules"  # lets write_rules replace only what it wrote


class _RuleDumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):
    """Writes shared sub-structures (a reused history filter) in full, never as YAML
    anchors and aliases, so each generated campaign reads like a hand-written one."""

    def ignore_aliases(self, data) -> bool:
        return True


TEMPLATES = ("welcome", "newsletter", "follow_up")  # shipped with Orion
CUSTOM_LEAD_ATTRIBUTES = {"industry": "string", "employees": "number", "plan": "string"}
INDUSTRIES = ("Retail", "Finance", "Health", "Software", "Manufacturing", "Media", "Energy")
COUNTRIES = ("US", "CA", "GB", "DE", "FR", "NO", "JP", "BR", "IN", "AU")
PLANS = ("free", "starter", "pro", "enterprise")
LEAD_SOURCES = ("Web", "Trade show", "Partner", "Paid search", "Referral")
URL_SECTIONS = ("pricing", "products", "solutions", "blog", "docs", "events", "resources",
                "support", "careers", "partners", "customers", "about")


# --- tenants ------------------------------------------------------------------------


class TenantProfile(NamedTuple):
    name: str
    share: float  # of all events, and of all campaigns
    activity_mix: dict[str, float]  # activity type -> share of the tenant's events


# Types no tracked source sends: a batch send's email_sent activities come from
# `orion campaign run --activities-out`, not from the web, email or devices.
NOT_TRACKED = frozenset({"email_sent"})


def _mix(**weights: float) -> dict[str, float]:
    missing = set(BUILTIN_TYPES) - NOT_TRACKED - set(weights)
    if missing:
        raise ValueError(f"activity mix lacks {sorted(missing)}")
    total = sum(weights.values())
    return {name: weight / total for name, weight in weights.items()}


TENANTS = (
    TenantProfile("northwind", 0.40, _mix(  # B2B software: web and email heavy
        visit_web_page=42, fill_out_form=4, click_link_in_email=5, open_email=10,
        email_delivered=14, email_bounced=1, unsubscribe_email=0.4, data_value_changes=3,
        change_score=5, added_to_list=2, removed_from_list=0.6, campaign_requested=1,
        mobile_app_event=2, device_event=1)),
    TenantProfile("contoso", 0.30, _mix(  # retailer with a shopping app
        visit_web_page=25, fill_out_form=2, click_link_in_email=4, open_email=8,
        email_delivered=10, email_bounced=1, unsubscribe_email=0.5, data_value_changes=2,
        change_score=3, added_to_list=2, removed_from_list=0.5, campaign_requested=0.5,
        mobile_app_event=40, device_event=1)),
    TenantProfile("fabrikam", 0.20, _mix(  # connected thermostats and cameras
        visit_web_page=15, fill_out_form=2, click_link_in_email=2, open_email=5,
        email_delivered=6, email_bounced=0.5, unsubscribe_email=0.3, data_value_changes=4,
        change_score=3, added_to_list=1, removed_from_list=0.3, campaign_requested=0.3,
        mobile_app_event=15, device_event=45)),
    TenantProfile("tailspin", 0.10, _mix(  # publisher: newsletters first
        visit_web_page=30, fill_out_form=3, click_link_in_email=10, open_email=20,
        email_delivered=25, email_bounced=2, unsubscribe_email=1, data_value_changes=2,
        change_score=2, added_to_list=3, removed_from_list=1, campaign_requested=0.5,
        mobile_app_event=1, device_event=0.2)),
)

# How likely a marketer is to trigger on a type, relative to how often the type occurs:
# form fills and clicks are what campaigns are built on; deliveries rarely are.
TRIGGER_INTEREST = {
    "visit_web_page": 1.0, "fill_out_form": 8.0, "click_link_in_email": 3.0,
    "open_email": 1.0, "email_delivered": 0.1, "email_bounced": 3.0,
    "unsubscribe_email": 4.0, "data_value_changes": 1.0, "change_score": 0.5,
    "added_to_list": 4.0, "removed_from_list": 3.0, "campaign_requested": 6.0,
    "mobile_app_event": 0.6, "device_event": 0.4,
}


class WeightedChoice:
    """Draws values with fixed relative weights."""

    def __init__(self, values: list, weights: Iterable[float]):
        self.values = values
        self.cum_weights = list(itertools.accumulate(weights))
        self._total = self.cum_weights[-1]
        self._last = len(values) - 1

    def draw(self, rng: random.Random):
        # random.choices does the same bisection at three times the cost of one draw, and
        # generating 200,000 events draws several hundred thousand values.
        return self.values[min(bisect.bisect(self.cum_weights, rng.random() * self._total), self._last)]

    def draw_distinct(self, rng: random.Random, count: int) -> list:
        found: dict = {}
        while len(found) < min(count, len(self.values)):
            found[self.draw(rng)] = None
        return list(found)


def zipf_choice(values: list, skew: float) -> WeightedChoice:
    """Zipf popularity: the value of rank r (from 1) has weight 1 / r**skew."""
    return WeightedChoice(values, (1.0 / rank ** skew for rank in range(1, len(values) + 1)))


class TenantCatalog:
    """A tenant's pages, forms, emails, lists, app and device events: the values its
    activities carry and its campaigns watch, each with event and trigger popularity."""

    def __init__(self, name: str, seed: int):
        rng = random.Random(f"{seed}:catalog:{name}")
        host = f"https://www.{name}.example"
        urls = [f"{host}/", f"{host}/pricing", f"{host}/contact", f"{host}/signup"]
        urls += [f"{host}/{rng.choice(URL_SECTIONS)}/{_slug(rng)}-{n}" for n in range(CATALOG_SIZES["url"])]
        forms = ["Contact Us", "Signup", "Demo Request", "Newsletter Signup", "Free Trial"]
        forms += _numbered(rng, CATALOG_SIZES["form"], "{} {}", (
            "Webinar Registration", "Whitepaper Download", "Event RSVP", "Survey", "Quote Request"))
        emails = ["Welcome", "Newsletter", "Follow up", "Password reset", "Receipt"]
        emails += _numbered(rng, CATALOG_SIZES["email"], "{} {}", (
            "Newsletter issue", "Webinar invite", "Nurture step", "Promo", "Product update", "Renewal reminder"))
        lists = ["newsletter", "customers", "hot_leads", "app_users", "vip", "partners"]
        lists += _numbered(rng, CATALOG_SIZES["list"], "{}_{}", ("webinar", "event", "segment", "import", "nurture"))
        requested = _numbered(rng, CATALOG_SIZES["campaign"], "{} {}", ("Sales Insight", "CRM sync", "Partner referral"))
        app_events = ["first_open", "purchase", "cart_abandoned", "browse", "search", "wishlist_add"]
        app_events += _numbered(rng, CATALOG_SIZES["app_event"], "{}_{}", (
            "screen_view", "product_view", "tap", "level_complete", "share"))
        device_events = ["heartbeat", "filter_low", "battery_low", "offline", "firmware_updated", "retired"]
        device_events += _numbered(rng, CATALOG_SIZES["device_event"], "{}_{:04d}", (
            "error", "alert", "mode_change", "sensor_fault"))
        attributes = ["country", "industry", "employees", "plan", "title", "city", "lead_source", "company"]

        self.name = name
        self.host = host
        self.lists = lists
        self.devices = _numbered(rng, 40, "{}-{}", ("thermo", "camera", "doorbell", "hub"))
        # Popularity order is the catalog order for the headline values (home, pricing,
        # Contact Us, Welcome ...) and random for the long tail.
        self.values = {
            "url": _popularity_order(rng, urls, 4),
            "form": _popularity_order(rng, forms, 5),
            "email": _popularity_order(rng, emails, 5),
            "list": _popularity_order(rng, lists, 6),
            "campaign": requested,
            "app_event": _popularity_order(rng, app_events, 6),
            "device_event": _popularity_order(rng, device_events, 6),
            "attribute": attributes,
        }
        self.for_events = {kind: zipf_choice(values, VALUE_SKEW) for kind, values in self.values.items()}
        self.for_triggers = {kind: zipf_choice(values, TRIGGER_VALUE_SKEW) for kind, values in self.values.items()}


def _numbered(rng: random.Random, count: int, pattern: str, kinds: tuple) -> list[str]:
    """`count` names like "Webinar invite 17": a random kind and a unique number each."""
    return [pattern.format(rng.choice(kinds), n) for n in range(count)]


def _slug(rng: random.Random) -> str:
    words = ("streaming", "analytics", "guide", "launch", "summit", "case-study", "webinar",
             "roadmap", "security", "pricing", "integration", "mobile", "retail", "energy")
    return "-".join(rng.sample(words, 2))


def _popularity_order(rng: random.Random, values: list, headline: int) -> list:
    tail = values[headline:]
    rng.shuffle(tail)
    return values[:headline] + tail


def catalogs(seed: int) -> dict[str, TenantCatalog]:
    return {profile.name: TenantCatalog(profile.name, seed) for profile in TENANTS}


# Which catalog each activity type's selective attribute draws from.
SELECTIVE_CATALOG = {
    "visit_web_page": "url", "fill_out_form": "form", "click_link_in_email": "email",
    "open_email": "email", "email_delivered": "email", "email_bounced": "email",
    "unsubscribe_email": "email", "data_value_changes": "attribute", "added_to_list": "list",
    "removed_from_list": "list", "campaign_requested": "campaign", "mobile_app_event": "app_event",
    "device_event": "device_event",
}


# --- events ---------------------------------------------------------------------------


def _lead_value(attribute: str, rng: random.Random):
    if attribute == "country":
        return rng.choice(COUNTRIES)
    if attribute == "industry":
        return rng.choice(INDUSTRIES)
    if attribute == "employees":
        return rng.choice((5, 20, 80, 250, 1200, 9000))
    if attribute == "plan":
        return rng.choice(PLANS)
    if attribute == "lead_source":
        return rng.choice(LEAD_SOURCES)
    return f"{attribute} {rng.randrange(500)}"


def _event_attributes(type_name: str, catalog: TenantCatalog, rng: random.Random, lead_id: str) -> dict:
    pick = catalog.for_events
    if type_name == "visit_web_page":
        attributes = {"url": pick["url"].draw(rng)}
        roll = rng.random()
        if roll < 0.3:
            attributes["referrer"] = rng.choice(("https://search.example/?q=orion", "https://social.example/post",
                                                 "https://partner.example/"))
        if roll > 0.85:
            attributes["query"] = f"utm_campaign=spring&utm_source={rng.choice(('ads', 'mail', 'social'))}"
        return attributes
    if type_name == "fill_out_form":
        return {"form": pick["form"].draw(rng),
                "fields": {"email": f"{lead_id.lower()}@mail.example", "country": rng.choice(COUNTRIES),
                           "employees": rng.choice((5, 50, 500, 5000))}}
    if type_name == "click_link_in_email":
        return {"email": pick["email"].draw(rng), "link": pick["url"].draw(rng)}
    if type_name in ("open_email", "email_delivered", "unsubscribe_email"):
        return {"email": pick["email"].draw(rng)}
    if type_name == "email_bounced":
        return {"email": pick["email"].draw(rng), "category": "hard" if rng.random() < 0.3 else "soft"}
    if type_name == "data_value_changes":
        attribute = pick["attribute"].draw(rng)
        return {"attribute": attribute, "old_value": None, "new_value": _lead_value(attribute, rng)}
    if type_name == "change_score":
        return {"delta": rng.choice((1, 2, 5, 5, 10, 10, 15, 20, 25, -5, -10))}
    if type_name in ("added_to_list", "removed_from_list"):
        return {"list": pick["list"].draw(rng)}
    if type_name == "campaign_requested":
        return {"campaign": pick["campaign"].draw(rng), "source": rng.choice(("Sales Insight", "Salesforce", "API"))}
    if type_name == "mobile_app_event":
        event = pick["app_event"].draw(rng)
        properties: dict = {"screen": f"s{rng.randrange(40)}"}
        if event in ("purchase", "cart_abandoned"):
            properties["value"] = rng.choice((9, 25, 49, 75, 120, 300))
        return {"app": f"{catalog.name}-app", "event": event, "properties": properties}
    if type_name == "device_event":
        return {"device": rng.choice(catalog.devices), "event": pick["device_event"].draw(rng),
                "properties": {"level": rng.randrange(101), "firmware": f"2.{rng.randrange(9)}"}}
    raise ValueError(f"no attribute generator for activity type {type_name!r}")


def generate_events(count: int, seed: int = DEFAULT_SEED) -> Iterator[dict]:
    """`count` activities as JSON-ready dicts (RFC 3339 `occurred_at`), in event-time
    order, so each lead's activities are in order too."""
    rng = random.Random(f"{seed}:events")
    tenant_catalogs = catalogs(seed)
    leads = max(len(TENANTS), count // EVENTS_PER_LEAD)
    lead_choice = {
        p.name: zipf_choice([f"L{n:07d}" for n in range(1, max(1, round(leads * p.share)) + 1)], LEAD_SKEW)
        for p in TENANTS
    }
    type_choice = {p.name: WeightedChoice(list(p.activity_mix), p.activity_mix.values()) for p in TENANTS}
    tenant_names = [p.name for p in TENANTS]
    tenant_of_event = rng.choices(tenant_names, weights=[p.share for p in TENANTS], k=count)
    step_ms = EVENT_SPAN_MS / max(count, 1)
    for n, tenant in enumerate(tenant_of_event):
        type_name = type_choice[tenant].draw(rng)
        lead_id = lead_choice[tenant].draw(rng)
        yield {
            "event_id": f"{tenant[:2]}-{n:09d}",
            "tenant": tenant,
            "lead_id": lead_id,
            "type": type_name,
            "occurred_at": rfc3339(START_MS + int(n * step_ms)),
            "attributes": _event_attributes(type_name, tenant_catalogs[tenant], rng, lead_id),
        }


def event_lines(count: int, seed: int = DEFAULT_SEED) -> list[str]:
    """The events as JSON lines, the form a source delivers them in."""
    encode = json.JSONEncoder(separators=(",", ":")).encode
    return [encode(event) for event in generate_events(count, seed)]


_DATE_TEXT: dict[int, str] = {}


def rfc3339(ms: int) -> str:
    """What `orion.activities.format_timestamp` writes, without a datetime per call."""
    day, in_day = divmod(ms, MS_PER_DAY)
    date = _DATE_TEXT.get(day)
    if date is None:
        date = _DATE_TEXT[day] = format_timestamp(day * MS_PER_DAY)[:10]
    hours, in_hour = divmod(in_day, 3_600_000)
    minutes, in_minute = divmod(in_hour, 60_000)
    seconds, millis = divmod(in_minute, 1000)
    return f"{date}T{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}Z"


# --- rules ----------------------------------------------------------------------------


class RulesManifest(NamedTuple):
    """What `write_rules` wrote, for the report."""

    directory: Path
    active_trigger_campaigns: int
    other_campaigns: int  # inactive and batch campaigns, never matched
    files: int
    trigger_kinds: Counter  # exact / pattern / numeric / type_only
    filtered_campaigns: int
    qualification: Counter


def _campaign_tenant(rng: random.Random) -> TenantProfile:
    return rng.choices(TENANTS, weights=[p.share for p in TENANTS])[0]


def _trigger_type(rng: random.Random, profile: TenantProfile) -> str:
    return WeightedChoice(list(profile.activity_mix),
                          [share * TRIGGER_INTEREST[t] for t, share in profile.activity_mix.items()]).draw(rng)


# Share of triggers by kind; what is left after these is exact `is` / `in` on the
# selective attribute (the index's fast path).
PATTERN_SHARE = 0.07   # starts_with / contains / matches on the selective attribute
NUMERIC_SHARE = 0.04   # change_score deltas and numeric properties with no exact value
TYPE_ONLY_SHARE = 0.02  # "any unsubscribe", "any form fill"
EXACT_IN_SHARE = 0.18  # of the exact triggers, `in` a few values rather than `is` one
EXACT_RESIDUAL_SHARE = 0.15  # of the exact triggers, one more condition on another attribute


def _exact_residual(type_name: str, catalog: TenantCatalog, rng: random.Random,
                    where_attribute: str | None = None) -> dict:
    if type_name == "visit_web_page":
        return {"referrer": {"contains": rng.choice(("search", "social", "partner"))}}
    if type_name == "fill_out_form":
        return {"fields.country": {"in": rng.sample(COUNTRIES, 3)}}
    if type_name == "click_link_in_email":
        return {"link": {"contains": f"/{rng.choice(URL_SECTIONS)}/"}}
    if type_name == "email_bounced":
        return {"category": {"is": "hard"}}
    if type_name == "data_value_changes":
        # "country changed to one of ...": a data-value trigger nearly always names values.
        attribute = where_attribute if where_attribute is not None else "country"
        return {"new_value": {"in": list(dict.fromkeys(_lead_value(attribute, rng) for _ in range(2)))}}
    if type_name == "campaign_requested":
        return {"source": {"is": "Sales Insight"}}
    if type_name == "mobile_app_event":
        return {"properties.value": {"ge": rng.choice((25, 50, 100))}}
    if type_name == "device_event":
        return {"properties.level": {"lt": rng.choice((10, 20, 30))}}
    return {}


def _pattern_condition(type_name: str, catalog: TenantCatalog, rng: random.Random) -> dict:
    """A starts_with / contains / matches condition on the selective attribute. Mostly
    narrow (a page family, one webinar series), sometimes a whole site section."""
    selective = BUILTIN_TYPES[type_name].indexed_by
    example = catalog.for_triggers[SELECTIVE_CATALOG[type_name]].draw(rng)
    roll = rng.random()
    if type_name == "visit_web_page":
        section = rng.choice(URL_SECTIONS)
        if roll < 0.03:
            return {"url": {"starts_with": f"{catalog.host}/{section}/"}}  # "any product page"
        page = example.rstrip("/").rsplit("/", 1)[-1]
        slug = page.rsplit("-", 1)[0]
        if roll < 0.55:
            return {"url": {"starts_with": example}}
        if roll < 0.85:
            return {"url": {"contains": f"/{slug}-{page.rsplit('-', 1)[-1][:2]}"}}
        return {"url": {"matches": rf"/{re.escape(slug)}-1\d\d$"}}
    # "Webinar invite 123" -> stem "Webinar invite 12", which starts 12 and 120..129 too.
    stem = re.sub(r"\d$", "", example) if re.search(r"\d\d$", example) else example
    if roll < 0.5:
        return {selective: {"starts_with": stem}}
    if roll < 0.85:
        return {selective: {"contains": stem}}
    return {selective: {"matches": rf"(?i)^{re.escape(stem)}\d?$"}}


# Types a campaign may trigger on with no condition at all ("any unsubscribe"): the rare
# ones. Nobody triggers on every page view or every delivery.
TYPE_ONLY_TYPES = frozenset({"fill_out_form", "email_bounced", "unsubscribe_email", "added_to_list",
                             "removed_from_list", "campaign_requested", "data_value_changes"})


def _trigger(type_name: str, catalog: TenantCatalog, rng: random.Random) -> tuple[dict, str]:
    """One trigger of `type_name` and its kind (exact, pattern, numeric, type_only)."""
    selective = BUILTIN_TYPES[type_name].indexed_by
    if selective is None:
        # change_score has no selective attribute: its triggers are numeric conditions.
        return {"activity": type_name, "where": {"delta": {"ge": rng.choice((20, 25, 50))}}}, "numeric"
    roll = rng.random()
    if roll < TYPE_ONLY_SHARE and type_name in TYPE_ONLY_TYPES:
        return {"activity": type_name}, "type_only"
    roll -= TYPE_ONLY_SHARE
    if roll < PATTERN_SHARE:
        return {"activity": type_name, "where": _pattern_condition(type_name, catalog, rng)}, "pattern"
    roll -= PATTERN_SHARE
    if roll < NUMERIC_SHARE and type_name in ("mobile_app_event", "device_event"):
        where = ({"properties.value": {"ge": rng.choice((100, 200))}} if type_name == "mobile_app_event"
                 else {"properties.level": {"lt": rng.choice((2, 3))}})
        return {"activity": type_name, "where": where}, "numeric"
    values = catalog.for_triggers[SELECTIVE_CATALOG[type_name]]
    if rng.random() < EXACT_IN_SHARE:
        where: dict = {selective: {"in": values.draw_distinct(rng, rng.randint(2, 4))}}
    else:
        where = {selective: {"is": values.draw(rng)}}
    if type_name == "data_value_changes":
        where.update(_exact_residual(type_name, catalog, rng, where[selective].get("is")))
    elif rng.random() < EXACT_RESIDUAL_SHARE:
        where.update(_exact_residual(type_name, catalog, rng))
    return {"activity": type_name, "where": where}, "exact"


# Smart-list filter kinds and how often marketers use them.
FILTER_KIND_WEIGHTS = {"not_unsubscribed": 15, "score": 20, "lead_attribute": 20, "member_of_list": 15,
                       "not_member_of_list": 10, "activity_history": 20}


def _filters(count: int, catalog: TenantCatalog, rng: random.Random, history_patterns: list[dict]) -> list[dict]:
    """`count` filters of different kinds (nobody writes "not unsubscribed" twice)."""
    kinds = WeightedChoice(list(FILTER_KIND_WEIGHTS), FILTER_KIND_WEIGHTS.values()).draw_distinct(rng, count)
    return [_filter(kind, catalog, rng, history_patterns) for kind in kinds]


def _filter(kind: str, catalog: TenantCatalog, rng: random.Random, history_patterns: list[dict]) -> dict:
    if kind == "not_unsubscribed":
        return {"lead": {"unsubscribed": {"is_not": True}}}
    if kind == "score":
        return {"score": {"ge": rng.choice((5, 10, 20, 40))}}
    if kind == "lead_attribute":
        return rng.choice((
            {"lead": {"country": {"in": rng.sample(COUNTRIES, 4)}}},
            {"lead": {"industry": {"in": rng.sample(INDUSTRIES, 3)}}},
            {"lead": {"employees": {"ge": rng.choice((50, 200))}}},
            {"lead": {"plan": {"is_not": "free"}}},
            {"lead": {"email_invalid": {"is_not": True}}},
        ))
    if kind == "member_of_list":
        return {"member_of_list": catalog.for_triggers["list"].draw(rng)}
    if kind == "not_member_of_list":
        return {"not_member_of_list": catalog.for_triggers["list"].draw(rng)}
    return {"activity_history": dict(rng.choice(history_patterns))}


def _history_patterns(catalog: TenantCatalog, seed: int) -> list[dict]:
    """The activity-history filters a tenant's marketers reuse across campaigns ("visited
    the pricing pages 3 times in 30 days"); a tenant has a few dozen, not one per campaign."""
    rng = random.Random(f"{seed}:history:{catalog.name}")
    patterns = []
    for section in URL_SECTIONS:
        patterns.append({"activity": "visit_web_page", "where": {"url": {"contains": f"/{section}/"}},
                         "at_least": rng.choice((1, 2, 3)), "in_past": {"n": rng.choice((7, 30)), "unit": "days"}})
    for email in catalog.values["email"][:8]:
        patterns.append({"activity": "open_email", "where": {"email": {"is": email}},
                         "at_least": 1, "in_past": {"n": 2, "unit": "weeks"}})
    patterns.append({"activity": "click_link_in_email", "at_least": 2, "in_past": {"n": 1, "unit": "months"}})
    patterns.append({"activity": "fill_out_form", "at_most": 0, "in_past": {"n": 90, "unit": "days"}})
    patterns.append({"activity": "mobile_app_event", "where": {"event": {"is": "purchase"}},
                     "at_least": 1, "in_past": {"n": 30, "unit": "days"}})
    return patterns


FILTER_COUNT_WEIGHTS = {0: 15, 1: 40, 2: 28, 3: 17}


def _qualification(rng: random.Random):
    roll = rng.random()
    if roll < 0.45:
        return "once"
    if roll < 0.65:
        return "every_time"
    n, unit = rng.choice(((12, "hours"), (1, "days"), (7, "days"), (30, "days")))
    return {"once_every": {"n": n, "unit": unit}}


def _flow(catalog: TenantCatalog, rng: random.Random) -> list[dict]:
    steps = [{"send_email": {"template": rng.choice(TEMPLATES)}}]
    for _ in range(rng.randint(0, 2)):
        steps.append(rng.choice((
            {"change_score": {"delta": rng.choice((1, 5, 10))}},
            {"add_to_list": {"list": catalog.for_triggers["list"].draw(rng)}},
            {"wait": {"duration": {"n": rng.choice((1, 2, 24)), "unit": "hours"}}},
            {"webhook": {"name": "crm_sync"}},
        )))
    rng.shuffle(steps)
    return steps


def _campaign(index: int, seed: int, tenant_catalogs: dict, history: dict, active: bool = True
              ) -> tuple[str, dict, list[str]]:
    """Campaign `index`: (tenant, YAML-ready spec, trigger kinds). Its own generator keeps
    campaign i the same whatever the number of campaigns."""
    rng = random.Random(f"{seed}:campaign:{index}:{active}")
    profile = _campaign_tenant(rng)
    catalog = tenant_catalogs[profile.name]
    first_type = _trigger_type(rng, profile)
    triggers, kinds = [], []
    trigger, kind = _trigger(first_type, catalog, rng)
    triggers.append(trigger)
    kinds.append(kind)
    if rng.random() < 0.1:
        # "clicked or opened the newsletter", "filled out form A or B"
        second_type = rng.choice(("open_email", "click_link_in_email")) if "email" in first_type else first_type
        trigger, kind = _trigger(second_type, catalog, rng)
        triggers.append(trigger)
        kinds.append(kind)
    label = first_type.replace("_", " ").capitalize()
    spec: dict = {"name": f"{label} {'' if active else 'paused '}{index:05d}",
                  "priority": rng.randrange(1, 200)}
    if not active:
        spec["status"] = "inactive"
    spec["triggers"] = triggers
    filter_count = rng.choices(list(FILTER_COUNT_WEIGHTS), weights=list(FILTER_COUNT_WEIGHTS.values()))[0]
    if filter_count:
        spec["filters"] = _filters(filter_count, catalog, rng, history[profile.name])
        if filter_count > 1 and rng.random() < 0.2:
            spec["logic"] = "any"
        elif filter_count == 3 and rng.random() < 0.3:
            spec["logic"] = "1 and (2 or 3)"
    spec["qualification"] = _qualification(rng)
    spec["flow"] = _flow(catalog, rng)
    return profile.name, spec, kinds


def write_rules(directory: str | Path, campaigns: int, seed: int = DEFAULT_SEED) -> RulesManifest:
    """Write a rules directory with `campaigns` active trigger campaigns spread over the
    tenants (plus a few inactive and batch campaigns, which evaluation must skip).
    Replaces a directory this function wrote before; refuses any other non-empty one."""
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        if not (directory / GENERATED_MARKER).exists():
            raise FileExistsError(f"{directory} is not empty and was not written by write_rules; "
                                  "give a new or empty directory")
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / GENERATED_MARKER).write_text("written by benchmarks/synthetic.py write_rules\n", encoding="utf-8")
    tenant_catalogs = catalogs(seed)
    history = {name: _history_patterns(catalog, seed) for name, catalog in tenant_catalogs.items()}
    by_tenant: dict[str, list[dict]] = {p.name: [] for p in TENANTS}
    trigger_kinds: Counter = Counter()
    qualification: Counter = Counter()
    filtered = 0
    for index in range(campaigns):
        tenant, spec, kinds = _campaign(index, seed, tenant_catalogs, history)
        by_tenant[tenant].append(spec)
        trigger_kinds.update(kinds)
        filtered += "filters" in spec
        q = spec["qualification"]
        qualification[q if isinstance(q, str) else "once_every"] += 1
    others = 0
    for index in range(campaigns // 20):
        tenant, spec, _ = _campaign(index, seed, tenant_catalogs, history, active=False)
        by_tenant[tenant].append(spec)
        others += 1
    files = 0
    for profile in TENANTS:
        catalog = tenant_catalogs[profile.name]
        tenant_dir = directory / profile.name
        tenant_dir.mkdir()
        settings = {
            "tenant": profile.name,
            "settings": {
                "communication_limits": {"per_day": 3, "per_7_days": 10},
                "lists": catalog.lists,
                "lead_attributes": CUSTOM_LEAD_ATTRIBUTES,
            },
            "campaigns": [{
                "name": "Weekly newsletter", "type": "batch",
                "filters": [{"member_of_list": "newsletter"}, {"lead": {"unsubscribed": {"is_not": True}}}],
                "schedule": {"every": {"n": 1, "unit": "weeks"}, "starting": "2026-11-02T09:00:00Z"},
                "flow": [{"send_email": {"template": "newsletter"}}],
            }],
        }
        others += 1
        _dump(tenant_dir / "settings.yaml", settings, f"Synthetic tenant {profile.name}: settings")
        files += 1
        specs = by_tenant[profile.name]
        for part, start in enumerate(range(0, len(specs), CAMPAIGNS_PER_RULE_FILE)):
            chunk = specs[start:start + CAMPAIGNS_PER_RULE_FILE]
            _dump(tenant_dir / f"campaigns-{part:03d}.yaml", {"tenant": profile.name, "campaigns": chunk},
                  f"Synthetic tenant {profile.name}: trigger campaigns")
            files += 1
    return RulesManifest(directory, campaigns, others, files, trigger_kinds, filtered, qualification)


def _dump(path: Path, doc: dict, title: str) -> None:
    text = yaml.dump(doc, Dumper=_RuleDumper, sort_keys=False, default_flow_style=None,
                     width=110, allow_unicode=True)
    path.write_text(f"# {title}. Generated by benchmarks/synthetic.py; do not edit.\n{text}", encoding="utf-8")


# --- command line ---------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--campaigns", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/data/synthetic"),
                        help="writes OUT/events.jsonl and OUT/rules/")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    lines = event_lines(args.events, args.seed)
    (args.out / "events.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    manifest = write_rules(args.out / "rules", args.campaigns, args.seed)
    print(f"{len(lines)} events -> {args.out / 'events.jsonl'}")
    print(f"{manifest.active_trigger_campaigns} active trigger campaigns (+{manifest.other_campaigns} "
          f"inactive/batch) in {manifest.files} files -> {manifest.directory}")
    print(f"triggers: {dict(manifest.trigger_kinds)}; with filters: {manifest.filtered_campaigns}; "
          f"qualification: {dict(manifest.qualification)}")
    print(f"{time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()

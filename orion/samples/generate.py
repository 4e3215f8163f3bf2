"""Writes the shipped sample events (orion/samples/events.jsonl): a few thousand
activities of three tenants that exercise the sample rules, with some duplicates,
some arriving out of order (within the default allowed lateness of 60 s) or two hours late, and a few bad lines on purpose.

Deterministic: the same seed gives the same file.

    python -m orion.samples.generate [--events 3000] [--seed 7] [--out orion/samples/events.jsonl]
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from orion.activities import format_timestamp

START_MS = 1_795_000_000_000  # 2026-11-18T...; a fixed start keeps the file reproducible
SECOND = 1_000
MINUTE = 60 * SECOND

ACME_PAGES = [
    "https://acme.example/", "https://acme.example/pricing", "https://acme.example/pricing/enterprise",
    "https://acme.example/blog/streaming", "https://acme.example/docs", "https://acme.example/careers",
]
ACME_FORMS = ["Signup", "Contact Us", "Webinar Registration", "Newsletter"]
EMAILS = ["Welcome", "Newsletter", "Follow up"]
GLOBEX_APP_EVENTS = ["first_open", "browse", "cart_abandoned", "purchase"]
STORES = ["Flagship", "Downtown", "Airport", "Mall"]


def _acme(rng: random.Random, lead: str) -> tuple[str, dict]:
    roll = rng.random()
    if roll < 0.45:
        return "visit_web_page", {"url": rng.choice(ACME_PAGES), "referrer": "https://search.example/"}
    if roll < 0.60:
        return "fill_out_form", {"form": rng.choice(ACME_FORMS), "fields": {"email": f"{lead}@mail.example"}}
    if roll < 0.72:
        return "click_link_in_email", {"email": rng.choice(EMAILS), "link": "https://acme.example/pricing"}
    if roll < 0.82:
        return "open_email", {"email": rng.choice(EMAILS)}
    if roll < 0.86:
        return "email_bounced", {"email": "Newsletter", "category": rng.choice(["hard", "soft"])}
    if roll < 0.92:
        return "change_score", {"delta": rng.choice([5, 10, 20])}
    if roll < 0.96:
        return "data_value_changes", {"attribute": "industry", "old_value": None,
                                      "new_value": rng.choice(["Retail", "Finance", "Health"])}
    return "added_to_list", {"list": rng.choice(["customers", "newsletter"])}


def _globex(rng: random.Random, lead: str) -> tuple[str, dict]:
    roll = rng.random()
    if roll < 0.55:
        event = rng.choice(GLOBEX_APP_EVENTS)
        properties = {"value": rng.choice([10, 40, 60, 120])} if event == "cart_abandoned" else {}
        return "mobile_app_event", {"app": "globex-shop", "event": event, "properties": properties}
    if roll < 0.85:
        return "store_visit", {"store": rng.choice(STORES), "minutes": rng.randint(1, 40)}
    if roll < 0.95:
        return "visit_web_page", {"url": "https://globex.example/deals"}
    return "unsubscribe_email", {"email": "Weekly deals"}


def _initech(rng: random.Random, lead: str) -> tuple[str, dict]:
    roll = rng.random()
    if roll < 0.7:
        device = rng.choice(["thermo-1", "thermo-22", "camera-3"])
        return "device_event", {"device": device, "event": rng.choice(["filter_low", "heartbeat", "retired"])}
    new_score = rng.randint(0, 120)
    return "change_score", {"delta": rng.randint(1, 30), "new_score": new_score}


TENANTS = {"acme": (_acme, 120), "globex": (_globex, 80), "initech": (_initech, 40)}

BAD_LINES = [
    '{"event_id": "bad-1", "tenant": "acme", "lead_id": "L1", "type": "visit_web_page"',  # cut short
    '{"event_id": "bad-2", "tenant": "acme", "type": "open_email", "occurred_at": 1795000000000, '
    '"attributes": {"email": "Welcome"}}',  # no lead_id
    '{"event_id": "bad-3", "tenant": "acme", "lead_id": "L1", "type": "teleported", '
    '"occurred_at": 1795000000000, "attributes": {}}',  # unknown type
    '{"event_id": "bad-4", "tenant": "acme", "lead_id": "L1", "type": "change_score", '
    '"occurred_at": 1795000000000, "attributes": {"delta": "ten"}}',  # wrong attribute type
    '{"event_id": "bad-5", "tenant": "initech", "lead_id": "D9", "type": "device_event", '
    '"occurred_at": "yesterday", "attributes": {"device": "thermo-1", "event": "heartbeat"}}',  # bad time
    '{"event_id": "bad-6", "tenant": "globex", "lead_id": "G1", "type": "store_visit", '
    '"occurred_at": 1795000000000, "attributes": {"minutes": 5}}',  # missing required attribute
    "not json at all",
]


def generate(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    lines: list[str] = []
    clock = START_MS
    emitted: list[str] = []
    for n in range(count):
        tenant = rng.choices(list(TENANTS), weights=[5, 3, 2])[0]
        make, leads = TENANTS[tenant]
        # Zipf-like: a few leads are very active, most are rare.
        lead = f"{tenant[0].upper()}{int(leads * rng.random() ** 3) + 1}"
        type_, attributes = make(rng, lead)
        clock += rng.randint(1, 20) * SECOND
        occurred = clock
        if rng.random() < 0.05:
            occurred -= rng.randint(1, 45) * SECOND  # out of order, within the default lateness
        if rng.random() < 0.003:
            occurred -= 2 * 60 * MINUTE  # very late: two hours behind, dead-lettered as late
        event = {
            "event_id": f"{tenant}-{n:05d}",
            "tenant": tenant,
            "lead_id": lead,
            "type": type_,
            "occurred_at": format_timestamp(occurred) if rng.random() < 0.5 else occurred,
            "attributes": attributes,
        }
        line = json.dumps(event, separators=(",", ":"))
        lines.append(line)
        emitted.append(line)
        if rng.random() < 0.01:
            lines.append(rng.choice(emitted[-2:]))  # a duplicate delivery, soon after the first
    for bad in BAD_LINES:
        lines.insert(rng.randrange(len(lines)), bad)
    return email_addresses() + lines


def email_addresses() -> list[str]:
    """The leads with an odd number gave their email address a minute before the rest
    begins, so the sample campaigns' flows queue emails (and hold the others' emails,
    for want of an address). No randomness: the lines after these stay as they were."""
    lines = []
    at = START_MS - MINUTE
    for tenant, (_, leads) in TENANTS.items():
        for n in range(1, leads + 1, 2):
            lead = f"{tenant[0].upper()}{n}"
            lines.append(json.dumps({
                "event_id": f"{tenant}-email-{n:03d}", "tenant": tenant, "lead_id": lead,
                "type": "data_value_changes", "occurred_at": at,
                "attributes": {"attribute": "email", "old_value": None, "new_value": f"{lead.lower()}@mail.example"},
            }, separators=(",", ":")))
            at += 100
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "events.jsonl")
    args = parser.parse_args()
    lines = generate(args.events, args.seed)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} lines to {args.out}")


if __name__ == "__main__":
    main()

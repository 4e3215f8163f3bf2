"""`POST /v1/decide` end to end, against real servers the tests start: the decision
service on a free port, the Pub/Sub emulator its impressions go to, the SQLite store the
graph (`orion run`, the real Beam graph; the Flink job too) writes lead profiles, with
their history counts, into. Impressions pulled from the topic go back through the
graph, and `orion analytics experiments` reports
them. Bad input gets a clear answer and never a 500; a store that does not answer is a
503; a Pub/Sub that does not take impressions costs no decision.

    .venv/bin/python -m pytest -q tests/test_decisions_service.py
"""
from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path

import pytest

from orion.collector.keys import KeyStore, add_key
from orion.intake import parse_payload
from orion.profiles import LeadRecord, encode_profile
from orion.rules.compiler import load_experiences
from orion.rules.model import LeadState
from orion.store import open_store
from orion.store.base import StoredProfile
from orion.testing.pubsub import drain

from collector_services import (FlakyProxy, check_errors_are_json_without_the_key, emulator_env,  # noqa: F401
                                new_topic, pubsub, request)
from flink_services import flink  # noqa: F401

RULES = """
tenant: acme
settings:
  lead_attributes: {industry: string}
experiences:
  - name: Retail hero
    placement: home_hero
    priority: 10
    audience:
      filters: [{lead: {industry: {is: Retail}}}]
    variants:
      - {name: discount, weight: 1, template: "<h1>{{ lead.first_name | default('Hello') }}: 20% off</h1>"}
      - {name: story, weight: 1, json: {headline: "Retailers love us"}}
    control: {weight: 1}
    goal:
      activity: fill_out_form
      where: {form: {is: Demo}}
      within: {n: 7, unit: days}
  - name: Default hero
    placement: home_hero
    variants: [{name: standard, weight: 1, json: {headline: Welcome}}]
  - name: Mobile banner
    placement: banner
    audience:
      context:
        device: {is: mobile}
    variants: [{name: app, weight: 1, json: {cta: "Get the app"}}]
"""


class DecideThread:
    """`run_decider` on its own event loop in a thread, on a free port: the loop `orion
    decide serve` runs on (uvloop's)."""

    def __init__(self, rules_dir: Path, keys_path: Path, store_uri_or_store, topic: str, **settings):
        from orion.decisions.app import DecideSettings
        from orion.decisions.commands import new_event_loop, run_decider

        rules, experiences, refused = load_experiences(rules_dir)
        assert refused == {}
        store = open_store(store_uri_or_store) if isinstance(store_uri_or_store, str) else store_uri_or_store
        if isinstance(store_uri_or_store, str):
            store.init()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.port = 0
        self.error: BaseException | None = None

        async def main():
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await run_decider(topic, KeyStore(keys_path), experiences, rules.activity_types, store,
                              DecideSettings(**settings), "127.0.0.1", 0, ready=self._on_ready, stop=self._stop)

        def target():
            try:
                with asyncio.Runner(loop_factory=new_event_loop) as runner:
                    runner.run(main())
            except BaseException as err:  # noqa: BLE001 - reported to the test
                self.error = err
                self._ready.set()

        self._thread = threading.Thread(target=target, daemon=True)
        self._thread.start()
        assert self._ready.wait(60), "the decision service did not start within 60 s"
        if self.error:
            raise self.error

    def _on_ready(self, port: int) -> None:
        self.port = port
        self._ready.set()

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        assert not self._thread.is_alive(), "the decision service did not stop"

    def decide(self, body, key: str | None = None, headers: dict | None = None):
        return request("POST", self.port, "/v1/decide", body, key, headers)

    def metric(self, name: str, **labels) -> float:
        _, _, text = request("GET", self.port, "/metrics")
        wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
        for line in text.splitlines():
            if line.startswith(f"{name}{{{wanted}}} ") or (not labels and line.startswith(f"{name} ")):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


@pytest.fixture
def rules_dir(tmp_path) -> Path:
    path = tmp_path / "rules"
    path.mkdir()
    (path / "acme.yaml").write_text(RULES)
    return path


@pytest.fixture
def key(tmp_path) -> str:
    made, _ = add_key(tmp_path / "keys.yaml", "acme", "test")
    return made


@pytest.fixture
def start(emulator_env, rules_dir, tmp_path):  # noqa: F811 - the emulator fixture
    """`service = start(store, topic=None, **settings)`; stopped after the test."""
    started = []

    def start_service(store, topic: str | None = None, **settings) -> DecideThread:
        service = DecideThread(rules_dir, tmp_path / "keys.yaml", store, topic or new_topic()[0], **settings)
        started.append(service)
        return service

    yield start_service
    for service in started:
        service.stop()


def write_profile(store_uri: str, lead_id: str, **attributes) -> None:
    record = LeadRecord()
    record = record._replace(flows=record.flows._replace(lead=LeadState(attributes=attributes)))
    with open_store(store_uri) as store:
        store.init()
        store.write_profiles([StoredProfile("acme", lead_id, encode_profile(record))])


def run_graph(rules_dir: Path, events: list[dict], store_uri: str, out: Path) -> None:
    """The real Beam graph (`orion run`) over `events`, in event-time order, into the store."""
    from orion.cli import main

    path = out.parent / f"{out.name}.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in sorted(events, key=lambda e: e["occurred_at"])))
    assert main(["run", "--events", str(path), "--rules", str(rules_dir), "--store", store_uri,
                 "--outbox", "none", "--out-dir", str(out)]) == 0


def test_decisions_read_the_profiles_the_graph_writes(start, key, rules_dir, tmp_path):
    store_uri = f"sqlite:///{tmp_path / 'store.db'}"
    now = int(time.time() * 1000) - 60_000

    def change(n: int, lead: str, value: str) -> dict:
        return {"event_id": f"c{n}", "tenant": "acme", "lead_id": lead, "type": "data_value_changes",
                "occurred_at": now + n, "attributes": {"attribute": "industry", "new_value": value}}

    run_graph(rules_dir, [change(1, "L1", "Retail"), change(2, "L2", "Banking")], store_uri, tmp_path / "out")
    service = start(store_uri)
    answers = {}
    for lead in ("L1", "L2", "nobody"):
        status, headers, body = service.decide({"lead_id": lead, "placements": ["home_hero", "banner"],
                                                "context": {"device": "mobile"}}, key)
        assert status == 200, body
        assert headers["Access-Control-Allow-Origin"] == "*"
        answers[lead] = body
    first = answers["L1"]["decisions"][0]
    assert answers["L1"]["lead"] == "known" and first["experience"] == "Retail hero"
    assert first["variant"] in ("discount", "story", "control")
    assert answers["L2"]["lead"] == "known" and answers["L2"]["decisions"][0]["experience"] == "Default hero"
    # a lead without a profile is decided for as an anonymous visitor: from the context
    assert answers["nobody"]["lead"] == "unknown"
    assert [d["experience"] for d in answers["nobody"]["decisions"]] == ["Default hero", "Mobile banner"]
    # sticky: the same answer again
    _, _, again = service.decide({"lead_id": "L1", "placements": ["home_hero"], "context": {"device": "mobile"}}, key)
    assert again["decisions"][0] == first


HISTORY_RULES = """
tenant: acme
experiences:
  - name: Capped
    placement: home_hero
    audience:
      filters:
        - activity_history:
            activity: experience_impression
            where: {experience: {is: Capped}}
            at_most: 1
            in_past: {n: DAYS, unit: days}
        - activity_history: {activity: visit_web_page, in_past: {n: 30, unit: days}}
    variants: [{name: only, weight: 1, json: {headline: Once}}]
"""


class CountedReads:
    """A store that counts the reads a lead's history takes."""

    def __init__(self, store):
        self.store, self.reads = store, 0

    def __getattr__(self, name):
        return getattr(self.store, name)

    def history(self, *args, **kwargs):
        self.reads += 1
        return self.store.history(*args, **kwargs)

    def read_index(self, *args, **kwargs):
        self.reads += 1
        return self.store.read_index(*args, **kwargs)


def test_decisions_read_the_history_counts_the_graph_writes_in_the_profile_not_the_store(tmp_path):
    from orion.decisions.core import PlacementIndexes, SnippetRenderer, decide
    from orion.decisions.leads import LeadReader, count_history

    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "acme.yaml").write_text(HISTORY_RULES.replace("DAYS", "7"))
    store_uri = f"sqlite:///{tmp_path / 'store.db'}"
    now = int(time.time() * 1000) - 60_000

    def event(n: int, lead: str, type_: str, **attributes) -> dict:
        return {"event_id": f"e{n}", "tenant": "acme", "lead_id": lead, "type": type_,
                "occurred_at": now - 3 * 86_400_000 + n, "attributes": attributes}

    shown = {"experience": "Capped", "variant": "only", "placement": "home_hero", "control": False}
    run_graph(rules_dir, [event(1, "L1", "experience_impression", **shown), event(2, "L1", "visit_web_page", url="/"),
                          event(3, "L2", "visit_web_page", url="/"), event(4, "L3", "fill_out_form", form="Demo")],
              store_uri, tmp_path / "out")
    _, experiences, _ = load_experiences(rules_dir)
    counters = experiences["acme"].counters
    store = CountedReads(open_store(store_uri))
    for lazy in (True, False):
        reader = LeadReader(store, ttl_s=0)
        views = {lead: reader.read("acme", lead, counters, now, lazy_history=lazy) for lead in ("L1", "L2", "L3")}
        for lead, view in views.items():
            assert view.status == "known"
            wanted = count_history(store.store, "acme", lead, counters, now)
            assert {key: view.state.history.get(key) for key in wanted} == wanted, lead
            assert all(view.state.history.get(c.key) is None for c in counters if c.key not in wanted), lead
        assert store.reads == 0, "the profile answered: the store was not asked for a history"
        # The cap holds: L1 was shown Capped once (at_most 1 passes), L2 never; L3 has no visit.
        chosen = {lead: decide(experiences["acme"], SnippetRenderer(), lead, view.state, ["home_hero"], {}, {}, now,
                               PlacementIndexes())[0].experience for lead, view in views.items()}
        assert chosen == {"L1": "Capped", "L2": "Capped", "L3": None}

    # A second impression: past the cap, as the graph's profile says.
    run_graph(rules_dir, [event(5, "L1", "experience_impression", **shown)], store_uri, tmp_path / "again")
    view = LeadReader(store, ttl_s=0).read("acme", "L1", counters, now, lazy_history=True)
    assert decide(experiences["acme"], SnippetRenderer(), "L1", view.state, ["home_hero"], {}, {}, now,
                  PlacementIndexes())[0].experience is None
    assert store.reads == 0

    # Rules that count otherwise (14 days, not 7): the profile's counts are not theirs, so
    # the store counts, and gives the same answer.
    (rules_dir / "acme.yaml").write_text(HISTORY_RULES.replace("DAYS", "14"))
    _, changed, _ = load_experiences(rules_dir)
    view = LeadReader(store, ttl_s=0).read("acme", "L1", changed["acme"].counters, now, lazy_history=True)
    assert decide(changed["acme"], SnippetRenderer(), "L1", view.state, ["home_hero"], {}, {}, now,
                  PlacementIndexes())[0].experience is None
    assert store.reads > 0, "the store counted what the profile was not counted for"
    store.close()


def test_a_profile_that_reads_only_the_slow_way_has_its_history_counted_from_the_store(tmp_path):
    from orion.activities import Activity
    from orion.decisions.leads import LeadReader, count_history

    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "acme.yaml").write_text(HISTORY_RULES.replace("DAYS", "7"))
    _, experiences, _ = load_experiences(rules_dir)
    counters = experiences["acme"].counters
    now = int(time.time() * 1000)
    store_uri = f"sqlite:///{tmp_path / 'store.db'}"
    write_profile(store_uri, "L1", first_name="Ada \ud800")  # a lone surrogate: orjson refuses its escape
    with open_store(store_uri) as store:
        visits = [Activity(f"v{n}", "acme", "L1", "visit_web_page", now - n * 3_600_000, {"url": "/"}) for n in (1, 2)]
        store.write(visits)
        store.index_activities(visits)
    store = open_store(store_uri)
    for lazy in (True, False):
        view = LeadReader(store, ttl_s=0).read("acme", "L1", counters, now, lazy_history=lazy)
        assert view.status == "known" and view.state.attributes["first_name"] == "Ada \ud800"
        wanted = count_history(store, "acme", "L1", counters, now)
        assert sum(sum(days.values()) for days in wanted.values()) == 2
        assert {key: view.state.history.get(key) for key in wanted} == wanted, lazy
    store.close()


def test_the_flink_job_writes_the_same_history_counts_in_the_profile(flink, tmp_path):
    import io

    from orion.decisions.leads import LeadReader, count_history
    from orion.settings import RunConfig

    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "acme.yaml").write_text(HISTORY_RULES.replace("DAYS", "7"))
    now = int(time.time() * 1000) - 60_000
    shown = {"experience": "Capped", "variant": "only", "placement": "home_hero", "control": False}
    events = [{"event_id": f"e{n}", "tenant": "acme", "lead_id": lead, "type": type_,
               "occurred_at": now - 3 * 86_400_000 + n, "attributes": attributes}
              for n, (lead, type_, attributes) in enumerate([("L1", "experience_impression", shown),
                                                             ("L1", "experience_impression", shown),
                                                             ("L1", "visit_web_page", {"url": "/"}),
                                                             ("L2", "fill_out_form", {"form": "Demo"})])]
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    store_uri = f"sqlite:///{tmp_path / 'store.db'}"
    flink.run_flink(RunConfig(str(rules_dir), (), str(path), None, store_uri, tmp_path / "out", 60_000,
                              86_400_000, None, ()), out=io.StringIO())
    _, experiences, _ = load_experiences(rules_dir)
    counters = experiences["acme"].counters
    store = CountedReads(open_store(store_uri))
    reader = LeadReader(store, ttl_s=0)
    for lead in ("L1", "L2"):
        view = reader.read("acme", lead, counters, now, lazy_history=True)
        wanted = count_history(store.store, "acme", lead, counters, now)
        assert {key: view.state.history.get(key) for key in wanted} == wanted, lead
    assert sum(sum(days.values()) for days in wanted.values()) == 0 and store.reads == 0
    assert sorted(sum(days.values()) for days in
                  count_history(store.store, "acme", "L1", counters, now).values()) == [1, 2]
    store.close()


def test_a_profile_change_is_seen_once_the_cache_lets_go(start, key, tmp_path):
    store_uri = f"sqlite:///{tmp_path / 'store.db'}"
    write_profile(store_uri, "L1", industry="Banking")
    service = start(store_uri, cache_ttl=0.2)
    body = {"lead_id": "L1", "placements": ["home_hero"]}
    assert service.decide(body, key)[2]["decisions"][0]["experience"] == "Default hero"
    write_profile(store_uri, "L1", industry="Retail", first_name="Ada")
    deadline = time.monotonic() + 20
    seen = None
    while time.monotonic() < deadline:
        seen = service.decide(body, key)[2]["decisions"][0]
        if seen["experience"] == "Retail hero":
            break
        time.sleep(0.05)
    assert seen["experience"] == "Retail hero", seen
    assert service.metric("orion_decide_lead_reads_total", source="cache") > 0  # the cache did serve


def test_every_decision_is_an_impression_the_graph_stores_and_the_report_counts(start, key, rules_dir, tmp_path,
                                                                               capsys):
    store_uri = f"sqlite:///{tmp_path / 'store.db'}"
    for n in range(60):
        write_profile(store_uri, f"L{n}", industry="Retail")
    topic, subscription = new_topic()
    service = start(store_uri, topic=topic, flush_seconds=0.01)
    decided = {}
    for n in range(60):
        status, _, body = service.decide({"lead_id": f"L{n}", "placements": ["home_hero", "banner", "nope"],
                                          "context": {"device": "desktop", "url": "https://acme.example/"}}, key)
        assert status == 200, body
        hero, banner, nope = body["decisions"]
        assert banner["error"] == "no_match" and nope["error"] == "unknown_placement"
        decided[f"L{n}"] = hero
    service.stop()  # publishes what waits
    types = load_experiences(rules_dir)[0].activity_types
    messages = drain(subscription, quiet_seconds=2.0)
    impressions = []
    for message in messages:
        parsed = list(parse_payload(message.data, types, "test"))
        assert not any(hasattr(found, "reason") for found in parsed), parsed  # the graph's intake takes them
        impressions += json.loads(message.data)
    # one impression per decision with an experience (the control group's too), none for the others
    assert sorted(i["lead_id"] for i in impressions) == sorted(decided)
    for impression in impressions:
        hero = decided[impression["lead_id"]]
        assert impression["type"] == "experience_impression" and impression["tenant"] == "acme"
        assert impression["attributes"] == {"experience": "Retail hero", "variant": hero["variant"],
                                            "placement": "home_hero", "control": hero["control"],
                                            "url": "https://acme.example/"}
    arms = {hero["variant"] for hero in decided.values()}
    assert arms == {"discount", "story", "control"}

    # the impressions through the graph, with demo requests of some leads: the report
    first_at = min(i["occurred_at"] for i in impressions)
    converted = [lead for lead, hero in sorted(decided.items()) if int(lead[1:]) % 3 == 0]
    goals = [{"event_id": f"g{lead}", "tenant": "acme", "lead_id": lead, "type": "fill_out_form",
              "occurred_at": first_at + 1000, "attributes": {"form": "Demo"}} for lead in converted]
    too_late = [{"event_id": "late-L1", "tenant": "acme", "lead_id": "L1", "type": "fill_out_form",
                 "occurred_at": first_at + 8 * 86_400_000, "attributes": {"form": "Demo"}}]
    run_graph(rules_dir, impressions + goals + too_late, store_uri, tmp_path / "out")
    from orion.cli import main

    capsys.readouterr()
    assert main(["analytics", "experiments", "--tenant", "acme", "--store", store_uri, "--rules", str(rules_dir),
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (hero_report,) = [e for e in report["experiences"] if e["experience"] == "Retail hero"]
    rows = {row["arm"]: row for row in hero_report["arms"]}
    for arm in ("discount", "story", "control"):
        members = [lead for lead, hero in decided.items() if hero["variant"] == arm]
        assert rows[arm]["leads"] == rows[arm]["impressions"] == len(members)
        assert rows[arm]["conversions"] == sum(1 for lead in members if lead in converted)
    assert hero_report["goal"] == "fill_out_form where form is \"Demo\" within 7 days"
    assert main(["analytics", "experiments", "--tenant", "acme", "--store", store_uri, "--rules", str(rules_dir)]) == 0
    text = capsys.readouterr().out
    assert "Retail hero (placement home_hero)" in text and "control" in text


def test_bad_input_gets_a_clear_answer_and_never_a_500(start, key, tmp_path):
    store_uri = f"sqlite:///{tmp_path / 'store.db'}"
    service = start(store_uri)
    cases = [
        (None, {"lead_id": "L1", "placements": ["home_hero"]}, None, 401, "missing_key"),
        ("ok_0123456789abcdef_" + "x" * 43, {"lead_id": "L1", "placements": ["home_hero"]}, None, 401, "invalid_key"),
        (key, b"{not json", None, 400, "malformed_json"),
        (key, [1, 2], None, 400, "malformed_json"),
        (key, {"placements": ["home_hero"]}, None, 400, "missing_field"),
        (key, {"lead_id": True, "placements": ["home_hero"]}, None, 400, "bad_field"),
        (key, {"lead_id": "L1"}, None, 400, "missing_field"),
        (key, {"lead_id": "L1", "placements": "home_hero"}, None, 400, "bad_field"),
        (key, {"lead_id": "L1", "placements": [7]}, None, 400, "bad_field"),
        (key, {"lead_id": "L1", "placements": ["p"] * 21}, None, 400, "bad_field"),
        (key, {"lead_id": "L1", "placements": ["home_hero"], "colour": 1}, None, 400, "bad_field"),
        (key, {"lead_id": "L1", "placements": ["home_hero"], "context": "mobile"}, None, 400, "bad_context"),
        (key, {"lead_id": "L1", "placements": ["home_hero"], "context": {"device": 1}}, None, 400, "bad_context"),
        (key, {"lead_id": "L1", "placements": ["home_hero"], "context": {"local_time": "noon"}}, None, 400,
         "bad_context"),
        (key, {"lead_id": "L1", "placements": ["home_hero"], "context": {"url": "x" * 70_000}}, None, 413,
         "too_large"),
        (key, {"lead_id": "L1", "placements": ["nope", "nada"]}, None, 422, None),
    ]
    for presented, body, headers, status, error in cases:
        got, _, answer = service.decide(body, presented, headers)
        assert got == status, (body if not isinstance(body, dict) else list(body), answer)
        if error is not None:
            assert answer["error"] == error and answer["detail"], answer
    _, _, answer = service.decide({"lead_id": "L1", "placements": ["home_hero"], "context": {"device": 1}}, key)
    assert answer["detail"] == "context.device must be text, not a number"
    status, _, answer = service.decide({"lead_id": "L1", "placements": ["nope", "nada"]}, key)
    assert [d["error"] for d in answer["decisions"]] == ["unknown_placement"] * 2
    assert "banner, home_hero" in answer["decisions"][0]["detail"]
    # an unknown placement beside a known one: the known one is answered
    status, _, answer = service.decide({"lead_id": 42, "placements": ["nope", "home_hero"]}, key)
    assert status == 200 and answer["lead_id"] == "42" and answer["lead"] == "unknown"
    assert [d.get("error") for d in answer["decisions"]] == ["unknown_placement", None]
    # no answer was a 500
    _, _, text = request("GET", service.port, "/metrics")
    assert 'status="500"' not in text and 'route="/v1/decide",status="400"' in text


def test_routes_answer_as_routed_and_what_no_route_takes_is_a_counted_404_or_405(start, key, tmp_path):
    service = start(f"sqlite:///{tmp_path / 'store.db'}")
    status, headers, _ = request("OPTIONS", service.port, "/v1/decide")
    assert status == 204 and headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in headers["Access-Control-Allow-Methods"]
    assert request("GET", service.port, "/healthz")[0] == 200
    status, headers, _ = request("GET", service.port, "/v1/decide")
    assert status == 405 and set(headers["Allow"].split(",")) == {"POST", "OPTIONS"}
    status, headers, _ = request("POST", service.port, "/healthz", {})
    assert status == 405 and "GET" in headers["Allow"]
    assert request("GET", service.port, "/v1/decide/more")[0] == 404
    assert request("POST", service.port, "/nowhere", {})[0] == 404
    refused, headers, _ = service.decide({"lead_id": "L1", "placements": ["home_hero"]})  # no key
    assert refused == 401 and headers["Access-Control-Allow-Origin"] == "*"
    assert service.metric("orion_decide_requests_total", route="other", status="404") == 2
    assert service.metric("orion_decide_requests_total", route="other", status="405") == 2
    assert service.metric("orion_decide_requests_total", route="/v1/decide", status="204") == 1
    assert service.metric("orion_decide_requests_total", route="/v1/decide", status="401") == 1
    assert service.metric("orion_decide_requests_total", route="/healthz", status="200") == 1


def test_every_refusal_is_json_without_the_key_and_a_key_that_is_not_utf8_is_a_401(start, key, tmp_path):
    service = start(f"sqlite:///{tmp_path / 'store.db'}")
    statuses = check_errors_are_json_without_the_key(service.port, key, "/v1/decide", "POST")
    assert service.metric("orion_decide_requests_total", route="unparsed", status="400") == statuses.count(400)
    assert service.metric("orion_decide_requests_total", route="/v1/decide", status="401") == 2


def test_the_service_starts_on_the_shipped_samples_whose_other_tenants_have_no_experiences(
        emulator_env, tmp_path):  # noqa: F811
    from orion.settings import SAMPLE_RULES

    key, _ = add_key(tmp_path / "keys.yaml", "globex", "test")
    service = DecideThread(Path(SAMPLE_RULES), tmp_path / "keys.yaml", f"sqlite:///{tmp_path / 'store.db'}",
                           new_topic()[0])
    try:
        status, _, answer = service.decide({"lead_id": "L1", "placements": ["home_hero"]}, key)
        assert status == 422 and answer["decisions"][0]["error"] == "unknown_placement", answer
    finally:
        service.stop()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_store_that_does_not_answer_is_a_503(start, key):
    from orion.store.mysql import MysqlStore

    service = start(MysqlStore(f"mysql://root@127.0.0.1:{_closed_port()}/orion"))
    status, headers, answer = service.decide({"lead_id": "L1", "placements": ["home_hero"]}, key)
    assert status == 503 and answer["error"] == "store_unavailable" and headers["Retry-After"] == "1"


class HangingStore:
    """A SQLite store whose profile reads hang while `hung` is set (a MySQL that stopped
    answering): its name is not SqliteStore, so the service reads it on its store thread."""

    def __init__(self, uri: str):
        self.store = open_store(uri)
        self.hung = threading.Event()
        self.released = threading.Event()

    def __getattr__(self, name):
        return getattr(self.store, name)

    def read_profiles(self, keys):
        if self.hung.is_set():
            self.released.wait(30)
        return self.store.read_profiles(keys)


def test_a_store_that_hangs_costs_a_request_the_store_timeout_then_a_503(start, key, tmp_path):
    store_uri = f"sqlite:///{tmp_path / 'store.db'}"
    write_profile(store_uri, "L1", industry="Retail")
    store = HangingStore(store_uri)
    service = start(store, store_timeout=0.5)
    store.hung.set()
    for lead in ("L1", "L2"):  # the second waits behind the first on the store's thread: bounded too
        status, headers, answer = service.decide({"lead_id": lead, "placements": ["home_hero"]}, key)
        # a 503 while the store still hangs: answered once the timeout passed, not when the store did
        assert not store.released.is_set()
        assert status == 503 and answer["error"] == "store_unavailable" and headers["Retry-After"] == "1", answer
    store.hung.clear()
    store.released.set()
    status, _, answer = service.decide({"lead_id": "L1", "placements": ["home_hero"]}, key)
    assert status == 200 and answer["lead"] == "known" and answer["decisions"][0]["experience"] == "Retail hero"


def test_a_bigtable_store_that_does_not_answer_within_its_deadline_is_a_503_too(start, key, monkeypatch):
    """The Bigtable client gives up past its read deadline (its own error, which the store
    answers as a StoreError): a 503 like any store's, not a 500."""
    from orion.store.bigtable import BigtableStore

    monkeypatch.setenv("BIGTABLE_EMULATOR_HOST", f"127.0.0.1:{_closed_port()}")  # nothing listens there
    store = BigtableStore("bigtable://demo/local-dev/activities")
    store.read_deadline = 1.0  # the client's retries end sooner than in production
    service = start(store)
    status, headers, answer = service.decide({"lead_id": "L1", "placements": ["home_hero"]}, key)
    assert status == 503 and answer["error"] == "store_unavailable" and headers["Retry-After"] == "1", answer


def test_decisions_go_on_when_pubsub_does_not_take_impressions(emulator_env, start, key, tmp_path,  # noqa: F811
                                                               monkeypatch):
    topic, _ = new_topic()
    proxy = FlakyProxy(int(emulator_env.host.rsplit(":", 1)[1]))
    try:
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", proxy.host)
        proxy.set_mode("refuse")
        service = start(f"sqlite:///{tmp_path / 'store.db'}", topic=topic, publish_timeout=1.0, flush_seconds=0.01)
        for n in range(5):
            status, _, answer = service.decide({"lead_id": f"L{n}", "placements": ["home_hero"]}, key)
            assert status == 200 and answer["decisions"][0]["experience"] == "Default hero"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and service.metric("orion_decide_impressions_total", result="failed") < 5:
            time.sleep(0.2)
        assert service.metric("orion_decide_impressions_total", result="failed") == 5
        _, _, health = request("GET", service.port, "/healthz")
        assert health["impressions"].startswith("failing")
        # Pub/Sub back: impressions flow again once the client has reconnected (it backs off
        # for up to 2 s), with nothing restarted
        proxy.set_mode("forward")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and service.metric("orion_decide_impressions_total", result="published") < 1:
            service.decide({"lead_id": "L9", "placements": ["home_hero"]}, key)
            time.sleep(0.5)
        assert service.metric("orion_decide_impressions_total", result="published") >= 1
        assert request("GET", service.port, "/healthz")[2]["impressions"] == "ok"
    finally:
        proxy.close()


def test_a_body_that_does_not_arrive_is_a_408(start, key, tmp_path):
    service = start(f"sqlite:///{tmp_path / 'store.db'}", body_timeout=0.5)
    with socket.create_connection(("127.0.0.1", service.port), timeout=30) as connection:
        connection.sendall(f"POST /v1/decide HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                           "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"lead".encode())
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < _length(answer):
            chunk = connection.recv(65536)
            assert chunk, answer
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"408" and json.loads(body)["error"] == "body_timeout"


def _length(answer: bytes) -> int:
    for line in answer.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def test_orion_decide_serve_serves_until_told_to_stop(emulator_env, rules_dir, key, tmp_path):  # noqa: F811
    import re
    import signal
    import subprocess
    import sys

    from orion.testing.emulators import emulator_environment

    orion = Path(sys.executable).with_name("orion")
    topic, subscription = new_topic()
    store_uri = f"sqlite:///{tmp_path / 'store.db'}"
    write_profile(store_uri, "L1", industry="Retail")
    refused = subprocess.run([str(orion), "decide", "serve", "--topic", topic, "--keys", str(tmp_path / "none.yaml")],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "no API keys" in refused.stderr
    service = subprocess.Popen(
        [str(orion), "decide", "serve", "--topic", topic, "--keys", str(tmp_path / "keys.yaml"), "--store", store_uri,
         "--rules", str(rules_dir), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=emulator_environment(emulator_env))
    try:
        line = service.stdout.readline()
        port = int(re.search(r"listening on http://127\.0\.0\.1:(\d+)/v1/decide", line).group(1))
        assert "3 experience(s) of 1 tenant(s)" in line
        status, _, answer = request("POST", port, "/v1/decide", {"lead_id": "L1", "placements": ["home_hero"]}, key)
        assert status == 200 and answer["decisions"][0]["experience"] == "Retail hero"
    finally:
        service.send_signal(signal.SIGTERM)
        output, errors = service.communicate(timeout=60)
    assert service.returncode == 0, errors[-3000:]
    assert "orion decide: stopped" in output
    (message,) = drain(subscription, quiet_seconds=2.0)  # the impression was published before it stopped
    assert [event["lead_id"] for event in json.loads(message.data)] == ["L1"]


def test_a_body_that_comes_in_pieces_is_waited_for(start, key, tmp_path):
    service = start(f"sqlite:///{tmp_path / 'store.db'}", body_timeout=5.0)
    body = json.dumps({"lead_id": "L1", "placements": ["home_hero"]}).encode()
    with socket.create_connection(("127.0.0.1", service.port), timeout=30) as connection:
        connection.sendall(f"POST /v1/decide HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                           f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                           + body[:10])
        time.sleep(0.3)
        connection.sendall(body[10:])
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < _length(answer):
            chunk = connection.recv(65536)
            assert chunk, answer
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"200", answer
    assert json.loads(body)["decisions"][0]["experience"] == "Default hero"


def test_metrics_are_served_as_prometheus_counters_and_a_histogram():
    from prometheus_client.parser import text_string_to_metric_families

    from orion.decisions.app import DecideMetrics

    metrics = DecideMetrics()
    metrics.requests.inc(("/v1/decide", "200"))
    metrics.requests.inc(("/v1/decide", "200"))
    metrics.requests.inc(("/healthz", "200"))
    metrics.impressions.inc(("published",), 5)
    for seconds in (0.0004, 0.001, 0.003, 2.0):
        metrics.seconds.observe(seconds)
    samples = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
               for family in text_string_to_metric_families(metrics.render().decode()) for sample in family.samples}
    assert samples[("orion_decide_requests_total", (("route", "/v1/decide"), ("status", "200")))] == 2
    assert samples[("orion_decide_requests_total", (("route", "/healthz"), ("status", "200")))] == 1
    assert samples[("orion_decide_impressions_total", (("result", "published"),))] == 5
    buckets = {dict(labels)["le"]: value for (name, labels), value in samples.items()
               if name == "orion_decide_seconds_bucket"}
    # cumulative, and a value on a bucket's bound is in that bucket (le: at most)
    assert buckets["0.0005"] == 1 and buckets["0.001"] == 2 and buckets["0.005"] == 3 and buckets["1.0"] == 3
    assert buckets["+Inf"] == 4 and samples[("orion_decide_seconds_count", ())] == 4
    assert samples[("orion_decide_seconds_sum", ())] == pytest.approx(2.0044)


def test_a_revoked_key_is_refused_though_it_was_verified_before(start, key, tmp_path):
    from orion.collector.keys import revoke_key

    service = start(f"sqlite:///{tmp_path / 'store.db'}")
    body = {"lead_id": "L1", "placements": ["home_hero"]}
    for _ in range(3):  # verified once, then remembered
        assert service.decide(body, key)[0] == 200
    (record,) = KeyStore(tmp_path / "keys.yaml")._keys.values()
    revoke_key(tmp_path / "keys.yaml", record.id)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and service.decide(body, key)[0] == 200:
        time.sleep(0.1)
    status, _, answer = service.decide(body, key)
    assert status == 401 and answer["error"] == "invalid_key"


def test_remembered_keys_are_verified_again_when_the_keys_file_changes(tmp_path):
    from orion.collector.keys import revoke_key

    clock = [0.0]
    path = tmp_path / "keys.yaml"
    first, first_record = add_key(path, "acme", "one")
    second, _ = add_key(path, "globex", "two")
    remembered = KeyStore(path, clock=lambda: clock[0])
    assert remembered.verify(first).tenant == "acme" and remembered.verify(second).tenant == "globex"
    assert remembered.verify(first[:-1] + "x") is None and len(remembered._verified) == 2  # misses: not kept
    revoke_key(path, first_record.id)
    assert remembered.verify(first).tenant == "acme"  # the store has not looked at the file yet
    clock[0] += 1.0
    assert remembered.verify(first) is None  # it has: refused at once
    assert remembered.verify(second).tenant == "globex"


def test_a_snippets_answer_is_each_leads_own_and_a_json_answer_is_the_same_for_all(start, key, rules_dir, tmp_path):
    """The parts of an answer that are the same for every lead are encoded once and kept;
    a snippet that reads the lead's first name still answers each lead with its own."""
    from orion.decisions.core import assign

    store_uri = f"sqlite:///{tmp_path / 'store.db'}"
    _, experiences, _ = load_experiences(rules_dir)
    hero = experiences["acme"].by_name["Retail hero"]
    arms: dict[str, list[str]] = {}
    for n in range(300):
        arms.setdefault(assign("acme", hero, f"L{n}").name, []).append(f"L{n}")
    names = ("Ada", "Grace", "<Alan>")
    for lead, name in zip(arms["discount"], names):
        write_profile(store_uri, lead, industry="Retail", first_name=name)
    for lead in arms["story"][:2]:
        write_profile(store_uri, lead, industry="Retail", first_name="Edsger")
    service = start(store_uri)
    for _ in range(2):  # the second time from what was kept
        contents = [service.decide({"lead_id": lead, "placements": ["home_hero"]}, key)[2]["decisions"][0]
                    for lead in arms["discount"][:3]]
        assert [c["content"] for c in contents] == ["<h1>Ada: 20% off</h1>", "<h1>Grace: 20% off</h1>",
                                                    "<h1>&lt;Alan&gt;: 20% off</h1>"]
        assert {(c["experience"], c["variant"], c["content_type"]) for c in contents} == {
            ("Retail hero", "discount", "html")}
        stories = [service.decide({"lead_id": lead, "placements": ["home_hero"]}, key)[2]["decisions"][0]
                   for lead in arms["story"][:2]]
        assert stories == [{"placement": "home_hero", "experience": "Retail hero", "variant": "story",
                            "control": False, "content_type": "json", "content": {"headline": "Retailers love us"}}] * 2


def test_answers_and_impressions_are_encoded_as_their_dicts_would_be():
    import orjson

    from orion.decisions.app import DecisionEncoder, impression
    from orion.decisions.core import Decision

    now = 1_795_000_000_000
    encoder = DecisionEncoder()
    decisions = [Decision("home_hero", 'Retail "hero" é', "story", False, "json", {"headline": "Retailers"}),
                 Decision("home_hero", "Retail hero", "control", True, "none", None),
                 Decision("home_hero", "Retail hero", "discount", False, "html", "<h1>Ada: 20% off</h1>")]
    for decision in decisions:
        for lead_id, url in (("L1", 'https://x.example/?q="a"'), ('ünï"code', None), ("L2", 7)):
            for _ in range(2):  # encoded, then from what was kept
                encoded = encoder.encoded("acme", decision)
                made = encoder.impression(encoder.impression_lead("acme", lead_id, now), encoded,
                                          encoder.impression_end(url))
                expected = impression("acme", lead_id, decision, url, now)
                expected["event_id"] = orjson.loads(made)["event_id"]
                assert expected["event_id"].startswith("imp-")
                assert made == orjson.dumps(expected)
                assert encoder.answer_part(encoded, decision) == orjson.dumps(decision.to_json_dict())
    ids = {orjson.loads(encoder.impression(b'","x":1,"a":', encoder.encoded("acme", decisions[0]), b"}}"))["event_id"]
           for _ in range(3)}
    assert len(ids) == 3  # each impression its own id
    # HTML is each lead's own: the kept parts, then this lead's content
    other = decisions[2]._replace(content="<h1>Grace: 20% off</h1>")
    assert orjson.loads(encoder.answer_part(encoder.encoded("acme", other), other))["content"] == \
        "<h1>Grace: 20% off</h1>"
    # JSON content that is not the one kept (rules loaded again) is encoded again
    changed = decisions[0]._replace(content={"headline": "New"})
    assert orjson.loads(encoder.answer_part(encoder.encoded("acme", changed), changed))["content"] == \
        {"headline": "New"}
    # another tenant's decision of the same names is that tenant's
    assert encoder.encoded("globex", decisions[0]).labels == ("globex", "variant")
    # text that is not valid Unicode is escaped, not refused
    odd = decisions[2]._replace(content="<b>\ud800</b>")
    assert json.loads(encoder.answer_part(encoder.encoded("acme", odd), odd))["content"] == "<b>\ud800</b>"

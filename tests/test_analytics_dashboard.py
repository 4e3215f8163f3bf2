"""The analytics HTTP API and its dashboard, against roll-ups the Beam graph wrote and
experiment impressions and conversions stored beside them: the real server (aiohttp, on
a free port) started by the test, the API's answers and refusals, the experiments
report's answers (the report command's own, for the key's tenant only, kept for a
while), and the dashboard page loaded in headless Chromium (Debian's `chromium`, driven
over the DevTools protocol), whose charts and experiments tables must show the numbers
the input makes. A machine without Chromium fails the browser test with what to install.

    .venv/bin/python -m pytest -q tests/test_analytics_dashboard.py
"""
from __future__ import annotations

import asyncio
import json
import math
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import apache_beam as beam
import pytest

from collector_services import check_errors_are_json_without_the_key
from orion.activities import MS_PER_DAY, Activity
from orion.analytics.app import Analytics, AnalyticsSettings, ExperimentRules, load_experiment_rules, run_server
from orion.collector.keys import KeyStore, add_key
from orion.decisions.experiments import Z_95, experiment_report
from orion.store import open_store
from orion.pipelines.activity_graph import GraphSettings, build_activity_graph
from orion.transforms.flows import QueueEmails
from orion.transforms.intake import ParseActivities
from orion.transforms.sinks import WriteActivities, WriteProfiles

SECOND, MINUTE = 1000, 60_000
T0 = 1_800_000_000_000 - 1_800_000_000_000 % 3_600_000  # an hour's start
MINUTES = 10  # the dashboard's range: T0 to T0 + 10 minutes, by minute

RULES = """
tenant: shop
campaigns:
  - name: Welcome
    triggers: [{activity: fill_out_form, where: {form: {is: Signup}}}]
    qualification: once
    flow:
      - send_email: {template: welcome}
  - name: Every visit
    triggers: [{activity: visit_web_page}]
    qualification: every_time
experiences:
  - name: Hero
    placement: home_hero
    variants:
      - {name: a, weight: 1, json: A}
      - {name: b, weight: 1, json: B}
    control: {weight: 1}
    goal:
      activity: fill_out_form
      where: {form: {is: Demo}}
      within: {n: 7, unit: days}
  - name: Banner
    placement: banner
    variants: [{name: only, weight: 1, json: x}]
"""
OTHER = """
tenant: bank
campaigns:
  - name: Bank visit
    triggers: [{activity: visit_web_page}]
experiences:
  - name: Hero
    placement: home_hero
    variants: [{name: a, weight: 1, json: A}]
    control: {weight: 1}
    goal: {activity: fill_out_form, within: {n: 7, unit: days}}
"""


def event(event_id: str, lead: str, at: int, type_: str, tenant: str = "shop", **attributes) -> str:
    return json.dumps({"event_id": event_id, "tenant": tenant, "lead_id": lead, "type": type_, "occurred_at": at,
                       "attributes": attributes})


EVENTS = [
    # minute 0: L1 gives an address, signs up (Welcome: an email queued) and visits.
    event("e1", "L1", T0 + 1 * SECOND, "data_value_changes", attribute="email", new_value="l1@mail.example"),
    event("e2", "L1", T0 + 2 * SECOND, "fill_out_form", form="Signup"),
    event("e3", "L1", T0 + 10 * SECOND, "visit_web_page", url="https://shop.example/a"),
    # minute 1: L2 visits and signs up without an address (Welcome: the email is held).
    event("e4", "L2", T0 + MINUTE + 5 * SECOND, "visit_web_page", url="https://shop.example/b"),
    event("e5", "L2", T0 + MINUTE + 6 * SECOND, "fill_out_form", form="Signup"),
    # minute 2: two leads visit.
    event("e6", "L3", T0 + 2 * MINUTE + 1 * SECOND, "visit_web_page", url="https://shop.example/a"),
    event("e7", "L1", T0 + 2 * MINUTE + 9 * SECOND, "visit_web_page", url="https://shop.example/c"),
    # minute 3: L2 signs up again: Welcome is `once`, so it does not qualify.
    event("e8", "L2", T0 + 3 * MINUTE + 1 * SECOND, "fill_out_form", form="Signup"),
    # another tenant, the same minute
    event("b1", "L9", T0 + 1 * SECOND, "visit_web_page", tenant="bank", url="https://bank.example/"),
]


def per_minute(values: dict[int, int]) -> list[int]:
    return [values.get(minute, 0) for minute in range(MINUTES)]


EXPECTED = {
    "events": {"visit_web_page": per_minute({0: 1, 1: 1, 2: 2}), "fill_out_form": per_minute({0: 1, 1: 1, 3: 1}),
               "data_value_changes": per_minute({0: 1})},
    "fired": {"Every visit": per_minute({0: 1, 1: 1, 2: 2}), "Welcome": per_minute({0: 1, 1: 1})},
    "emails": {"queued": per_minute({0: 1}), "held": per_minute({1: 1})},
    "leads": {"unique leads": per_minute({0: 1, 1: 1, 2: 2, 3: 1})},
}


# The experiments: shop's Hero, arm -> (leads, of which convert inside the goal's window).
# Each arm's first lead is shown the experience twice; one lead of `a` also fills the
# form after the window, which does not count.
HERO = {"a": (4, 2), "b": (3, 0), "control": (4, 1)}


def experiment_activities() -> list[Activity]:
    """Impressions and goal activities, stored as the decision service's impressions are
    (the graph keeps them like any other activity). Written straight into the store: the
    report reads the activities, not the roll-ups, so the charts' numbers stay EVENTS'."""
    found = []

    def add(tenant: str, lead: str, type_: str, at: int, **attributes):
        found.append(Activity(f"x{len(found)}", tenant, lead, type_, at, attributes))

    for arm, (leads, converted) in HERO.items():
        for k in range(leads):
            lead, first = f"hero-{arm}-{k}", T0 + k * MINUTE
            for seen in (first, first + MS_PER_DAY)[:2 if k == 0 else 1]:
                add("shop", lead, "experience_impression", seen, experience="Hero", variant=arm,
                    placement="home_hero", control=arm == "control")
            if k < converted:
                add("shop", lead, "fill_out_form", first + 6 * MS_PER_DAY, form="Demo")
            elif arm == "a" and k == converted:
                add("shop", lead, "fill_out_form", first + 8 * MS_PER_DAY, form="Demo")
    for k in range(2):
        add("shop", f"banner-{k}", "experience_impression", T0 + k * SECOND, experience="Banner", variant="only",
            placement="banner", control=False)
    # bank's Hero: its own leads, none of shop's business
    for k in range(5):
        add("bank", f"bank-{k}", "experience_impression", T0, experience="Hero", variant="a",
            placement="home_hero", control=False)
        add("bank", f"bank-{k}", "fill_out_form", T0 + MS_PER_DAY, form="Demo")
    return found


@pytest.fixture(scope="module")
def rules_dir(tmp_path_factory) -> Path:
    rules = tmp_path_factory.mktemp("rules")
    (rules / "shop.yaml").write_text(RULES)
    (rules / "bank.yaml").write_text(OTHER)
    return rules


@pytest.fixture(scope="module")
def graph_store(tmp_path_factory, rules_dir) -> str:
    """The Beam graph (bounded, with flows) run over EVENTS, its roll-ups in a SQLite
    store; the experiments' activities stored beside them."""
    folder = tmp_path_factory.mktemp("analytics")
    rules = rules_dir
    store = f"sqlite:///{folder / 'activities.db'}"
    with beam.Pipeline() as pipeline:
        activities, dead = pipeline | beam.Create(EVENTS) | ParseActivities(str(rules))
        build_activity_graph(activities, dead, GraphSettings(str(rules), bounded=True, seed_store_uri=store,
                                                             rollup_store_uri=store),
                             store_sink=WriteActivities(store), profile_sink=WriteProfiles(store),
                             outbox_sink=QueueEmails(f"sqlite:///{folder / 'outbox.db'}"))
    write_activities(store, experiment_activities())
    return store


def write_activities(uri: str, activities: list[Activity]) -> None:
    opened = open_store(uri)
    try:
        opened.init()
        opened.write(activities)
        opened.index_activities(activities)
    finally:
        opened.close()


class Server:
    """`orion analytics serve` in a thread of this process, on a free port."""

    def __init__(self, store: str, keys: Path, settings: AnalyticsSettings = AnalyticsSettings(),
                 experiments: ExperimentRules = ExperimentRules(), clock=time.monotonic):
        self.analytics = Analytics(KeyStore(keys), store, settings, experiments, clock)
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        assert self.started.wait(30), "the analytics server did not start"
        self.base = f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.stop_event = asyncio.Event()

        def ready(port):
            self.port = port
            self.started.set()

        self.loop.run_until_complete(run_server(self.analytics, "127.0.0.1", 0, ready, self.stop_event))

    def get(self, path: str, key: str | None = None) -> tuple[int, dict, dict]:
        request = urllib.request.Request(self.base + path, headers={"Authorization": f"Bearer {key}"} if key else {})
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, json.loads(answer.read()), dict(answer.headers)
        except urllib.error.HTTPError as refused:
            return refused.code, json.loads(refused.read()), dict(refused.headers)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(30)


@pytest.fixture(scope="module")
def served(graph_store, rules_dir, tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "keys.yaml"
    shop_key, _ = add_key(keys, "shop")
    bank_key, _ = add_key(keys, "bank")
    server = Server(graph_store, keys, experiments=load_experiment_rules(rules_dir))
    yield server, shop_key, bank_key
    server.stop()


RANGE = f"from={T0}&to={T0 + MINUTES * MINUTE}"


def test_the_api_answers_a_time_series_for_the_key_s_tenant_only(served):
    server, shop_key, bank_key = served
    status, body, _ = server.get(f"/v1/analytics/timeseries?metric=events&by=type&{RANGE}", shop_key)
    assert status == 200
    assert (body["tenant"], body["metric"], body["granularity"]) == ("shop", "events", "minute")
    found = {(row["time"], row["type"]): row["events"] for row in body["rows"]}
    assert found[("2027-01-15T08:02:00.000Z", "visit_web_page")] == 2
    assert sum(found.values()) == 8
    status, body, _ = server.get(f"/v1/analytics/timeseries?metric=events&by=type&{RANGE}", bank_key)
    assert [(row["type"], row["events"]) for row in body["rows"]] == [("visit_web_page", 1)]


def test_topn_ranks_groups_over_the_range_and_filters_apply(served):
    server, shop_key, _ = served
    status, body, _ = server.get(f"/v1/analytics/topn?metric=fired&by=campaign,status&top=2&{RANGE}", shop_key)
    assert status == 200
    assert body["rows"] == [{"campaign": "Every visit", "status": "qualified", "fired": 4},
                            {"campaign": "Welcome", "status": "qualified", "fired": 2}]
    status, body, _ = server.get(f"/v1/analytics/topn?metric=not_qualified&by=campaign,reason&{RANGE}", shop_key)
    assert body["rows"] == [{"campaign": "Welcome", "reason": "qualification", "not_qualified": 1}]
    status, body, _ = server.get(f"/v1/analytics/topn?metric=emails_held&by=reason&{RANGE}", shop_key)
    assert body["rows"] == [{"reason": "no_email_address", "emails_held": 1}]
    status, body, _ = server.get(f"/v1/analytics/timeseries?metric=unique_leads&granularity=hour&{RANGE}"
                                 "&where=type=visit_web_page", shop_key)
    assert [(row["unique_leads"], row["unique_leads_low"], row["unique_leads_high"]) for row in body["rows"]] == \
        [(3, 3, 3)]
    assert "HyperLogLog" in body["note"]


def test_the_api_refuses_what_it_cannot_answer(served, graph_store, tmp_path):
    server, shop_key, _ = served
    assert server.get(f"/v1/analytics/timeseries?metric=events&{RANGE}")[0:2] == (
        401, {"error": "missing_key", "detail": "send an API key as Authorization: Bearer KEY, X-Orion-Key: KEY or "
                                                "?key=KEY"})
    assert server.get(f"/v1/analytics/timeseries?metric=events&{RANGE}", "ok_0000000000000000_" + "x" * 43)[0] == 401
    status, body, _ = server.get(f"/v1/analytics/timeseries?metric=events&by=url&{RANGE}", shop_key)
    assert (status, body["error"]) == (400, "bad_query") and "unknown dimension 'url'" in body["detail"]
    status, body, _ = server.get("/v1/analytics/timeseries?metric=events&from=yesterday", shop_key)
    assert status == 400 and "now-1h" in body["detail"]
    status, body, _ = server.get(f"/v1/analytics/timeseries?metric=events&top=x&{RANGE}", shop_key)
    assert status == 400
    # A key over its rate limit is told when to come back.
    keys = tmp_path / "keys.yaml"
    key, _ = add_key(keys, "shop")
    limited = Server(graph_store, keys, AnalyticsSettings(rate_limit=0.01))
    try:
        assert limited.get(f"/v1/analytics/timeseries?metric=events&{RANGE}", key)[0] == 200
        status, body, headers = limited.get(f"/v1/analytics/timeseries?metric=events&{RANGE}", key)
        assert (status, body["error"]) == (429, "rate_limited") and int(headers["Retry-After"]) >= 1
    finally:
        limited.stop()


def test_every_refusal_is_json_without_the_key_and_times_out_of_range_are_a_400(graph_store, rules_dir, tmp_path):
    # a server of its own: the module's keys keep their rate limits for the other tests
    shop_key, _ = add_key(tmp_path / "keys.yaml", "shop")
    server = Server(graph_store, tmp_path / "keys.yaml", experiments=load_experiment_rules(rules_dir))
    try:
        _check_refusals(server, shop_key)
    finally:
        server.stop()


def _check_refusals(server, shop_key: str) -> None:
    check_errors_are_json_without_the_key(server.port, shop_key, "/v1/analytics/timeseries", "GET")
    for times in ("from=now-1000000d", "to=now%2B100000000000000000d", "to=now%2B" + "9" * 400 + "d",
                  "from=now+1h"):  # (+ unescaped in a URL is a space: said in the answer)
        status, body, _ = server.get(f"/v1/analytics/timeseries?metric=events&granularity=all&{times}", shop_key)
        assert (status, body["error"]) == (400, "bad_query"), (times, body)
    status, body, _ = server.get("/v1/analytics/experiments?since=now-1000000d", shop_key)
    assert status == 400, body
    # a parameter given twice is not read as its first value; topn takes no granularity
    for asked, said in (("timeseries?metric=events&metric=zzz", "metric is given more than once"),
                        ("timeseries?metric=events&from=now-1h&from=junk", "from is given more than once"),
                        ("topn?metric=events&granularity=week", "leave granularity out")):
        status, body, _ = server.get(f"/v1/analytics/{asked}", shop_key)
        assert (status, body["error"]) == (400, "bad_query") and said in body["detail"], (asked, body)
    # the years before 1000 are written with four digits, as the API reads them back
    status, body, _ = server.get("/v1/analytics/timeseries?metric=events&from=0001-01-01T00:00:00Z"
                                 "&to=0001-01-01T01:00:00Z", shop_key)
    assert status == 200 and body["from"] == "0001-01-01T00:00:00.000Z", body


def test_the_dashboard_and_its_scripts_are_served_by_orion_itself(served):
    server, _, _ = served
    with urllib.request.urlopen(server.base + "/dashboard", timeout=30) as page:
        html = page.read().decode()
    sources = [part.split('"')[1] for part in html.split("src=")[1:]] + \
        [part.split('"')[1] for part in html.split('rel="stylesheet" href=')[1:]]
    assert sources and all(source.startswith("/static/") for source in sources)  # nothing from a CDN
    for source in sources:
        with urllib.request.urlopen(server.base + source, timeout=30) as found:
            assert found.status == 200 and len(found.read()) > 100
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(server.base + "/static/..%2Fapp.py", timeout=30)
    assert missing.value.code == 404


# --- the experiments report -----------------------------------------------------------


def reported(store: str, rules: Path, tenant: str, **options) -> dict:
    """What `orion analytics experiments --json` prints for the same store and rules."""
    opened = open_store(store)
    try:
        return experiment_report(opened, load_experiment_rules(rules).experiences[tenant], **options)
    finally:
        opened.close()


def test_the_experiments_api_answers_the_report_command_s_report(served, graph_store, rules_dir):
    server, shop_key, _ = served
    status, body, headers = server.get("/v1/analytics/experiments?tenant=shop", shop_key)
    assert status == 200
    assert body == reported(graph_store, rules_dir, "shop")
    hero = next(found for found in body["experiences"] if found["experience"] == "Hero")
    assert {row["arm"]: (row["leads"], row["impressions"], row["conversions"]) for row in hero["arms"]} == \
        {arm: (leads, leads + 1, converted) for arm, (leads, converted) in HERO.items()}
    assert int(headers["Age"]) >= 0
    # the tenant is the key's when not named; the command's --experience, --goal and --days
    assert server.get("/v1/analytics/experiments", shop_key)[1] == body
    status, body, _ = server.get("/v1/analytics/experiments?experience=Hero&goal=fill_out_form&days=9", shop_key)
    assert status == 200
    assert body == reported(graph_store, rules_dir, "shop", only=["Hero"], goal_type="fill_out_form", days=9)
    assert [found["experience"] for found in body["experiences"]] == ["Hero"]
    assert {row["arm"]: row["conversions"] for row in body["experiences"][0]["arms"]}["a"] == 3  # day 8 counts
    # and --since/--until: a period's cohort (none of the leads is first exposed after 2100)
    later = 4_102_444_800_000  # 2100-01-01
    status, body, _ = server.get(f"/v1/analytics/experiments?experience=Hero&since={later}", shop_key)
    assert status == 200 and body == reported(graph_store, rules_dir, "shop", only=["Hero"], since=later)
    assert body["since"] == "2100-01-01T00:00:00.000Z"
    assert sum(row["leads"] for row in body["experiences"][0]["arms"]) == 0
    status, body, _ = server.get("/v1/analytics/experiments?experience=Hero&until=" + str(later), shop_key)
    assert {row["arm"]: row["leads"] for row in body["experiences"][0]["arms"]} == \
        {arm: leads for arm, (leads, _) in HERO.items()}


def test_a_key_reads_the_experiments_of_its_own_tenant_only(served, graph_store, rules_dir):
    server, shop_key, bank_key = served
    status, body, _ = server.get("/v1/analytics/experiments?tenant=shop", bank_key)
    assert (status, body["error"]) == (403, "forbidden") and "experiences" not in body
    assert "hero-" not in json.dumps(body)
    status, body, _ = server.get("/v1/analytics/experiments", bank_key)
    assert status == 200 and body == reported(graph_store, rules_dir, "bank")
    (hero,) = body["experiences"]
    assert {row["arm"]: (row["leads"], row["conversions"]) for row in hero["arms"]} == {"a": (5, 5), "control": (0, 0)}
    assert server.get("/v1/analytics/experiments?tenant=shop")[0] == 401


@pytest.mark.parametrize("query, fragment", [
    ("days=0", "days must be from 1 to 3650, not 0"),
    ("days=seven", "days must be a whole number of days, not 'seven'"),
    ("days=99999", "days must be from 1 to 3650"),
    ("experience=Hreo", "no experience 'Hreo' (it has: Banner, Hero)"),
    ("goal=buy_now", "goal 'buy_now' is not an activity type of tenant 'shop'"),
    ("goal=" + "x" * 1001, "longer than 1000 characters"),
    ("since=yesterday", "now-30m"),
    ("since=2000&until=1000", "the period is empty"),
])
def test_the_experiments_api_refuses_what_it_cannot_answer(served, query, fragment):
    server, shop_key, _ = served
    status, body, _ = server.get(f"/v1/analytics/experiments?{query}", shop_key)
    assert (status, body["error"]) == (400, "bad_query") and fragment in body["detail"]


def test_an_experiments_report_is_kept_for_a_while_then_made_again(tmp_path, rules_dir):
    """A report is made once per cache period: impressions stored after it show only once
    the period has passed (the server's clock is the test's). A tenant whose rules do not
    load is told so, and a tenant without experiences gets an empty report."""
    store = f"sqlite:///{tmp_path / 'activities.db'}"
    lead = "hero-a-0"
    impression = Activity("i1", "shop", lead, "experience_impression", T0, {
        "experience": "Hero", "variant": "a", "placement": "home_hero", "control": False})
    write_activities(store, [impression])
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "shop.yaml").write_text((rules_dir / "shop.yaml").read_text())
    (rules / "broken.yaml").write_text("tenant: broken\nexperiences:\n  - name: X\n    placment: p\n")
    (rules / "plain.yaml").write_text("tenant: plain\ncampaigns: []\n")
    keys = tmp_path / "keys.yaml"
    key, _ = add_key(keys, "shop")
    broken_key, _ = add_key(keys, "broken")
    plain_key, _ = add_key(keys, "plain")
    now = [1000.0]
    server = Server(store, keys, AnalyticsSettings(experiments_cache_seconds=30), load_experiment_rules(rules),
                    clock=lambda: now[0])

    def hero_leads() -> dict:
        status, body, headers = server.get("/v1/analytics/experiments?experience=Hero", key)
        assert status == 200
        return {row["arm"]: row["leads"] for row in body["experiences"][0]["arms"]}, int(headers["Age"])

    try:
        assert hero_leads() == ({"a": 1, "b": 0, "control": 0}, 0)
        write_activities(store, [impression._replace(event_id="i2", lead_id="hero-b-0",
                                                     attributes={**impression.attributes, "variant": "b"})])
        now[0] += 29
        assert hero_leads() == ({"a": 1, "b": 0, "control": 0}, 29)  # the report made 29 s ago
        now[0] += 2
        assert hero_leads() == ({"a": 1, "b": 1, "control": 0}, 0)  # 31 s: made again
        status, body, _ = server.get("/v1/analytics/experiments", broken_key)
        assert (status, body["error"]) == (503, "rules_refused") and "orion rules validate" in body["detail"]
        assert server.get("/v1/analytics/experiments", plain_key)[:2] == (200, {"tenant": "plain", "experiences": []})
    finally:
        server.stop()


# --- the browser --------------------------------------------------------------------

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


class Chromium:
    """Headless Chromium on a fresh profile, driven over the DevTools protocol."""

    def __init__(self):
        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        if binary is None:
            pytest.fail("the dashboard test needs Chromium: apt-get install -y chromium (Debian's package; "
                        ".ci/run installs it when missing)", pytrace=False)
        self.profile = tempfile.mkdtemp(prefix="orion-chromium-")
        self.process = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}",
                                         "--remote-debugging-port=0", "about:blank"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                pytest.fail("Chromium did not start (no DevToolsActivePort)", pytrace=False)
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as answer:
            page = next(target for target in json.loads(answer.read()) if target["type"] == "page")
        import websocket

        self.socket = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self.ids = iter(range(1, 1_000_000))

    def call(self, method: str, **params) -> dict:
        ident = next(self.ids)
        self.socket.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str):
        found = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return found["result"].get("value")

    def close(self) -> None:
        if getattr(self, "socket", None) is not None:
            self.socket.close()
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


def test_the_dashboard_charts_show_what_the_graph_rolled_up(served):
    server, shop_key, _ = served
    browser = Chromium()
    try:
        browser.call("Page.navigate", url=f"{server.base}/dashboard?key={shop_key}&{RANGE}&granularity=minute")
        deadline = time.monotonic() + 60
        shown = None
        while time.monotonic() < deadline:
            shown = browser.evaluate("window.orionDashboard && JSON.stringify(window.orionDashboard)")
            if shown and (json.loads(shown)["ready"] or json.loads(shown)["error"]):
                break
            time.sleep(0.2)
        assert shown, "the dashboard never ran"
        dashboard = json.loads(shown)
        assert dashboard["error"] is None and dashboard["ready"]
        assert dashboard["tenant"] == "shop"
        for chart, series in EXPECTED.items():
            drawn = dashboard["charts"][chart]
            assert drawn["x"] == [T0 + minute * MINUTE for minute in range(MINUTES)]
            assert dict(zip(drawn["series"], drawn["y"])) == series, chart
        # uPlot drew every chart (a canvas each), and the totals tables say the same numbers.
        assert browser.evaluate("document.querySelectorAll('.chart .uplot canvas').length") == 4
        totals = json.loads(browser.evaluate(
            "JSON.stringify([...document.querySelectorAll('.chart')].map(section => [section.id, "
            "[...section.querySelectorAll('.totals tr')].map(row => [...row.cells].map(cell => cell.textContent))]))"))
        assert dict(totals)["events"] == [["visit_web_page", "4"], ["fill_out_form", "3"], ["data_value_changes", "1"]]
        assert dict(totals)["fired"] == [["Every visit", "4"], ["Welcome", "2"]]
        assert dict(totals)["emails"] == [["queued", "1"], ["held", "1"]]
        assert dict(totals)["leads"] == [["unique leads", "2"]]
        # The experiments panel: a table per experience, a row per arm, as the report says.
        assert dashboard["experiments"]["error"] is None
        tables = dict(json.loads(browser.evaluate(
            "JSON.stringify([...document.querySelectorAll('#experiments table.experiment')].map(table => "
            "[table.dataset.experience, [...table.tBodies[0].rows].map(row => "
            "[...row.cells].map(cell => cell.textContent))]))")))
        assert set(tables) == {"Hero", "Banner"}
        # a: 2 of 4 leads against control's 1 of 4, lift +100%, Katz's interval
        # exp(ln 2 +- 1.96 * sqrt(1/2 - 1/4 + 1/1 - 1/4)) - 1; b: no conversion, no lift.
        low, high = 2 * math.exp(-Z_95) - 1, 2 * math.exp(Z_95) - 1
        assert tables["Hero"] == [
            ["a", "4", "5", "2", "50.0%", "+100.0%", f"{low * 100:+.1f}% .. {high * 100:+.1f}%"],
            ["b", "3", "4", "0", "0.0%", "n/a", "n/a"],
            ["control", "4", "5", "1", "25.0%", "control", ""],
        ]
        assert tables["Banner"] == [["only", "2", "2", "0", "n/a", "n/a", "n/a"]]
        assert dashboard["experiments"]["tables"] == tables
    finally:
        browser.close()

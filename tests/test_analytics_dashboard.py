"""The analytics HTTP API and its dashboard, against roll-ups the Beam graph wrote: the
real server (aiohttp, on a free port) started by the test, the API's answers and
refusals, and the dashboard page loaded in headless Chromium (Debian's `chromium`,
driven over the DevTools protocol), whose charts must show the numbers the input
makes. A machine without Chromium fails the browser test with what to install.

    .venv/bin/python -m pytest -q tests/test_analytics_dashboard.py
"""
from __future__ import annotations

import asyncio
import json
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

from orion.analytics.app import Analytics, AnalyticsSettings, run_server
from orion.collector.keys import KeyStore, add_key
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
"""
OTHER = """
tenant: bank
campaigns:
  - name: Bank visit
    triggers: [{activity: visit_web_page}]
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


@pytest.fixture(scope="module")
def graph_store(tmp_path_factory) -> str:
    """The Beam graph (bounded, with flows) run over EVENTS, its roll-ups in a SQLite store."""
    folder = tmp_path_factory.mktemp("analytics")
    rules = folder / "rules"
    rules.mkdir()
    (rules / "shop.yaml").write_text(RULES)
    (rules / "bank.yaml").write_text(OTHER)
    store = f"sqlite:///{folder / 'activities.db'}"
    with beam.Pipeline() as pipeline:
        activities, dead = pipeline | beam.Create(EVENTS) | ParseActivities(str(rules))
        build_activity_graph(activities, dead, GraphSettings(str(rules), bounded=True, seed_store_uri=store,
                                                             rollup_store_uri=store),
                             store_sink=WriteActivities(store), profile_sink=WriteProfiles(store),
                             outbox_sink=QueueEmails(f"sqlite:///{folder / 'outbox.db'}"))
    return store


class Server:
    """`orion analytics serve` in a thread of this process, on a free port."""

    def __init__(self, store: str, keys: Path, settings: AnalyticsSettings = AnalyticsSettings()):
        self.analytics = Analytics(KeyStore(keys), store, settings)
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
def served(graph_store, tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "keys.yaml"
    shop_key, _ = add_key(keys, "shop")
    bank_key, _ = add_key(keys, "bank")
    server = Server(graph_store, keys)
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
    finally:
        browser.close()

"""End to end: `python -m orion.collector` (the `orion collect` command) takes events over
HTTP and publishes them to the real Pub/Sub emulator; `orion run --subscription` reads
them, stores every accepted activity and fires the trigger; refused events go nowhere."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from collector_services import RULES, event, new_topic, pubsub, request  # noqa: F401
from orion.collector.keys import add_key
from orion.store import open_store
from orion.testing.emulators import emulator_environment

ORION = Path(sys.executable).with_name("orion")


def test_posted_events_are_stored_and_fire_the_trigger(pubsub, tmp_path, monkeypatch):
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub.host)
    topic, subscription = new_topic()
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "shop.yaml").write_text(RULES)
    keys = tmp_path / "keys.yaml"
    key, _ = add_key(keys, "shop", "end to end")

    collector = subprocess.Popen(
        [sys.executable, "-m", "orion.collector", "--topic", topic, "--keys", str(keys), "--rules", str(rules),
         "--port", "0"], env=emulator_environment(pubsub), stdout=subprocess.PIPE,
        stderr=open(tmp_path / "collector.log", "w"), text=True)
    try:
        line = collector.stdout.readline()
        found = re.search(r"listening on http://127\.0\.0\.1:(\d+)/", line)
        assert found, line + (tmp_path / "collector.log").read_text()[-3000:]
        port = int(found.group(1))
        events = [event(n, tenant=None, url="https://shop.example/pricing/é" if n % 2 else "https://shop.example/")
                  for n in range(6)]
        status, _, answer = request("POST", port, "/v1/events", events + [event(9, tenant="rival")], key)
        assert status == 200 and answer["accepted"] == 6 and answer["results"][-1]["reason"] == "wrong_tenant"
        status, _, answer = request("POST", port, "/v1/events", event(7, tenant="shop",
                                    url="https://shop.example/pricing"), key)  # a single event
        assert status == 200 and answer["accepted"] == 1
    finally:
        collector.terminate()
        output, _ = collector.communicate(timeout=30)
    assert collector.returncode == 0, output + (tmp_path / "collector.log").read_text()[-3000:]
    accepted = events + [event(7, url="https://shop.example/pricing")]

    store_uri = f"sqlite:///{tmp_path / 'store.db'}"
    result = subprocess.run(
        [str(ORION), "run", "--rules", str(rules), "--subscription", subscription, "--store", store_uri,
         "--out-dir", str(tmp_path / "out"), "--allowed-lateness", "1", "--duration", "30"],
        env=emulator_environment(pubsub), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open_store(store_uri) as store:
        assert store.count() == len(accepted)
        history = store.history("shop", "L2")
    assert [(a.event_id, a.tenant, a.attributes["url"]) for a in history] == [  # newest first
        ("e7", "shop", "https://shop.example/pricing"), ("e2", "shop", "https://shop.example/")]
    outcomes = [json.loads(line) for f in (tmp_path / "out").glob("outcomes-*.jsonl")
                for line in f.read_text().splitlines()]
    fired = sorted(o["event_id"] for o in outcomes if o["qualified"])
    assert fired == sorted(e["event_id"] for e in accepted if "pricing" in e["attributes"]["url"])
    dead = [line for f in (tmp_path / "out").glob("dead-letters-*.jsonl") for line in f.read_text().splitlines()]
    assert dead == []

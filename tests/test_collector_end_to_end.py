"""End to end: `python -m orion.collector` (the `orion collect` command) takes events over
HTTP and publishes them to the real Pub/Sub emulator; `orion run --subscription` reads
them, stores every accepted activity and fires the trigger; refused events go nowhere.
Beside the collector's, messages from another producer carry the input attacks (an array
item nested 1,500 levels, a lone surrogate, an oversized activity, an array over 1 MB of
small ones): the run ends with exit 0, every good activity stored, each attack a dead
letter with its reason. A malformed request holding the key leaves no trace of it in
the collector's log."""
from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

from collector_services import RULES, event, new_topic, pubsub, request  # noqa: F401
from orion.activities import MAX_ACTIVITY_BYTES
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
        with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
            connection.sendall(f"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization Bearer {key}\r\n\r\n".encode())
            answer = b""
            while chunk := connection.recv(65536):  # answered, then closed
                answer += chunk
        assert answer.split(b" ", 2)[1] == b"400" and key.encode() not in answer
    finally:
        collector.terminate()
        output, _ = collector.communicate(timeout=30)
    log = (tmp_path / "collector.log").read_text()
    assert collector.returncode == 0, output + log[-3000:]
    assert "not valid HTTP" in log and key.split("_", 2)[2] not in log
    accepted = events + [event(7, url="https://shop.example/pricing")]
    from_others, attacks = publish_attacks(topic)
    accepted += from_others

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
    assert sorted((json.loads(d)["reason"], json.loads(d)["source"][len(subscription):]) for d in dead) == \
        sorted(attacks)


def publish_attacks(topic: str) -> tuple[list[dict], list[tuple[str, str]]]:
    """Messages of another producer: good activities beside each input attack. Returns
    the good activities and the (reason, "[index]" in its array or "") of each expected dead letter."""
    from google.cloud import pubsub_v1

    def other(n: int, url: str = "https://shop.example/", **fields) -> dict:
        return {**event(100 + n, url=url), "lead_id": f"P{n}", **fields}  # a lead each: never late behind another

    deep = json.dumps(other(0)).replace('"https://shop.example/"', "[" * 1500 + "]" * 1500)
    surrogate = json.dumps(other(1, lead_id="\ud800"))
    big = other(2, url="https://shop.example/" + "x" * 1_100_000)
    many = [other(10 + n, url="https://shop.example/" + "y" * 20_000) for n in range(60)]
    good = [other(n) for n in range(3, 8)]
    messages = [
        ("[" + ",".join([json.dumps(good[0]), deep, surrogate, json.dumps(good[1])]) + "]").encode(),
        json.dumps(many).encode(),                       # over 1 MB in all, every activity small
        json.dumps(big).encode(),                        # one activity over the limit
        json.dumps([good[2], big, good[3]]).encode(),    # ... and one inside an array
        json.dumps(good[4]).encode(),
    ]
    assert len(messages[1]) > MAX_ACTIVITY_BYTES
    publisher = pubsub_v1.PublisherClient()
    try:
        for future in [publisher.publish(topic, message) for message in messages]:
            future.result(timeout=30)
    finally:
        publisher.transport.close()
    expected = [("malformed_json", "[1]"), ("malformed_json", "[2]"), ("too_large", ""), ("too_large", "[1]")]
    return good + many, expected

"""The HTTP intake collector against the real Pub/Sub emulator: keys, tenants, sizes,
bodies, per-event answers, rate limits, metrics, and Pub/Sub down or hung (503, nothing
half-accepted)."""
from __future__ import annotations

import concurrent.futures
import json
import os
import stat
import subprocess
import sys
import time

from prometheus_client.parser import text_string_to_metric_families

from collector_services import (FlakyProxy, event, new_topic, pulled_events, request,  # noqa: F401
                                emulator_env, keys, pubsub, rules_dir, start_collector)
from orion.collector.app import load_types
from orion.collector.keys import read_keys


def test_requests_without_a_valid_key_are_refused_401_and_publish_nothing(start_collector, keys):
    topic, subscription = new_topic()
    collector = start_collector(topic)
    body = [event(1)]
    status, headers, answer = collector.post(body)
    assert (status, answer["error"]) == (401, "missing_key")
    assert headers["WWW-Authenticate"].startswith("Bearer")
    status, _, answer = collector.post(body, key="not-a-key")
    assert (status, answer["error"]) == (401, "invalid_key")
    forged = keys.shop[:-4] + ("AAAA" if not keys.shop.endswith("AAAA") else "BBBB")  # right id, wrong secret
    assert collector.post(body, key=forged)[0] == 401
    assert collector.post(body, headers={"X-Orion-Key": keys.shop.upper()})[0] == 401
    assert pulled_events(subscription, 0.5) == []


def test_a_key_is_taken_from_header_or_query_and_revoking_it_takes_effect_without_restart(start_collector, keys):
    topic, subscription = new_topic()
    collector = start_collector(topic)
    assert collector.post([event(1)], headers={"X-Orion-Key": keys.shop})[0] == 200
    assert collector.post([event(2)], path=f"/v1/events?key={keys.shop}",  # navigator.sendBeacon's way
                          headers={"Content-Type": "text/plain;charset=UTF-8"})[0] == 200
    subprocess.run([sys.executable, "-m", "orion.collector", "keys", "revoke", keys.shop_record.id,
                    "--keys", str(keys.path)], check=True, capture_output=True)
    time.sleep(1.2)  # the key store looks at the file at most once a second
    status, _, answer = collector.post([event(3)], key=keys.shop)
    assert (status, answer["error"]) == (401, "invalid_key")
    assert sorted(e["event_id"] for e in pulled_events(subscription)) == ["e1", "e2"]


def test_a_key_of_one_tenant_never_writes_another_tenants_events(start_collector, keys, rules_dir):
    topic, subscription = new_topic()
    collector = start_collector(topic)
    body = [event(1, tenant="rival"), event(2, tenant=None), event(3, tenant="shop"),
            event(4, type="store_visit", attributes={"store": "Berlin"}, tenant=None)]
    status, _, answer = collector.post(body, key=keys.shop)
    assert status == 200
    assert [(r["event_id"], r["status"], r.get("reason")) for r in answer["results"]] == [
        ("e1", "refused", "wrong_tenant"), ("e2", "accepted", None), ("e3", "accepted", None),
        ("e4", "accepted", None)]
    # rival's key: shop's events are refused; shop's custom type is unknown to rival
    status, _, answer = collector.post([event(5, tenant="shop"), event(6, tenant=None, type="store_visit",
                                                                       attributes={"store": "Paris"})],
                                       key=keys.rival)
    assert status == 422
    assert [r["reason"] for r in answer["results"]] == ["wrong_tenant", "unknown_type"]
    pulled = pulled_events(subscription, types=load_types(rules_dir))
    assert sorted((e["event_id"], e["tenant"]) for e in pulled) == [("e2", "shop"), ("e3", "shop"), ("e4", "shop")]


def test_a_batch_with_some_bad_events_answers_for_each_event_and_publishes_only_the_good(start_collector, keys):
    topic, subscription = new_topic()
    collector = start_collector(topic)
    good = [event(n) for n in range(5)]
    bad = [
        "[not json",                                                           # malformed_json (JSONL line)
        json.dumps({"event_id": "m", "tenant": "shop", "type": "visit_web_page"}),  # missing_field
        json.dumps(event(10, colour="red")),                                   # bad_field
        json.dumps(event(11, type="teleported")),                              # unknown_type
        json.dumps(event(12, attributes={"url": 7})),                          # bad_attribute
        json.dumps(event(13, occurred_at="yesterday")),                        # bad_timestamp
    ]
    lines = [json.dumps(good[0]), bad[0], json.dumps(good[1]), *bad[1:], *map(json.dumps, good[2:])]
    status, _, answer = collector.post("\n".join(lines) + "\n", key=keys.shop,
                                       headers={"Content-Type": "application/x-ndjson"})
    assert status == 200
    assert (answer["accepted"], answer["refused"]) == (5, 6)
    reasons = [r.get("reason") for r in answer["results"]]
    assert reasons == [None, "malformed_json", None, "missing_field", "bad_field", "unknown_type",
                       "bad_attribute", "bad_timestamp", None, None, None]
    assert all(r["detail"] for r in answer["results"] if r["status"] == "refused")
    assert sorted(e["event_id"] for e in pulled_events(subscription)) == [f"e{n}" for n in range(5)]


def test_bodies_that_are_not_json_or_not_utf8_or_empty_are_refused_400(start_collector, keys):
    topic, subscription = new_topic()
    collector = start_collector(topic)
    for body in (b'{"event_id": "broken"', b"[1, 2", b"\xff\xfe{}", b"", b"   ", b"[]"):
        status, _, answer = collector.post(body, key=keys.shop)
        assert (status, answer["error"]) == (400, "malformed_json"), body
    status, _, answer = collector.post([1, "two", None], key=keys.shop)
    assert status == 422 and [r["reason"] for r in answer["results"]] == ["malformed_json"] * 3
    assert pulled_events(subscription, 0.5) == []


def test_oversized_bodies_and_batches_are_refused_413(start_collector, keys):
    topic, subscription = new_topic()
    collector = start_collector(topic, max_body_bytes=2000, max_batch=3)
    big = [event(1, url="https://shop.example/" + "x" * 3000)]
    status, _, answer = collector.post(big, key=keys.shop)
    assert (status, answer["error"]) == (413, "too_large")
    status, _, answer = collector.post([event(n) for n in range(4)], key=keys.shop)
    assert (status, answer["error"]) == (413, "too_many_events")
    # a chunked body announces no length: cut off while reading
    connection = __import__("http.client").client.HTTPConnection("127.0.0.1", collector.port, timeout=30)
    connection.request("POST", "/v1/events", body=iter([json.dumps(big).encode()[i:i + 500]
                                                          for i in range(0, 3200, 500)]),
                       headers={"Authorization": f"Bearer {keys.shop}"}, encode_chunked=True)
    response = connection.getresponse()
    assert (response.status, json.loads(response.read())["error"]) == (413, "too_large")
    connection.close()
    assert collector.post([event(n) for n in range(3)], key=keys.shop)[0] == 200
    assert len(pulled_events(subscription)) == 3


def test_unicode_survives_from_request_to_message(start_collector, keys):
    topic, subscription = new_topic()
    collector = start_collector(topic)
    texts = ["https://shop.example/prix-été", "https://shop.example/价格", "https://shop.example/😀🚀",
             "https://shop.example/שלום", "https://shop.example/\u0000nul\u2028sep"]
    body = [event(n, url=text, lead_id=f"Zoë-{n}") for n, text in enumerate(texts)]
    status, _, answer = collector.post(json.dumps(body, ensure_ascii=False), key=keys.shop,
                                       headers={"Content-Type": "application/json; charset=utf-8"})
    assert status == 200 and answer["accepted"] == len(texts)
    pulled = sorted(pulled_events(subscription), key=lambda e: e["event_id"])
    assert [(e["lead_id"], e["attributes"]["url"]) for e in pulled] == [(f"Zoë-{n}", t) for n, t in enumerate(texts)]
    status, _, answer = collector.post([event(9, attributes={"url": 5}, lead_id="Zoë")], key=keys.shop)
    assert answer["results"][0]["event_id"] == "e9"


def test_each_key_has_its_own_rate_limit_429_with_retry_after(start_collector, keys):
    topic, _ = new_topic()
    collector = start_collector(topic, rate_limit=0.5, rate_burst=2)
    assert [collector.post([event(n)], key=keys.shop)[0] for n in range(2)] == [200, 200]
    status, headers, answer = collector.post([event(3)], key=keys.shop)
    assert (status, answer["error"]) == (429, "rate_limited")
    assert 1 <= int(headers["Retry-After"]) <= 2
    assert collector.post([event(4, tenant="rival")], key=keys.rival)[0] != 429


def test_concurrent_requests_share_messages_that_the_graph_can_parse(start_collector, keys):
    topic, subscription = new_topic()
    collector = start_collector(topic, flush_seconds=0.2, flush_events=10_000)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda n: collector.post([event(n * 10 + i) for i in range(10)], key=keys.shop),
                                range(40)))
    assert [a[0] for a in answers] == [200] * 40
    from orion.testing.pubsub import drain

    messages = drain(subscription)
    assert len(messages) < 40  # many requests per message
    assert sum(int(m.attributes["events"]) for m in messages) == 400
    assert sorted(e["event_id"] for e in pulled_events_from(messages)) == sorted(f"e{n}" for n in range(400))


def pulled_events_from(messages) -> list[dict]:
    return [e for m in messages for e in json.loads(m.data)]


def test_healthz_and_prometheus_metrics(start_collector, keys):
    topic, _ = new_topic()
    collector = start_collector(topic)
    collector.post([event(1), event(2, tenant="rival")], key=keys.shop)
    collector.post([event(3)])
    status, _, health = collector.get("/healthz")
    assert status == 200 and health["status"] == "ok" and health["pubsub"] == "ok"
    status, headers, text = collector.get("/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("orion_collector_events_accepted_total", (("tenant", "shop"),))] == 1
    assert samples[("orion_collector_events_refused_total", (("reason", "wrong_tenant"), ("tenant", "shop")))] == 1
    assert samples[("orion_collector_requests_total", (("code", "401"), ("route", "/v1/events")))] == 1
    assert samples[("orion_collector_publish_seconds_count", (("result", "ok"),))] == 1
    assert samples[("orion_collector_published_events_total", ())] == 1


def test_cors_preflight_allows_web_pages_to_send_the_key(start_collector):
    topic, _ = new_topic()
    collector = start_collector(topic)
    status, headers, _ = request("OPTIONS", collector.port, "/v1/events",
                                 headers={"Origin": "https://shop.example",
                                          "Access-Control-Request-Method": "POST"})
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert "Authorization" in headers["Access-Control-Allow-Headers"]


def test_pubsub_down_answers_503_and_nothing_of_the_request_is_published(start_collector, keys, pubsub,
                                                                        monkeypatch):
    topic, subscription = new_topic()
    proxy = FlakyProxy(pubsub.port)
    try:
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", proxy.host)
        collector = start_collector(topic, publish_timeout=2.0, retry_after=3)
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub.host)
        assert collector.post([event(1), event(2)], key=keys.shop)[0] == 200

        proxy.set_mode("refuse")
        status, headers, answer = collector.post([event(3), event(4), event(5, tenant="rival")], key=keys.shop)
        assert (status, answer["error"], answer["accepted"]) == (503, "unavailable", 0)
        assert headers["Retry-After"] == "3"
        assert collector.get("/healthz")[2]["pubsub"].startswith("failing")

        proxy.set_mode("forward")
        accepted_after = []
        for attempt in range(20):  # as a client would: retry after Retry-After (shortened here)
            status, _, answer = collector.post([event(100 + attempt)], key=keys.shop)
            if status == 200:
                accepted_after.append(f"e{100 + attempt}")
                break
            assert status == 503
            time.sleep(0.5)
        assert accepted_after, "the collector did not recover once Pub/Sub was back"
        assert sorted(e["event_id"] for e in pulled_events(subscription)) == sorted(["e1", "e2", *accepted_after])
    finally:
        proxy.close()


def test_pubsub_hung_answers_503_after_the_publish_timeout_and_backlog_is_bounded(start_collector, keys,
                                                                                 pubsub, monkeypatch):
    topic, subscription = new_topic()
    proxy = FlakyProxy(pubsub.port)
    try:
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", proxy.host)
        collector = start_collector(topic, publish_timeout=4.0, max_pending_bytes=2000)
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub.host)
        proxy.set_mode("swallow")
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            first = pool.submit(collector.post, [event(n) for n in range(10)], keys.shop)  # ~1.3 KB waiting
            time.sleep(0.3)
            status, _, answer = collector.post([event(n) for n in range(10, 20)], key=keys.shop)
            assert status == 503 and "already waiting" in answer["detail"]
            # Refused at once, not buffered behind the first: that one is still waiting.
            assert not first.done()
            status, headers, answer = first.result()
        assert (status, answer["accepted"]) == (503, 0)
        assert "did not answer within 4 s" in answer["detail"]
        proxy.set_mode("forward")
        for _ in range(20):
            if collector.post([event(99)], key=keys.shop)[0] == 200:
                break
            time.sleep(0.5)
        assert [e["event_id"] for e in pulled_events(subscription)] == ["e99"]
    finally:
        proxy.close()


def test_a_closed_pubsub_port_answers_503(start_collector, keys, monkeypatch):
    from orion.testing.emulators import free_port

    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{free_port()}")
    collector = start_collector("projects/orion-test/topics/nowhere", publish_timeout=1.0)
    status, headers, answer = collector.post([event(1)], key=keys.shop)
    assert (status, answer["accepted"]) == (503, 0) and "Retry-After" in headers


def test_keys_command_prints_a_key_once_and_stores_only_its_hash(tmp_path):
    path = tmp_path / "keys.yaml"
    added = subprocess.run([sys.executable, "-m", "orion.collector", "keys", "add", "--tenant", "shop",
                            "--label", "website", "--keys", str(path)], capture_output=True, text=True, check=True)
    key = added.stdout.strip()
    assert key.startswith("ok_") and len(key) == 63
    text = path.read_text()
    assert key not in text and key.split("_", 2)[2] not in text
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    (record,) = read_keys(path).values()
    assert (record.tenant, record.label) == ("shop", "website") and key.split("_")[1] == record.id
    listed = subprocess.run([sys.executable, "-m", "orion.collector", "keys", "list", "--keys", str(path)],
                            capture_output=True, text=True, check=True).stdout
    assert record.id in listed and key not in listed

"""The HTTP intake collector against the real Pub/Sub emulator: keys, tenants, sizes,
bodies, per-event answers, rate limits, metrics, Pub/Sub down or hung (503, nothing
half-accepted), and hostile input: deep nesting, lone surrogates, oversized events, gzip
bombs, slow clients and malformed requests carrying the key (a 4xx, never a 500, the
other events and requests unaffected, no key in answers or logs)."""
from __future__ import annotations

import concurrent.futures
import gzip
import json
import logging
import os
import socket
import stat
import subprocess
import sys
import time
import zlib

import pytest
from prometheus_client.parser import text_string_to_metric_families

from collector_services import (FlakyProxy, answers_by_code, check_errors_are_json_without_the_key,  # noqa: F401
                                event, metric_samples, new_topic, pulled_events, request, emulator_env, keys, pubsub,
                                rules_dir, start_collector)
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


# --- bad input: a 4xx with its reason, never a 500; the batch's other events go on --------


def deep_event(n: int, depth: int) -> str:
    """An event (JSON text) whose attributes nest so that the whole is `depth` levels."""
    text = json.dumps(event(n, type="fill_out_form", attributes={"form": "f", "fields": {"x": "deep"}}))
    inner = depth - 4  # the event, its attributes, the fields object
    return text.replace('"deep"', "[" * inner + "]" * inner)


def test_deep_nesting_and_lone_surrogates_are_refused_per_event_and_the_good_ones_published(start_collector, keys):
    topic, subscription = new_topic()
    collector = start_collector(topic)
    surrogate_lead = json.dumps(event(3, lead_id="L\ud800"))       # JSON text with the escape \ud800
    surrogate_tenant = json.dumps(event(4, tenant="shop\udfff"))
    assert "\\ud800" in surrogate_lead
    bad = [deep_event(1, 1_500), deep_event(2, 300), surrogate_lead, surrogate_tenant]
    array = "[" + ",".join([json.dumps(event(10)), *bad, json.dumps(event(11))]) + "]"
    status, _, answer = collector.post(array, key=keys.shop)
    assert status == 200
    assert [(r["status"], r.get("reason")) for r in answer["results"]] == [
        ("accepted", None), *[("refused", "malformed_json")] * 4, ("accepted", None)]
    assert "depth" in answer["results"][1]["detail"] and "surrogate" in answer["results"][3]["detail"]
    jsonl = "\n".join([json.dumps(event(12)), *bad, json.dumps(event(13))])
    status, _, answer = collector.post(jsonl, key=keys.shop, headers={"Content-Type": "application/x-ndjson"})
    assert status == 200 and (answer["accepted"], answer["refused"]) == (2, 4)
    # A body of one such event: what the JSON parser refuses is a 400 for the body, what
    # it reads (300 levels) a 422 for the event; the reason is the same.
    answers = [collector.post(single, key=keys.shop) for single in bad]
    assert [(status, answer.get("error") or answer["results"][0]["reason"]) for status, _, answer in answers] == [
        (400, "malformed_json"), (422, "malformed_json"), (400, "malformed_json"), (400, "malformed_json")]
    assert sorted(e["event_id"] for e in pulled_events(subscription)) == ["e10", "e11", "e12", "e13"]
    codes = answers_by_code(collector)
    assert codes[("/v1/events", "200")] == 2 and codes[("/v1/events", "400")] == 3
    assert codes[("/v1/events", "422")] == 1
    assert not [code for (_, code) in codes if code.startswith("5")]


def test_an_event_over_the_graphs_size_limit_is_refused_too_large(start_collector, keys):
    """The collector takes what the graph takes: an event may be at most
    MAX_ACTIVITY_BYTES as published (tenant filled in), the graph's own limit."""
    from orion.activities import MAX_ACTIVITY_BYTES

    topic, subscription = new_topic()
    collector = start_collector(topic, max_body_bytes=4_000_000)
    small = event(1, tenant=None)
    big = event(2, url="https://shop.example/" + "x" * 1_100_000)
    base = len(json.dumps(event(3), separators=(",", ":")).encode()) - len("https://shop.example/")
    largest = event(3, url="x" * (MAX_ACTIVITY_BYTES - base))  # exactly the limit as published
    one_more = event(4, url="x" * (MAX_ACTIVITY_BYTES - base + 1), tenant=None)  # over once the tenant is in
    status, _, answer = collector.post([small, big, largest, one_more], key=keys.shop)
    assert status == 200
    assert [r.get("reason") for r in answer["results"]] == [None, "too_large", None, "too_large"]
    assert "at most 1,000,000" in answer["results"][1]["detail"]
    pulled = pulled_events(subscription)  # pulled_events checks the graph reads them without a dead letter
    assert sorted(e["event_id"] for e in pulled) == ["e1", "e3"]
    # default body limit: the same 1,000,000 bytes
    default = start_collector(topic)
    status, _, answer = default.post(big, key=keys.shop)
    assert (status, answer["error"]) == (413, "too_large")


# --- compressed bodies --------------------------------------------------------------------


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """About 500 KB of gzip that inflates to 500 MB."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    bomb = b"".join(compressor.compress(zeros) for _ in range(500)) + compressor.flush()
    assert len(bomb) < 600_000
    return bomb


def test_compressed_bodies_are_inflated_after_the_key_check_and_capped(start_collector, keys, gzip_bomb):
    topic, subscription = new_topic()
    collector = start_collector(topic)
    body = json.dumps([event(n) for n in range(3)]).encode()
    gzip_headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    assert collector.post(gzip.compress(body), key=keys.shop, headers=gzip_headers)[0] == 200
    assert collector.post(zlib.compress(json.dumps(event(7)).encode()), key=keys.shop,
                          headers={"Content-Encoding": "deflate"})[0] == 200

    # Without a valid key the bomb is refused unread, and the server serves on meanwhile.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        bombs = pool.submit(lambda: [collector.post(gzip_bomb, key="ok_0000000000000000_" + "A" * 43,
                                                    headers=gzip_headers)[0] for _ in range(3)])
        slowest = 0.0
        while not bombs.done():
            started = time.monotonic()
            assert collector.get("/healthz")[0] == 200
            slowest = max(slowest, time.monotonic() - started)
        assert bombs.result() == [401] * 3
    assert slowest < 1.0, f"/healthz took {slowest:.2f} s while a gzip bomb was sent"
    # With a valid key: inflated only as far as the body limit, or as its ratio allows.
    status, _, answer = collector.post(gzip_bomb, key=keys.shop, headers=gzip_headers)
    assert (status, answer["error"]) == (413, "too_large") and "more than 1,000,000 bytes" in answer["detail"]
    small_bomb = gzip.compress(b" " * 200_000)  # within the body limit once inflated, but 200 KB from 300 bytes
    status, _, answer = collector.post(small_bomb, key=keys.shop, headers=gzip_headers)
    assert (status, answer["error"]) == (413, "too_large") and "100 times" in answer["detail"]
    status, _, answer = collector.post(gzip.compress(body)[:-12], key=keys.shop, headers=gzip_headers)
    assert (status, answer["error"]) == (400, "bad_encoding")
    status, _, answer = collector.post(b"not gzip", key=keys.shop, headers=gzip_headers)
    assert (status, answer["error"]) == (400, "bad_encoding")
    status, _, answer = collector.post(body, key=keys.shop, headers={"Content-Encoding": "br"})
    assert (status, answer["error"]) == (415, "bad_encoding")
    assert sorted(e["event_id"] for e in pulled_events(subscription)) == ["e0", "e1", "e2", "e7"]


# --- slow clients: idle, header and body timeouts --------------------------------------------


def read_until_closed(sock: socket.socket, limit: float = 30.0) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took.
    Fails if it is still open after `limit` seconds."""
    sock.settimeout(limit)
    started = time.monotonic()
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except socket.timeout:
        pytest.fail(f"the server kept the connection open for {limit} s; received {received[:200]!r}")
    except ConnectionResetError:
        pass
    return received, time.monotonic() - started


def test_a_client_that_stalls_before_its_request_is_complete_is_disconnected(start_collector, keys):
    topic, _ = new_topic()
    collector = start_collector(topic, idle_timeout=1.0, body_timeout=1.0)
    with socket.create_connection(("127.0.0.1", collector.port)) as silent:  # never sends a byte
        received, took = read_until_closed(silent)
        assert received == b"" and took < 10  # closed after the 1 s idle timeout, give or take a loaded machine
    with socket.create_connection(("127.0.0.1", collector.port)) as slowloris:  # half the headers, then nothing
        slowloris.sendall(f"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {keys.shop}\r\n".encode())
        time.sleep(0.3)
        slowloris.sendall(b"X-Trickle: 1\r\n")  # a trickle of header lines does not extend the timeout
        received, took = read_until_closed(slowloris)
        assert received == b"" and took < 10
    with socket.create_connection(("127.0.0.1", collector.port)) as slow_body:  # headers, a tenth of the body
        slow_body.sendall(f"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {keys.shop}\r\n"
                          "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n[{\"event\"".encode())
        answer, _ = read_until_closed(slow_body)
        assert answer.startswith(b"HTTP/1.1 408 ") and b'"body_timeout"' in answer
    with socket.create_connection(("127.0.0.1", collector.port)) as idle:  # one request, then idle keep-alive
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer, _ = read_until_closed(idle)
        assert answer.startswith(b"HTTP/1.1 200 ")
    assert collector.get("/healthz")[0] == 200  # and the server serves on
    assert answers_by_code(collector)[("/v1/events", "408")] == 1


# --- the connection cap: idle connections make room, busy ones are kept, the rest get 503 ----------


def slow_body(port: int, key: str, n: int) -> tuple[socket.socket, bytes]:
    """A connection whose request is under way: headers and a few bytes of its body sent;
    returns it and the rest of the body."""
    body = json.dumps([event(n)]).encode()
    connection = socket.create_connection(("127.0.0.1", port))
    connection.sendall(f"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n"
                       f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body[:10])
    return connection, body[10:]


def closed_by_server(connection: socket.socket, wait: float) -> bool:
    connection.settimeout(wait)
    try:
        return connection.recv(65536) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_idle_connections_past_the_cap_are_closed_to_make_room_and_busy_ones_are_kept(start_collector, keys):
    """Slowloris: a hundred connections that send half their headers and wait. Past the
    cap the oldest of them is closed for each new one, so the server holds at most its cap
    and new clients are served at once; a connection with a request under way is kept."""
    topic, subscription = new_topic()
    collector = start_collector(topic, max_connections=10, idle_timeout=60, body_timeout=60)
    busy, rest = slow_body(collector.port, keys.shop, 1)
    time.sleep(0.3)
    idle = []
    try:
        for _ in range(100):
            connection = socket.create_connection(("127.0.0.1", collector.port))
            connection.sendall(f"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {keys.shop}\r\n".encode())
            idle.append(connection)
            time.sleep(0.01)
        assert collector.post([event(2)], key=keys.shop)[0] == 200  # a new client, served at once
        assert collector.get("/healthz")[0] == 200
        closed = [closed_by_server(connection, 5.0 if n < 85 else 0.5) for n, connection in enumerate(idle)]
        assert all(closed[:85]) and closed.count(True) >= 90 and not all(closed)  # the newest stay open
        busy.sendall(rest)
        answer, _ = read_until_closed(busy)
        assert answer.startswith(b"HTTP/1.1 200 ")  # the request under way was never cut off
        samples = metric_samples(collector)
        assert samples[("orion_collector_connections_open", ())] <= 10
        assert samples[("orion_collector_connections_shed_total", (("action", "idle_closed"),))] >= 90
        assert ("orion_collector_connections_shed_total", (("action", "refused"),)) not in samples
    finally:
        busy.close()
        for connection in idle:
            connection.close()
    assert sorted(e["event_id"] for e in pulled_events(subscription)) == ["e1", "e2"]


def test_past_the_cap_with_every_connection_busy_a_new_one_gets_a_quick_503(start_collector, keys):
    topic, subscription = new_topic()
    collector = start_collector(topic, max_connections=3, body_timeout=60, retry_after=4)
    busy = [slow_body(collector.port, keys.shop, n) for n in range(3)]
    try:
        time.sleep(0.3)
        # Answered at once: the connections under way hold their slots for up to the
        # 60 s body timeout, so an answer that waited for one would be a 200.
        status, headers, answer = collector.post([event(9)], key=keys.shop)  # a real HTTP client reads it
        assert (status, answer["error"], headers["Retry-After"]) == (503, "over_capacity", "4")
        assert "at most 3 connections" in answer["detail"]
        with socket.create_connection(("127.0.0.1", collector.port)) as raw:  # and a client that sends nothing
            answer, _ = read_until_closed(raw, 10)
        assert answer.startswith(b"HTTP/1.1 503 ") and b"Connection: close" in answer
        for connection, rest in busy:  # the requests under way are served on
            connection.sendall(rest)
            assert read_until_closed(connection)[0].startswith(b"HTTP/1.1 200 ")
    finally:
        for connection, _ in busy:
            connection.close()
    assert collector.get("/healthz")[0] == 200  # room again
    samples = metric_samples(collector)
    assert samples[("orion_collector_connections_shed_total", (("action", "refused"),))] == 2
    assert answers_by_code(collector)[("connection_cap", "503")] == 2
    assert sorted(e["event_id"] for e in pulled_events(subscription)) == ["e0", "e1", "e2"]


# --- secrets: never in an answer, never in a log line -------------------------------------------


def test_a_malformed_request_holding_the_key_is_answered_and_logged_without_it(start_collector, keys, caplog):
    topic, _ = new_topic()
    collector = start_collector(topic)
    secret = keys.shop.split("_", 2)[2]
    caplog.set_level(logging.DEBUG)
    heads = [
        f"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization Bearer {keys.shop}\r\n\r\n",  # no colon
        f"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {keys.shop}\x01\r\n\r\n",  # control char
        f"POST /v1/events HTTP/1.1\r\nHost: x\r\nX-Orion-Key : {keys.shop}\r\n\r\n",
        f"POST /v1/events?key={keys.shop} junk HTTP/1.1\r\nHost: x\r\n\r\n",  # a broken request line
        f"POST /v1/events HTTP/1.1\r\nHost: x\r\nX-Orion-Key: {keys.shop}{'A' * 9000}\r\n\r\n",  # too long
    ]
    for head in heads:
        with socket.create_connection(("127.0.0.1", collector.port)) as connection:
            connection.sendall(head.encode("latin-1"))
            answer, _ = read_until_closed(connection)
        status_line, _, rest = answer.partition(b"\r\n")
        assert b" 400 " in status_line, answer
        assert secret.encode() not in answer and b"application/json" in rest
        assert json.loads(rest.partition(b"\r\n\r\n")[2])["error"] == "bad_request"
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert "not valid HTTP" in logged and secret not in logged
    assert answers_by_code(collector)[("unparsed", "400")] == len(heads)


def test_every_refusal_is_json_without_the_key_and_a_key_that_is_not_utf8_is_a_401(start_collector, keys):
    collector = start_collector(new_topic()[0])
    statuses = check_errors_are_json_without_the_key(collector.port, keys.shop, "/v1/events", "POST")
    assert answers_by_code(collector)[("unparsed", "400")] == statuses.count(400)


def test_a_fault_of_the_collector_is_a_counted_json_500_without_the_key(emulator_env, keys, caplog):
    """Not bad input: a failure of the collector itself (here, its schemas). The request
    gets a JSON 500, /metrics counts it, the log has the traceback without the key."""
    from collector_services import CollectorThread
    from orion.activities import ActivityTypes
    from orion.collector.app import CollectorSettings

    class BrokenTypes(ActivityTypes):
        def lookup(self, tenant, type_name):
            raise RuntimeError(f"lookup failed; the request had Authorization: Bearer {keys.shop}")

    topic, subscription = new_topic()
    caplog.set_level(logging.INFO)
    collector = CollectorThread(topic, keys.path, BrokenTypes(), CollectorSettings())
    try:
        status, _, answer = collector.post([event(1)], key=keys.shop)
        assert (status, answer["error"]) == (500, "internal") and keys.shop not in json.dumps(answer)
        assert answers_by_code(collector)[("/v1/events", "500")] == 1
    finally:
        collector.stop()
    failures = [r for r in caplog.records if r.name == "orion.collector.app" and r.levelno == logging.ERROR]
    assert failures and "lookup failed" in failures[0].exc_text
    secret = keys.shop.split("_", 2)[2]
    assert all(secret not in f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert pulled_events(subscription, 0.5) == []


def test_redaction_cuts_keys_out_of_text_and_log_records():
    from orion.collector.redaction import RedactSecrets, redact

    key = "ok_0123456789abcdef_" + "S" * 43
    for text in (f"Authorization: Bearer {key}", f"b'authorization Bearer {key}'", f"X-Orion-Key: {key}",
                 f"GET /v1/events?key={key}&x=1", f"token {key} here", f"x-api-key={key}"):
        assert "S" * 10 not in redact(text), text
    assert redact(f"key {key}").startswith("key ok_0123456789abcdef_")  # the id may stay: it names the key
    try:
        raise ValueError(f"bad header: Authorization: Bearer {key}")
    except ValueError as err:
        record = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, "failed on %s", (key,),
                                   (type(err), err, err.__traceback__))
    RedactSecrets().filter(record)
    assert "S" * 10 not in logging.Formatter().format(record)

"""What the collector tests share: the Pub/Sub emulator (one per test module), API keys
made at test time, a collector served from a thread (publishing to Pub/Sub or Kafka), a
TCP proxy between the collector and the emulator that can refuse or swallow
connections, and small HTTP helpers."""
from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import socket
import threading
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from orion.activities import ActivityTypes
from orion.collector.app import CollectorSettings, load_types
from orion.collector.keys import KeyStore, add_key
from orion.intake import parse_payload
from orion.testing.emulators import EmulatorMissing, PubSubEmulator
from orion.testing.pubsub import create_topic_and_subscription, drain

PROJECT = "orion-test"
_names = itertools.count()

RULES = """
tenant: shop
settings:
  activity_types:
    store_visit:
      attributes:
        store: {type: string, required: true}
campaigns:
  - name: Pricing interest
    qualification: every_time
    triggers:
      - activity: visit_web_page
        where: {url: {starts_with: "https://shop.example/pricing"}}
"""
OTHER_RULES = """
tenant: rival
campaigns: []
"""


@pytest.fixture(scope="module")
def pubsub():
    try:
        emulator = PubSubEmulator.start()
    except EmulatorMissing as missing:
        pytest.fail(str(missing))
    yield emulator
    emulator.stop()


@pytest.fixture
def emulator_env(pubsub, monkeypatch):
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub.host)
    return pubsub


@pytest.fixture(scope="module")
def rules_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rules")
    (path / "shop.yaml").write_text(RULES)
    (path / "rival.yaml").write_text(OTHER_RULES)
    return path


class Keys:
    """A keys file with one fresh key for each of the tenants shop and rival."""

    def __init__(self, path: Path):
        self.path = path
        self.shop, self.shop_record = add_key(path, "shop", "test")
        self.rival, self.rival_record = add_key(path, "rival", "test")


@pytest.fixture
def keys(tmp_path) -> Keys:
    return Keys(tmp_path / "keys.yaml")


def new_topic() -> tuple[str, str]:
    """A fresh topic and a subscription on it, on the emulator of PUBSUB_EMULATOR_HOST."""
    n = next(_names)
    topic, subscription = f"projects/{PROJECT}/topics/events-{n}", f"projects/{PROJECT}/subscriptions/read-{n}"
    create_topic_and_subscription(topic, subscription)
    return topic, subscription


def pulled_events(subscription: str, quiet_seconds: float = 1.0, types: ActivityTypes | None = None) -> list[dict]:
    """Every event of every message on the subscription; each message must be one the
    graph's ParseActivities reads without a dead letter."""
    events = []
    for message in drain(subscription, quiet_seconds):
        for found in parse_payload(message.data, types or ActivityTypes(), "test"):
            assert not hasattr(found, "reason"), found
        events.extend(json.loads(message.data))
    return events


class CollectorThread:
    """`run_collector` on its own event loop in a thread, on a free port. `destination`: a
    Pub/Sub topic name or a KafkaDestination."""

    def __init__(self, destination, keys_path: Path, types: ActivityTypes, settings: CollectorSettings,
                 create_topic: bool = False):
        from orion.collector.commands import run_collector

        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.port = 0
        self.error: BaseException | None = None

        async def main():
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await run_collector(destination, KeyStore(keys_path), types, settings, "127.0.0.1", 0,
                                create_topic, ready=self._on_ready, stop=self._stop)

        def target():
            try:
                asyncio.run(main())
            except BaseException as err:  # noqa: BLE001 - reported to the test below
                self.error = err
                self._ready.set()

        self._thread = threading.Thread(target=target, daemon=True)
        self._thread.start()
        assert self._ready.wait(60), "the collector did not start within 60 s"
        if self.error:
            raise self.error

    def _on_ready(self, port: int) -> None:
        self.port = port
        self._ready.set()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def post(self, body, key: str | None = None, headers: dict | None = None, path: str = "/v1/events"):
        return request("POST", self.port, path, body, key, headers)

    def get(self, path: str):
        return request("GET", self.port, path)


@pytest.fixture
def start_collector(emulator_env, rules_dir, keys):
    """`collector = start_collector(topic, **settings)`; stopped after the test."""
    started = []
    types = load_types(rules_dir)

    def start(topic: str, **settings) -> CollectorThread:
        collector = CollectorThread(topic, keys.path, types, CollectorSettings(**settings))
        started.append(collector)
        return collector

    yield start
    for collector in started:
        collector.stop()


def request(method: str, port: int, path: str, body=None, key: str | None = None, headers: dict | None = None):
    """(status, headers, decoded JSON or text). `body` may be bytes, text, or a JSON value."""
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode("utf-8")
    headers = dict(headers or {})
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        raw = response.read()
        kind = response.headers.get("Content-Type", "")
        return response.status, response.headers, json.loads(raw) if "json" in kind else raw.decode()
    finally:
        connection.close()


def metric_samples(collector) -> dict:
    """/metrics as {(sample name, sorted label pairs): value}."""
    text = collector.get("/metrics")[2]
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def answers_by_code(collector) -> dict[tuple[str, str], float]:
    """orion_collector_requests_total as {(route, code): count}."""
    return {(dict(labels)["route"], dict(labels)["code"]): value
            for (name, labels), value in metric_samples(collector).items() if name == "orion_collector_requests_total"}


def event(n: int, tenant: str | None = "shop", url: str = "https://shop.example/", **fields) -> dict:
    found = {"event_id": f"e{n}", "tenant": tenant, "lead_id": f"L{n % 5}", "type": "visit_web_page",
             "occurred_at": int(time.time() * 1000) - 600_000 + n, "attributes": {"url": url}}
    if tenant is None:
        del found["tenant"]
    found.update(fields)
    return found


class FlakyProxy:
    """A TCP proxy to the emulator, in its own thread. `mode`: forward (pass bytes both
    ways), refuse (close every connection at once: Pub/Sub down) or swallow (take the
    bytes, never answer: Pub/Sub hung). Changing the mode closes the open connections,
    so nothing sent before reaches the emulator afterwards."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.mode = "forward"
        self._writers: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    def set_mode(self, mode: str) -> None:
        done = threading.Event()

        def change():
            self.mode = mode
            for writer in list(self._writers):
                writer.close()
            self._writers.clear()
            done.set()

        self._loop.call_soon_threadsafe(change)
        assert done.wait(10)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "refuse":
            writer.close()
            return
        self._writers.add(writer)
        if self.mode == "swallow":
            while not writer.is_closing() and await reader.read(65536):
                pass
            writer.close()
            return
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers.add(upstream_writer)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter):
            try:
                while data := await source.read(65536):
                    if sink.is_closing():
                        break
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    def close(self) -> None:
        def shutdown():
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            self._loop.stop()

        self._loop.call_soon_threadsafe(shutdown)
        self._thread.join(10)


def raw_exchange(port: int, head: bytes, limit: float = 30.0) -> tuple[int, bytes, bytes]:
    """Send `head` (a request as bytes, malformed or not) on a new connection and read
    until the server closes it: (status, the header block, the body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as connection:
        connection.sendall(head)
        answer = b""
        while True:
            chunk = connection.recv(65536)
            if not chunk:
                break
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    headers, _, body = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), headers, body


def check_errors_are_json_without_the_key(port: int, key: str, path: str, method: str) -> list[int]:
    """What every Orion service answers to requests it cannot take: a key that is not
    UTF-8 is a 401; requests that are not valid HTTP, one of them carrying the key, are a
    JSON 400 that does not quote the key; an unknown path, a method the path does not
    take and an Expect the server does not know are JSON too. Returns the statuses."""
    secret = key.split("_", 2)[2]
    tail = b"Host: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"
    cases = [
        (401, f"{method} {path} HTTP/1.1\r\nAuthorization: Bearer ".encode() + b"\xff\xfe\r\n" + tail),
        (401, f"{method} {path} HTTP/1.1\r\nX-Orion-Key: ".encode() + b"\xe9\r\n" + tail),
        (400, f"{method} {path} HTTP/1.1\r\nAuthorization: Bearer {key}\x7f\r\n".encode() + tail),
        (400, f"{method} {path}?key={key} junk HTTP/1.1\r\n".encode() + tail),
        (400, f"{method} {path} HTTP/1.1\r\nX-Orion-Key: {key}{'A' * 9000}\r\n".encode() + tail),
        (404, f"{method} /nowhere/at/all HTTP/1.1\r\n".encode() + tail),
        (405, f"PATCH {path} HTTP/1.1\r\n".encode() + tail),
        (417, f"{method} {path} HTTP/1.1\r\nExpect: zzz\r\nAuthorization: Bearer {key}\r\n".encode() + tail),
    ]
    found = []
    for expected, head in cases:
        status, headers, body = raw_exchange(port, head)
        assert status == expected, (head[:120], status, body[:300])
        assert b"application/json" in headers.lower(), (head[:120], headers, body[:300])
        answer = json.loads(body)
        assert answer["error"] and answer["detail"], answer
        assert secret.encode() not in headers + body, (head[:120], body[:300])
        if expected == 405:
            assert b"allow:" in headers.lower()
        found.append(status)
    return found

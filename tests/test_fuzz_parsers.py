"""Fuzzing the parsers of untrusted input with Hypothesis, bounded to a few seconds.

Whatever arrives (generated or mutated JSON text, bytes that are not UTF-8, lone
surrogates, nesting far past any parser, huge numbers, NaN, decoded objects holding any of
these), activity parsing only ever returns an Activity or refuses it with a dead-letter
reason; a message or a file only ever yields activities and dead letters that can be
written; and the collector only ever answers with a verdict, never a 5xx, never with the
API key in it. What the collector accepts, the graph reads without a dead letter. A file
is read in bounded chunks whatever its bytes: every line as if split at its line feeds,
each line over the size limit one `too_large` dead letter, never held whole.

    .venv/bin/python -m pytest tests/test_fuzz_parsers.py -q
"""
from __future__ import annotations

import asyncio
import gzip
import http.client
import io
import json
import pickle
import socket
import threading
import zlib

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from orion.activities import (BAD_ATTRIBUTE, BAD_FIELD, BAD_TIMESTAMP, MALFORMED_JSON, MAX_NESTING_DEPTH,
                              MISSING_FIELD, TOO_LARGE, UNKNOWN_TYPE, Activity, ActivityTypes, BadActivity,
                              nests_deeper_than, parse_activity, split_json_array)
from orion.collector.checking import BodyRefused, check_body
from orion.deadletters import DeadLetter
from orion.intake import TOO_LARGE_KEPT_BYTES, OverlongLine, bounded_lines, parse_one, parse_payload, read_lines

FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
HTTP_FUZZ = settings(FUZZ, max_examples=100)
TYPES = ActivityTypes()
REASONS = {MALFORMED_JSON, MISSING_FIELD, BAD_FIELD, UNKNOWN_TYPE, BAD_ATTRIBUTE, BAD_TIMESTAMP, TOO_LARGE}
GOOD = {"event_id": "e1", "tenant": "acme", "lead_id": "7", "type": "fill_out_form",
        "occurred_at": "2026-11-22T10:00:00Z", "attributes": {"form": "contact", "fields": {"a": [1, {"b": 2}]}}}

# --- what arrives ---------------------------------------------------------------------------

characters = st.one_of(st.characters(), st.characters(categories=["Cs"]))  # lone surrogates too
texts = st.text(characters, max_size=20)
numbers = st.one_of(st.integers(), st.integers(min_value=-10**40, max_value=10**40),
                    st.floats(allow_nan=True, allow_infinity=True))
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(texts, inner, max_size=4)),
                           max_leaves=12)


def nest(depth: int, leaf=None, as_object: bool = False):
    """A value `depth` arrays (or objects) deep, built without recursion."""
    value = leaf
    for _ in range(depth):
        value = {"x": value} if as_object else [value]
    return value


deep_values = st.builds(nest, st.integers(0, 2_000), st.sampled_from([None, 1, "x", "\ud800"]), st.booleans())
field_values = st.one_of(texts, numbers, json_values, deep_values)
activity_dicts = st.fixed_dictionaries({}, optional={
    field: st.one_of(st.just(good), field_values) for field, good in GOOD.items()
}).map(lambda found: found if found else dict(GOOD))
attribute_dicts = st.dictionaries(st.sampled_from(["form", "fields", "email", "x"]),
                                  st.one_of(json_values, deep_values), max_size=3)
surrogate_texts = st.builds(lambda head, surrogate, tail: head + surrogate + tail,
                            texts, st.characters(categories=["Cs"]), texts)
one_field_changed = st.sampled_from(sorted(GOOD)).flatmap(  # a valid activity but for one field
    lambda field: st.one_of(field_values, surrogate_texts).map(lambda value: {**GOOD, field: value}))
decoded_activities = st.one_of(activity_dicts, one_field_changed, activity_dicts.flatmap(
    lambda found: attribute_dicts.map(lambda attributes: {**found, "attributes": attributes})))


@st.composite
def deep_texts(draw) -> str:
    """An activity whose attribute nests `depth` brackets deep, balanced or not."""
    depth = draw(st.integers(0, 2_000))
    opening, closing = draw(st.sampled_from([("[", "]"), ('{"k":', "}"), ("[{\"k\":", "}]")]))
    close = depth if draw(st.booleans()) else draw(st.integers(0, depth))
    fields = opening * depth + "1" + closing * close
    return json.dumps(GOOD).replace('{"a": [1, {"b": 2}]}', fields)


def dumped(value, ascii_only: bool) -> str:
    """JSON text of a decoded value, as another producer might write it: NaN, Infinity and
    \\ud800 escapes included. Text too deep for json.dumps is built by hand."""
    try:
        return json.dumps(value, ensure_ascii=ascii_only)
    except RecursionError:
        return "[" * 5_000 + "]" * 5_000


@st.composite
def mutated(draw, base: st.SearchStrategy[str]) -> str:
    """Text with a few random edits: insertions of JSON's own characters, deletions,
    duplications."""
    text = draw(base)
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(text)))
        edit = draw(st.sampled_from(["insert", "delete", "duplicate"]))
        if edit == "insert":
            text = text[:at] + draw(st.one_of(st.sampled_from(list('[]{}",:\\ \n0e-')), characters)) + text[at:]
        elif edit == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 8)):]
        else:
            text = text[:at] + text[at:at + draw(st.integers(1, 40))] * 2 + text[at:]
    return text


activity_texts = st.one_of(
    decoded_activities.map(lambda value: dumped(value, True)),
    decoded_activities.map(lambda value: dumped(value, False)),
    deep_texts(),
    st.just(json.dumps(GOOD)),
    st.sampled_from(["NaN", "Infinity", "-1e400", "1e400", "18446744073709551616", '"\\ud800"', "[", "{", ""]),
)
raw_bytes = st.one_of(
    mutated(activity_texts).map(lambda text: text.encode("utf-8", "surrogatepass")),  # not UTF-8, sometimes
    st.binary(max_size=200),
)
raw_inputs = st.one_of(mutated(activity_texts), raw_bytes, texts)


def is_verdict(found) -> None:
    """An activity every later stage can take, or a dead letter that can be written."""
    if isinstance(found, Activity):
        for value in (found.event_id, found.tenant, found.lead_id):
            value.encode("utf-8")  # KeyByLead and the stores encode them
        assert not nests_deeper_than(found.attributes, MAX_NESTING_DEPTH - 1)
        pickle.dumps(found)  # as Beam does
        return
    assert isinstance(found, DeadLetter), found
    assert found.reason in REASONS and found.detail
    assert json.loads(found.to_json())["reason"] == found.reason


def judged(raw) -> Activity | BadActivity:
    try:
        activity = parse_activity(raw, TYPES)
    except BadActivity as bad:
        assert bad.reason in REASONS and bad.detail
        return bad
    is_verdict(activity)
    return activity


# --- the graph's parsers ---------------------------------------------------------------------


@FUZZ
@given(raw_inputs)
def test_parse_activity_only_returns_an_activity_or_refuses_with_a_reason(raw):
    found = judged(raw)
    if isinstance(raw, str):
        try:
            encoded = raw.encode("utf-8")
        except UnicodeEncodeError:
            return
        again = judged(encoded)  # text and its UTF-8 bytes get the same verdict
        assert (again == found) if isinstance(found, Activity) else (again.reason == found.reason)


@FUZZ
@given(decoded_activities)
@example({**GOOD, "lead_id": "L\ud800"})
@example({**GOOD, "tenant": "\udfff"})
@example({**GOOD, "attributes": {"form": "f", "fields": nest(MAX_NESTING_DEPTH, as_object=True)}})
@example({**GOOD, "occurred_at": float("nan"), "attributes": {"form": "f", "fields": {"n": float("inf")}}})
def test_parse_activity_judges_decoded_objects_holding_anything(value):
    judged(value)
    is_verdict(parse_one(value, TYPES, "fuzz"))


@FUZZ
@given(st.lists(st.one_of(mutated(activity_texts), decoded_activities.map(lambda v: dumped(v, True))),
                min_size=1, max_size=4),
       st.sampled_from(["array", "jsonl", "single"]), st.booleans())
def test_a_message_yields_only_activities_and_writable_dead_letters(items, form, as_bytes):
    if form == "array":
        payload = "[" + ",".join(items) + "]"
    elif form == "jsonl":
        payload = "\n".join(items)
    else:
        payload = items[0]
    payload = payload.encode("utf-8", "surrogatepass") if as_bytes else payload
    found = list(parse_payload(payload, TYPES, "fuzz"))
    for each in found:
        is_verdict(each)
    parts = split_json_array(payload) if form == "array" else None
    if parts is not None and payload.strip():
        assert len(found) in (len(parts), 1)  # each item judged, or the message refused whole


@FUZZ
@given(st.lists(raw_bytes, max_size=5),
       st.sampled_from([None, 0, 60_000]))
def test_a_file_yields_only_activities_and_writable_dead_letters(lines, lateness):
    lines = [line.replace(b"\n", b" ") + b"\n" for line in lines]
    found = list(read_lines(lines, TYPES, "fuzz.jsonl", lateness))
    for each in found:
        if isinstance(each, DeadLetter) and each.reason == "late":
            continue
        is_verdict(each)
    assert len(found) == sum(1 for line in lines if line.strip())


# --- files read in bounded chunks ---------------------------------------------------------------

# Lines of any bytes (carriage returns, blank lines, long runs) joined by line feeds, with
# or without a last one.
file_lines = st.lists(st.one_of(raw_bytes, st.binary(max_size=80),
                                st.sampled_from([b"", b" \t", b"\r", b"\r\r", b"x" * 70, b" " * 50, b"\n\n"])),
                      max_size=8)
file_bytes = st.builds(lambda lines, end, last: end.join(lines) + (end if last else b""),
                       file_lines, st.sampled_from([b"\n", b"\r\n"]), st.booleans())


def split_by_hand(data: bytes, limit: int) -> list:
    """What bounded_lines must give: the lines between line feeds, each over `limit` plus
    one as an OverlongLine (its carriage return no part of its size)."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # a line feed ends the last line; it does not start another
    return [OverlongLine(line[:TOO_LARGE_KEPT_BYTES], len(line) - line.endswith(b"\r"), not line.strip())
            if len(line) > limit + 1 else line for line in lines]


@FUZZ
@given(file_bytes, st.integers(0, 40), st.integers(1, 17))
@example(b"x" * 30 + b"\r\n" + b" " * 30 + b"\nab", 3, 4)
@example(b"\n", 0, 1)
def test_bounded_lines_splits_any_bytes_as_line_feeds_do_whatever_the_chunks(data, limit, chunk_bytes):
    expected = split_by_hand(data, limit)
    assert list(bounded_lines(io.BytesIO(data), limit, chunk_bytes)) == expected
    if data.isascii():  # a text file: the same lines, as text
        text = io.StringIO(data.decode("ascii"), newline="")
        assert list(bounded_lines(text, limit, chunk_bytes)) == [
            found._replace(head=found.head.decode()) if isinstance(found, OverlongLine) else found.decode()
            for found in expected]


@FUZZ
@given(file_bytes, st.integers(0, 40), st.integers(1, 17), st.sampled_from([None, 0, 60_000]))
def test_a_file_of_any_bytes_with_overlong_lines_yields_one_verdict_per_line(data, limit, chunk_bytes, lateness):
    """A small limit in place of MAX_ACTIVITY_BYTES, so overlong lines are cheap to make."""
    lines = split_by_hand(data, limit)
    found = list(read_lines(bounded_lines(io.BytesIO(data), limit, chunk_bytes), TYPES, "fuzz.jsonl", lateness))
    judged = [(n, line) for n, line in enumerate(lines, 1)
              if (not line.blank if isinstance(line, OverlongLine) else line.strip())]
    assert len(found) == len(judged)
    for each, (n, line) in zip(found, judged):
        if isinstance(each, DeadLetter):
            assert each.source == f"fuzz.jsonl:{n}"
        if isinstance(line, OverlongLine):
            assert each.reason == TOO_LARGE and f"{line.size:,} bytes" in each.detail
            assert len(each.element) <= TOO_LARGE_KEPT_BYTES  # characters: a byte that is not UTF-8 is one
        if not (isinstance(each, DeadLetter) and each.reason == "late"):
            is_verdict(each)


@FUZZ
@given(file_bytes, st.sampled_from([None, 0, 60_000]))
def test_a_file_read_from_its_file_object_is_judged_as_its_lines_are(data, lateness):
    from_file = list(read_lines(io.BytesIO(data), TYPES, "fuzz.jsonl", lateness))
    from_lines = list(read_lines([line + b"\n" for line in data.split(b"\n")], TYPES, "fuzz.jsonl", lateness))
    assert from_file == from_lines


# --- the collector ------------------------------------------------------------------------------

bodies = st.one_of(
    st.lists(st.one_of(mutated(activity_texts), decoded_activities.map(lambda v: dumped(v, False))),
             min_size=1, max_size=5).map(lambda items: "[" + ",".join(items) + "]"),
    st.lists(mutated(activity_texts), min_size=1, max_size=5).map("\n".join),
    mutated(activity_texts),
).map(lambda text: text.encode("utf-8", "surrogatepass")) | st.binary(max_size=300)


@FUZZ
@given(bodies)
def test_check_body_gives_a_verdict_per_event_or_refuses_the_body_4xx(body):
    try:
        checked = check_body(body, "acme", TYPES, 1000)
    except BodyRefused as refused:
        assert 400 <= refused.status < 500 and refused.detail
        return
    assert len(checked.results) == len(checked.accepted) + len(checked.refused_reasons)
    json.dumps(checked.results)
    if checked.accepted:  # the graph reads what the collector publishes without a dead letter
        message = b"[" + b",".join(checked.accepted) + b"]"
        assert all(isinstance(found, Activity) for found in parse_payload(message, TYPES, "collector"))


class FuzzCollector:
    """The collector's real aiohttp server (CollectorRunner, the app, the batch publisher)
    on a free port in a thread; Pub/Sub takes every message at once: not under test here."""

    def __init__(self, keys_path):
        from aiohttp import web

        from orion.collector.app import CollectorRunner, CollectorSettings, build_app
        from orion.collector.keys import KeyStore
        from orion.collector.publisher import BatchPublisher

        self.port = 0
        ready = threading.Event()

        async def take(data: bytes, attributes: dict) -> None:
            for found in parse_payload(data, TYPES, "collector"):
                assert isinstance(found, Activity), found

        async def serve():
            settings = CollectorSettings(rate_limit=0, flush_seconds=0.001, idle_timeout=2.0, body_timeout=2.0)
            publisher = BatchPublisher(take, flush_seconds=settings.flush_seconds)
            self.runner = CollectorRunner(build_app(KeyStore(keys_path), TYPES, publisher, settings), settings)
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", 0).start()
            self.port = self.runner.addresses[0][1]
            self.stopped = asyncio.Event()
            ready.set()
            await self.stopped.wait()
            await self.runner.cleanup()
            await publisher.close()

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(serve(),), daemon=True)
        self.thread.start()
        assert ready.wait(30), "the collector did not start"

    def post(self, body: bytes, headers: dict) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request("POST", "/v1/events", body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stopped.set)
        self.thread.join(30)


@pytest.fixture(scope="module")
def fuzz_collector(tmp_path_factory):
    from orion.collector.keys import add_key

    keys_path = tmp_path_factory.mktemp("fuzz-keys") / "keys.yaml"
    key, _ = add_key(keys_path, "acme", "fuzz")
    collector = FuzzCollector(keys_path)
    collector.key = key
    yield collector
    collector.stop()


@HTTP_FUZZ
@given(bodies, st.sampled_from([None, "gzip", "deflate", "gzip-lie", "br", "identity", "x-gzip\x01"]),
       st.sampled_from(["header", "query", "none", "wrong"]))
def test_the_collector_never_answers_a_body_with_a_5xx(fuzz_collector, body, coding, key_in):
    headers = {"Content-Type": "application/json"}
    path_key = None
    if coding == "gzip":
        body = gzip.compress(body)
    elif coding == "deflate":
        body = zlib.compress(body)
    if coding is not None:
        headers["Content-Encoding"] = "gzip" if coding == "gzip-lie" else coding
    if key_in == "header":
        headers["Authorization"] = f"Bearer {fuzz_collector.key}"
    elif key_in == "wrong":
        headers["X-Orion-Key"] = fuzz_collector.key[:-3] + "AAA"
    elif key_in == "query":
        path_key = fuzz_collector.key
    try:
        if path_key is not None:
            connection = http.client.HTTPConnection("127.0.0.1", fuzz_collector.port, timeout=30)
            connection.request("POST", f"/v1/events?key={path_key}", body=body, headers=headers)
            response = connection.getresponse()
            status, answer = response.status, response.read()
            connection.close()
        else:
            status, answer = fuzz_collector.post(body, headers)
    except ValueError:  # http.client refuses to send a header value with a control character
        assert "\x01" in (coding or "")
        return
    assert 200 <= status < 500, answer
    json.loads(answer)
    assert fuzz_collector.key.split("_", 2)[2].encode() not in answer


header_junk = st.text(st.one_of(st.characters(min_codepoint=0, max_codepoint=255),
                                st.sampled_from([":", " ", "\t", "\r", "\x00", "\x7f"])), max_size=30)


@HTTP_FUZZ
@given(st.lists(st.tuples(header_junk, st.booleans()), max_size=4), st.booleans())
def test_malformed_requests_get_a_4xx_without_the_key(fuzz_collector, junk, key_first):
    """Header lines of anything, the key among them: the answer is never a 5xx and never
    holds the key."""
    key_line = f"Authorization: Bearer {fuzz_collector.key}"
    lines = [f"{text}" if bare else f"X-Junk: {text}" for text, bare in junk]
    lines = [key_line, *lines] if key_first else [*lines, key_line]
    lines = [line.replace("\r", "").replace("\n", "") for line in lines]
    head = "POST /v1/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n"
    request = (head + "".join(line + "\r\n" for line in lines) + "\r\n[]").encode("latin-1")
    with socket.create_connection(("127.0.0.1", fuzz_collector.port), timeout=30) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    status = int(answer.split(b" ", 2)[1])
    assert 200 <= status < 500, answer
    assert fuzz_collector.key.split("_", 2)[2].encode() not in answer

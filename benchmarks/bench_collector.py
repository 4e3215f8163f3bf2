"""Collector load test: `orion collect` on loopback, publishing to the Pub/Sub emulator,
under a load generator that posts batches for `--seconds`; then proof of zero loss.

- Load: an aiohttp client with `--connections` concurrent keep-alive connections, each
  posting batches of `--batch` valid visit_web_page events (unique event ids) back to
  back, with one tenant's key, for `--seconds` (60 by default). Reported: requests/s,
  events accepted/s, p50/p99 request latency (from sending to the full answer), and any
  non-200 answers by status.
- Zero loss: after the run the collector is stopped (it publishes what waits), the
  subscription is drained, and the event ids pulled are compared with the event ids the
  collector answered "accepted": every accepted event must be there, and nothing else.
- Ceiling: the same load generator against a bare aiohttp handler on the same machine
  that reads the body and answers a fixed 200 (no key, no parsing, no Pub/Sub), for
  `--ceiling-seconds`. Ratio = collector requests/s / ceiling requests/s.

The load generator, the collector and the emulator share this machine's cores.
Writes section "collector" of BENCHMARKS.md.

    make bench-collector
    .venv/bin/python -m benchmarks.bench_collector --seconds 10 --no-write
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from benchmarks.report import measured_line, write_section

PROJECT = "orion-bench"
TOPIC = f"projects/{PROJECT}/topics/collector"
SUBSCRIPTION = f"projects/{PROJECT}/subscriptions/collector"
TENANT = "acme"  # of the shipped sample rules
EVENT = ('{"event_id":"%s","lead_id":"L%d","type":"visit_web_page","occurred_at":%d,'
         '"attributes":{"url":"https://acme.example/pricing/%d","referrer":"https://search.example/?q=acme"}}')


def serve_ceiling() -> None:
    """The ceiling server: read the body, answer a fixed 200. Prints its port."""
    from aiohttp import web

    answer = b'{"accepted": 0}'

    async def take(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=answer, content_type="application/json")

    async def main():
        app = web.Application(client_max_size=10_000_000)
        app.router.add_post("/v1/events", take)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        print(f"listening on http://127.0.0.1:{runner.addresses[0][1]}/", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


class Load:
    def __init__(self):
        self.latencies: list[float] = []
        self.statuses: Counter = Counter()
        self.accepted_ids: list[str] = []
        self.sent_events = 0
        self.elapsed = 0.0


async def generate_load(port: int, key: str, seconds: float, connections: int, batch: int,
                        keep_ids: bool) -> Load:
    import aiohttp

    load = Load()
    url = f"http://127.0.0.1:{port}/v1/events"
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    now_ms = int(time.time() * 1000)
    deadline = time.perf_counter() + seconds

    async def worker(number: int, session: aiohttp.ClientSession) -> None:
        sequence = 0
        while time.perf_counter() < deadline:
            ids = [f"w{number}-{sequence + i}" for i in range(batch)]
            body = "[" + ",".join(EVENT % (event_id, (sequence + i) % 5000, now_ms + i, i % 97)
                                  for i, event_id in enumerate(ids)) + "]"
            sequence += batch
            started = time.perf_counter()
            async with session.post(url, data=body.encode(), headers=headers) as response:
                answer = await response.read()
            load.latencies.append(time.perf_counter() - started)
            load.statuses[response.status] += 1
            load.sent_events += batch
            if response.status == 200 and keep_ids:
                results = json.loads(answer)["results"]
                if keep_ids:
                    load.accepted_ids.extend(r["event_id"] for r in results if r["status"] == "accepted")
            elif response.status == 429 or response.status == 503:
                await asyncio.sleep(float(response.headers.get("Retry-After", "1")))

    connector = aiohttp.TCPConnector(limit=connections)
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(n, session) for n in range(connections)))
    load.elapsed = time.perf_counter() - started
    return load


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def _listening_port(process: subprocess.Popen, log: Path) -> int:
    line = process.stdout.readline()
    found = re.search(r"listening on http://127\.0\.0\.1:(\d+)/", line)
    if not found:
        process.kill()
        raise RuntimeError(f"the server did not start: {line}{log.read_text()[-3000:] if log.exists() else ''}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="load duration (default: %(default)s)")
    parser.add_argument("--ceiling-seconds", type=float, default=15.0,
                        help="load duration against the ceiling server (default: %(default)s)")
    parser.add_argument("--connections", type=int, default=16, help="concurrent connections (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=100, help="events per request (default: %(default)s)")
    parser.add_argument("--no-write", action="store_true", help="print the section, leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)

    from orion.collector.keys import add_key
    from orion.testing.emulators import PubSubEmulator, emulator_environment
    from orion.testing.pubsub import create_topic_and_subscription, drain

    workdir = Path(tempfile.mkdtemp(prefix="orion-bench-collector-"))
    emulator = PubSubEmulator.start()
    try:
        os.environ["PUBSUB_EMULATOR_HOST"] = emulator.host
        create_topic_and_subscription(TOPIC, SUBSCRIPTION)
        key, _ = add_key(workdir / "keys.yaml", TENANT, "bench")
        env = emulator_environment(emulator)
        env["PYTHONWARNINGS"] = "ignore::FutureWarning"

        # the ceiling first, so the emulator is idle while it runs
        ceiling_log = workdir / "ceiling.log"
        ceiling = subprocess.Popen([sys.executable, "-c", "from benchmarks.bench_collector import serve_ceiling; "
                                    "serve_ceiling()"], stdout=subprocess.PIPE, stderr=open(ceiling_log, "w"),
                                   text=True, env=env, cwd=Path(__file__).resolve().parent.parent)
        try:
            ceiling_load = asyncio.run(generate_load(_listening_port(ceiling, ceiling_log), key,
                                                     args.ceiling_seconds, args.connections, args.batch, False))
        finally:
            ceiling.terminate()
            ceiling.wait(30)
        print(f"ceiling: {sum(ceiling_load.statuses.values()) / ceiling_load.elapsed:,.0f} requests/s", flush=True)

        collector_log = workdir / "collector.log"
        collector = subprocess.Popen(
            [sys.executable, "-m", "orion.collector", "--topic", TOPIC, "--keys", str(workdir / "keys.yaml"),
             "--port", "0", "--rate-limit", "0"],
            stdout=subprocess.PIPE, stderr=open(collector_log, "w"), text=True, env=env)
        try:
            port = _listening_port(collector, collector_log)
            load = asyncio.run(generate_load(port, key, args.seconds, args.connections, args.batch, True))
        finally:
            collector.send_signal(signal.SIGTERM)  # stops taking requests, publishes what waits
            collector.wait(60)
        if collector.returncode != 0:
            raise RuntimeError(f"the collector exited with {collector.returncode}:\n{collector_log.read_text()[-3000:]}")

        drain_started = time.perf_counter()
        messages = drain(SUBSCRIPTION, quiet_seconds=3.0, max_messages=3)  # ~1 MB each; a pull answer stays < 4 MB
        pulled_ids = [event["event_id"] for message in messages for event in json.loads(message.data)]
        drain_seconds = time.perf_counter() - drain_started
    finally:
        emulator.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    accepted = set(load.accepted_ids)
    pulled = set(pulled_ids)
    lost = len(accepted - pulled)
    unexpected = len(pulled - accepted)
    duplicates = len(pulled_ids) - len(pulled)
    requests = sum(load.statuses.values())
    ok = load.statuses.get(200, 0)
    rps = requests / load.elapsed
    eps = len(load.accepted_ids) / load.elapsed
    ceiling_rps = sum(ceiling_load.statuses.values()) / ceiling_load.elapsed
    others = ", ".join(f"{status}: {count:,}" for status, count in sorted(load.statuses.items()) if status != 200)
    events_per_message = len(pulled_ids) / len(messages) if messages else 0.0
    zero_loss = lost == 0 and unexpected == 0 and len(accepted) == len(load.accepted_ids)

    section = "\n".join([
        "## Collector: HTTP intake to Pub/Sub",
        "",
        measured_line("make bench-collector"),
        "",
        f"`orion collect` (one process, defaults: messages flushed at 1,000 events, 1 MB or 50 ms; rate limit off) "
        f"publishing to the Pub/Sub emulator; an aiohttp load generator on loopback with {args.connections} "
        f"keep-alive connections posts batches of {args.batch} valid `visit_web_page` events (about 200 bytes each) "
        f"for {args.seconds:g} s. The generator, the collector and the emulator (Java) share the machine's cores. "
        f"Ceiling: the same generator for {args.ceiling_seconds:g} s against a bare aiohttp handler that reads the "
        "body and answers a fixed 200 (no key check, no parsing, no Pub/Sub); ratio = collector requests/s / "
        "ceiling requests/s. Latency runs from sending a request to reading the whole answer, which comes only "
        "after Pub/Sub acknowledged the message holding its events.",
        "",
        "| what | requests/s | events/s | p50 ms | p99 ms | ratio to ceiling |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| ceiling: bare aiohttp handler | {ceiling_rps:,.0f} | {ceiling_rps * args.batch:,.0f} | "
        f"{percentile(ceiling_load.latencies, 0.5) * 1000:.1f} | {percentile(ceiling_load.latencies, 0.99) * 1000:.1f} "
        "| 1.00 |",
        f"| collector: keys, per-event validation, publish | {rps:,.0f} | {eps:,.0f} | "
        f"{percentile(load.latencies, 0.5) * 1000:.1f} | {percentile(load.latencies, 0.99) * 1000:.1f} | "
        f"{rps / ceiling_rps:.2f} |",
        "",
        f"- Requests: {requests:,} ({ok:,} answered 200{'; ' + others if others else ''}).",
        f"- Zero loss: **{'proved' if zero_loss else 'NOT proved'}**. Events accepted: {len(load.accepted_ids):,}; "
        f"events pulled from the subscription after the run: {len(pulled_ids):,} in {len(messages):,} messages "
        f"({events_per_message:,.0f} events per message), {len(pulled):,} distinct; accepted but not pulled: "
        f"{lost:,}; pulled but never accepted: {unexpected:,}; duplicates: {duplicates:,}. "
        f"Drained in {drain_seconds:.1f} s.",
    ])
    print(section)
    if not args.no_write:
        write_section("collector", section)
    if not zero_loss:
        sys.exit(1)


if __name__ == "__main__":
    main()

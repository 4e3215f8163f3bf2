"""Instructions per request of `orion decide serve` and of bench-decide's ceiling, each
run whole (aiohttp, the event loop, the handler, the impressions) under valgrind's
callgrind, with instrumentation switched on for the measured requests only.

bench-decide's ratio is in requests/s and CPU time, which this shared 2-core machine
moves by a quarter from one repetition to the next; an instruction count does not move,
so a change of a few per cent in what a request costs shows here first. The setup is
bench-decide's (its rules, 100 experiences a tenant, its profiles and histories, its
request bodies, impressions to the Pub/Sub emulator); each server answers `--requests`
other bodies as a warm-up (snippets compiled, pages cached), then the measured ones, on
4 keep-alive connections back to back. Needs valgrind (Debian: apt-get install valgrind);
under it a server runs some fifty times slower, so the run takes a few minutes.

    make bench-decide-instructions
    .venv/bin/python -m benchmarks.decide_instructions --requests 3000
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SERVERS = ("ceiling", "service")


async def _answer_all(url: str, encoded: list[bytes], connections: int = 4) -> dict[int, int]:
    """Send every request, each connection its next as soon as its last is answered."""
    from benchmarks.bench_decide import _connect

    statuses: dict[int, int] = {}
    done = asyncio.get_running_loop().create_future()
    position: dict = {}
    answered = 0

    def on_answer(connection, status: int) -> None:
        nonlocal answered
        answered += 1
        statuses[status] = statuses.get(status, 0) + 1
        if position[connection] < len(encoded) and not connection.closed:
            connection.send(encoded[position[connection]])
            position[connection] += connections
        elif answered >= len(encoded) and not done.done():
            done.set_result(None)

    pool = await _connect(url, on_answer, connections)
    for number, connection in enumerate(pool):
        position[connection] = number + connections
        connection.send(encoded[number])
    await asyncio.wait_for(done, 3600)
    for connection in pool:
        connection.transport.close()
    return statuses


def _instructions(dump: Path) -> int:
    """The instructions a callgrind dump counted (its `totals:` line)."""
    found = re.search(r"^totals:\s*(\d+)", dump.read_text(errors="replace"), re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no totals in {dump}")
    return int(found.group(1))


def measure(which: str, command: list[str], workdir: Path, env: dict, warm: list, measured: list) -> int:
    """Instructions of `measured` requests to the server `command` starts, under callgrind."""
    from benchmarks.bench_decide import _listening_port, encoded_requests, stop

    out = workdir / f"callgrind.{which}"
    log = workdir / f"{which}.log"
    server = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                               f"--callgrind-out-file={out}.%p", *command],
                              stdout=subprocess.PIPE, stderr=open(log, "w"), text=True, env=env,
                              cwd=Path(__file__).resolve().parent.parent)
    try:
        url = f"http://127.0.0.1:{_listening_port(server, log, timeout=900)}/v1/decide"
        print(f"{which}: listening under callgrind; warming up on {len(warm):,} requests", flush=True)
        for requests, switch in ((warm, None), (measured, "on")):
            if switch:
                subprocess.run(["callgrind_control", "-i", "on", str(server.pid)], check=True, capture_output=True)
            statuses = asyncio.run(_answer_all(url, encoded_requests(url, _Bodies(requests))))
            if set(statuses) != {200}:
                raise RuntimeError(f"{which} answered {statuses}")
        subprocess.run(["callgrind_control", "-i", "off", str(server.pid)], check=True, capture_output=True)
        subprocess.run(["callgrind_control", "-d", str(server.pid)], check=True, capture_output=True)
        dumps = sorted(workdir.glob(f"callgrind.{which}.{server.pid}.*"))
        if not dumps:
            raise RuntimeError(f"callgrind wrote no dump for {which}; see {log}")
        return _instructions(dumps[-1])
    finally:
        stop(server, timeout=300)


class _Bodies:
    """What encoded_requests reads: `items`, (body, headers) pairs."""

    def __init__(self, items: list):
        self.items = items


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000,
                        help="measured requests a server (and as many others to warm up; default: %(default)s)")
    parser.add_argument("--leads", type=int, default=20_000, help="leads with a profile per tenant (default: %(default)s)")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("decide_instructions needs valgrind and callgrind_control: apt-get install valgrind")

    from benchmarks.bench_decide import TENANTS, TOPIC, Requests, fill_store, impressions_topic, write_rules
    from orion.collector.keys import add_key
    from orion.testing.emulators import PubSubEmulator

    rng = random.Random(7)
    workdir = Path(tempfile.mkdtemp(prefix="orion-decide-instructions-"))
    rules, store_uri = workdir / "rules", f"sqlite:///{workdir / 'store.db'}"
    write_rules(rules)
    fill_store(store_uri, args.leads, rng, rules)
    keys = {tenant: add_key(workdir / "keys.yaml", tenant, "bench")[0] for tenant in TENANTS}
    bodies = Requests(keys, args.leads, rng, count=2 * args.requests).items
    warm, measured = bodies[args.requests:], bodies[:args.requests]
    emulator = PubSubEmulator.start()
    found = {}
    try:
        env = impressions_topic(emulator)
        commands = {
            "ceiling": [sys.executable, "-c", "import sys; from benchmarks.bench_decide import serve_ceiling; "
                        "serve_ceiling(sys.argv[1])", store_uri],
            "service": [sys.executable, "-m", "orion.cli", "decide", "serve", "--topic", TOPIC, "--keys",
                        str(workdir / "keys.yaml"), "--store", store_uri, "--rules", str(rules), "--port", "0",
                        "--cache-ttl", "0.25"],
        }
        for which in SERVERS:
            found[which] = measure(which, commands[which], workdir, env, warm, measured) / args.requests
            print(f"{which}: {found[which] / 1000:,.0f} thousand instructions a request", flush=True)
    finally:
        emulator.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"instructions a request ({args.requests:,} measured after {args.requests:,} others, 4 "
          f"connections): ceiling {found['ceiling'] / 1000:,.0f} thousand, service {found['service'] / 1000:,.0f} "
          f"thousand; ratio {found['ceiling'] / found['service']:.2f}")


if __name__ == "__main__":
    main()

"""`orion decide serve`: the decision service; `orion analytics experiments`: the report
of every experience's impressions, conversions and lift over control.

    orion decide serve --port 8081 --keys orion-data/collector-keys.yaml \\
        --store sqlite:///orion-data/activities.db --topic projects/P/topics/activities
    orion analytics experiments --tenant acme --store sqlite:///orion-data/activities.db

`add_decide_command(commands)` and `add_analytics_commands(commands)` register them on
the `orion` parser's subparsers; each command sets `handler`, which takes the parsed
arguments and returns the exit code. `analytics` is a command group: another command
joins it with `analytics_commands(commands).add_parser(NAME, ...)`, which creates the
group the first time and returns the same one after.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys
from pathlib import Path

from orion.argtypes import non_negative, port, positive_float, positive_int, pubsub_topic
from orion.settings import DEFAULT_STORE, SAMPLE_RULES

DEFAULT_KEYS = Path("orion-data") / "collector-keys.yaml"


def add_decide_command(commands) -> None:
    """Register `decide` with its `serve` command."""
    from orion.decisions.settings import DecideSettings

    defaults = DecideSettings()
    decide = commands.add_parser("decide", help="real-time decisions: personalized content from a lead's profile",
                                 description="The decision service: POST /v1/decide answers, per placement, "
                                 "the experience, variant and content for a lead. See docs/decisions.md.")
    decide_commands = decide.add_subparsers(dest="decide_command", required=True, metavar="COMMAND")
    serve = decide_commands.add_parser(
        "serve", help="serve POST /v1/decide, GET /healthz and GET /metrics",
        description="Serve POST /v1/decide with the collector's API keys, deciding from the experiences in "
        "the rules and each lead's profile in the store; every decision is published to the topic as an "
        "experience_impression activity. The emulator is used when PUBSUB_EMULATOR_HOST is set.")
    serve.add_argument("--topic", type=pubsub_topic, required=True, metavar="projects/P/topics/T",
                       help="the topic the collector publishes to (the graph's subscription reads it)")
    serve.add_argument("--create-topic", action="store_true", help="create the topic if it does not exist")
    serve.add_argument("--keys", type=Path, default=DEFAULT_KEYS, metavar="FILE",
                       help="the collector's API keys file (default: %(default)s)")
    serve.add_argument("--store", default=DEFAULT_STORE, help="the store the graph writes lead profiles to "
                       "(default: %(default)s)")
    serve.add_argument("--rules", type=Path, default=SAMPLE_RULES,
                       help="rules directory with the experiences (default: the shipped samples)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=port, default=8081, help="port to listen on; 0: any free one "
                       "(default: %(default)s)")
    serve.add_argument("--cache-ttl", type=non_negative, default=defaults.cache_ttl, metavar="SECONDS",
                       help="how long a lead's profile read is reused: a profile change is seen at most this "
                       "long after the graph writes it; 0: read every time (default: %(default)s)")
    serve.add_argument("--cache-entries", type=positive_int, default=defaults.cache_entries, metavar="LEADS",
                       help="leads kept in that cache at most (default: %(default)s)")
    serve.add_argument("--max-placements", type=positive_int, default=defaults.max_placements,
                       help="placements one request may ask for (default: %(default)s)")
    serve.add_argument("--rate-limit", type=non_negative, default=defaults.rate_limit, metavar="PER_SECOND",
                       help="requests a second per key, token bucket; over: 429; 0: no limit "
                       "(default: %(default)s)")
    serve.add_argument("--flush-ms", type=non_negative, default=defaults.flush_seconds * 1000, metavar="MS",
                       help="impressions wait at most this long to be sent together (default: %(default)s)")
    serve.add_argument("--cors-origin", default=defaults.cors_origin,
                       help="Access-Control-Allow-Origin for web pages (default: %(default)s)")
    serve.add_argument("--store-timeout", type=positive_float, default=defaults.store_timeout, metavar="SECONDS",
                       help="how long a MySQL or Bigtable store may take to read a lead before the answer is a "
                       "503 (default: %(default)s)")
    serve.set_defaults(handler=serve_command)


def serve_command(args: argparse.Namespace) -> int:
    from orion.collector.keys import KeysFileError, KeyStore
    from orion.decisions.settings import DecideSettings
    from orion.rules import RuleErrors
    from orion.rules.compiler import load_experiences
    from orion.store import open_store
    from orion.store.base import StoreError

    try:
        keys = KeyStore(args.keys)
    except KeysFileError as err:
        print(f"orion: {err}", file=sys.stderr)
        return 2
    if not len(keys):
        print(f"orion: no API keys in {args.keys}; create one with: "
              f"orion collect keys add --tenant TENANT --keys {args.keys}", file=sys.stderr)
        return 2
    try:
        rules, experiences, refused = load_experiences(args.rules)
    except RuleErrors as errors:
        print(f"orion: the rules in {args.rules} have {len(errors.errors)} error(s):", file=sys.stderr)
        for error in errors.errors:
            print(f"  {error}", file=sys.stderr)
        return 2
    for tenant, errors in refused.items():
        print(f"orion: tenant {tenant!r}: its rules have {len(errors)} error(s), so it gets no decisions "
              "until they are fixed:", file=sys.stderr)
        for error in errors:
            print(f"  {error}", file=sys.stderr)
    try:
        store = open_store(args.store)  # (a new store is made: the service may start before the graph)
        store.init()
    except StoreError as err:
        print(f"orion: {err}", file=sys.stderr)
        return 2
    settings = DecideSettings(cache_ttl=args.cache_ttl, cache_entries=args.cache_entries,
                              max_placements=args.max_placements, rate_limit=args.rate_limit,
                              flush_seconds=args.flush_ms / 1000, cors_origin=args.cors_origin,
                              store_timeout=args.store_timeout)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(run_decider(args.topic, keys, experiences, rules.activity_types, store, settings, args.host,
                                   args.port, args.create_topic))
    except LookupError as err:
        print(f"orion: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The event loop the decision service runs on: uvloop's (libuv), the asyncio API at
    less CPU per request than asyncio's own loop, which at a fixed load spends much of a
    request waking up for it. (The benchmark's ceiling runs on it too.)"""
    import uvloop

    return uvloop.new_event_loop()


async def run_decider(topic_name: str, keys, experiences: dict, types, store, settings, host: str, port: int,
                      create_topic: bool = False, ready=None, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGINT/SIGTERM (or `stop` is set); then stop taking requests, publish
    the impressions that wait and close. `ready(port)` is called once listening."""
    from aiohttp import web

    from orion.collector.publisher import BatchPublisher, PubSubTopic
    from orion.collector.serving import wait_until_stopped
    from orion.collector.redaction import install_log_redaction
    from orion.collector.serving import JsonErrorsRunner
    from orion.decisions.app import Decider, build_app, count_unparsed
    from orion.decisions.leads import LeadReader
    from orion.runtime import tune_gc

    install_log_redaction()
    topic = PubSubTopic(topic_name, settings.publish_timeout)
    status = await topic.ensure(create_topic)
    if status.startswith("not checked"):  # the collector's wording: its requests wait for Pub/Sub; decisions do not
        status = status.split(";")[0] + "; decisions are answered, impressions fail until Pub/Sub answers"
    publisher = BatchPublisher(topic.send, flush_events=settings.flush_events, flush_bytes=settings.flush_bytes,
                               flush_seconds=settings.flush_seconds, max_pending_bytes=settings.max_pending_bytes,
                               publish_timeout=settings.publish_timeout, retry_after_s=settings.retry_after)
    if getattr(store, "read_deadline", None) is not None:
        # Bigtable: the client's retries of a read end with the answer's wait (a 503), so
        # the store's one thread is free again for the next lead by then
        store.read_deadline = min(store.read_deadline, settings.store_timeout)
        store.read_attempt_timeout = min(store.read_attempt_timeout, settings.store_timeout)
    reader = LeadReader(store, settings.cache_ttl, settings.cache_entries)
    decider = Decider(keys, experiences, types, reader, publisher, settings)
    # every error answered in JSON, a request that is not valid HTTP counted as route "unparsed"
    runner = JsonErrorsRunner(build_app(decider), on_unparsed=lambda status: count_unparsed(decider, status),
                              keepalive_timeout=settings.idle_timeout, access_log=None)
    await runner.setup()
    # What is loaded now (the compiled rules, the clients) lives as long as the process:
    # out of the collector's sight, a full collection no longer walks it while requests wait.
    tune_gc()
    gc.collect()
    gc.freeze()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    count = sum(len(found.by_name) for found in experiences.values())
    print(f"orion decide: listening on http://{host}:{bound}/v1/decide; {count} experience(s) of "
          f"{sum(1 for found in experiences.values() if found.by_name)} tenant(s); store {_shown_store(store)}; "
          f"impressions to {topic_name} on {topic.where} ({status})", flush=True)
    if ready is not None:
        ready(bound)
    try:
        await wait_until_stopped(stop)
    finally:
        await site.stop()
        await runner.cleanup()
        await decider.drain()
        await topic.close()
        decider.close()
        print("orion decide: stopped", flush=True)


def _shown_store(store) -> str:
    from orion.collector.redaction import redact

    return redact(getattr(store, "uri", type(store).__name__))


# --- analytics ------------------------------------------------------------------------

_ANALYTICS = "_orion_analytics_commands"


def analytics_commands(commands):
    """The subparsers of the `analytics` command group, created on first use: a command
    of the group registers itself with `.add_parser(...)` on what this returns."""
    found = getattr(commands, _ANALYTICS, None)
    if found is None:
        group = commands.add_parser("analytics", help="reports over the stored activities",
                                    description="Reports computed from the activity store.")
        found = group.add_subparsers(dest="analytics_command", required=True, metavar="REPORT")
        setattr(commands, _ANALYTICS, found)
    return found


def add_analytics_commands(commands) -> None:
    """Register `analytics experiments` (creating the `analytics` group if needed)."""
    experiments = analytics_commands(commands).add_parser(
        "experiments", help="impressions, conversions and lift over control per experience and variant",
        description="For each experience of the tenant: leads exposed, impressions and conversions per "
        "variant (a conversion: the experience's goal activity within its window of the lead's first "
        "impression), the conversion rate, and each variant's lift over the control group with a 95% "
        "confidence interval. Read from the activity store.")
    experiments.add_argument("--tenant", required=True)
    experiments.add_argument("--store", default=DEFAULT_STORE, help="activity store URI (default: %(default)s)")
    experiments.add_argument("--rules", type=Path, default=SAMPLE_RULES,
                             help="rules directory with the experiences and their goals (default: the samples)")
    experiments.add_argument("--experience", action="append", default=[], metavar="NAME",
                             help="only this experience (repeatable; default: all of the tenant's)")
    experiments.add_argument("--goal", metavar="ACTIVITY_TYPE",
                             help="count this activity type as the conversion, instead of each experience's goal")
    experiments.add_argument("--days", type=positive_int, metavar="N",
                             help="a conversion counts within N days of the first impression (default: each "
                             "experience's goal window; 7 with --goal)")
    experiments.add_argument("--since", metavar="TIME",
                             help="only the leads first exposed at or after TIME (RFC 3339, epoch ms, or "
                             "now-7d; their conversions count within the goal's window after it), and the "
                             "impressions from TIME on (default: from the start)")
    experiments.add_argument("--until", metavar="TIME", help="... and before TIME (default: no end)")
    experiments.add_argument("--json", action="store_true", help="print the report as JSON")
    experiments.set_defaults(handler=experiments_command)


def experiments_command(args: argparse.Namespace) -> int:
    from orion.decisions.experiments import ReportError, experiment_report, render_report
    from orion.rules import RuleErrors
    from orion.rules.compiler import load_experiences
    from orion.store.base import StoreError
    from orion.store.opening import open_existing_store

    try:
        rules, experiences, refused = load_experiences(args.rules)
    except RuleErrors as errors:
        print(f"orion: the rules in {args.rules} have {len(errors.errors)} error(s):", file=sys.stderr)
        for error in errors.errors:
            print(f"  {error}", file=sys.stderr)
        return 2
    if args.tenant in refused:
        print(f"orion: tenant {args.tenant!r}: its rules have errors:", file=sys.stderr)
        for error in refused[args.tenant]:
            print(f"  {error}", file=sys.stderr)
        return 2
    tenant_experiences = experiences.get(args.tenant)
    if tenant_experiences is None or not tenant_experiences.by_name:
        print(f"orion: tenant {args.tenant!r} has no experiences in {args.rules}", file=sys.stderr)
        return 2
    unknown = [name for name in args.experience if name not in tenant_experiences.by_name]
    if unknown:
        print(f"orion: tenant {args.tenant!r} has no experience {unknown[0]!r} (it has: "
              f"{', '.join(sorted(tenant_experiences.by_name))})", file=sys.stderr)
        return 2
    args.experience = list(dict.fromkeys(args.experience))  # each once, in the order asked
    types = getattr(rules, "activity_types", None)
    if args.goal is not None and (types is None or types.lookup(args.tenant, args.goal) is None):
        names = types.names(args.tenant) if types is not None else []
        print(f"orion: --goal {args.goal!r} is not an activity type of tenant {args.tenant!r}; it has: "
              f"{', '.join(names)}", file=sys.stderr)
        return 2
    from orion.analytics.query import parse_time

    try:
        since = None if args.since is None else parse_time(args.since)
        until = None if args.until is None else parse_time(args.until)
    except ValueError as err:
        print(f"orion: --since/--until: {err}", file=sys.stderr)
        return 2
    try:
        store = open_existing_store(args.store)
        try:
            report = experiment_report(store, tenant_experiences, only=args.experience, goal_type=args.goal,
                                       days=args.days, since=since, until=until)
        finally:
            store.close()
    except (StoreError, ReportError) as err:
        print(f"orion: {err}", file=sys.stderr)
        return 2
    if args.json:
        import json

        print(json.dumps(report, indent=1, ensure_ascii=False))
    else:
        print(render_report(report))
    return 0

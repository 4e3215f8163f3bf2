"""`orion collect`: run the HTTP intake collector, and manage its API keys.

    orion collect --topic projects/P/topics/activities --keys orion-data/collector-keys.yaml --port 8080
    orion collect --kafka-servers 127.0.0.1:9092 --kafka-topic activities --keys orion-data/collector-keys.yaml
    orion collect keys add --tenant acme --keys orion-data/collector-keys.yaml --label website
    orion collect keys list --keys orion-data/collector-keys.yaml
    orion collect keys revoke KEY_ID --keys orion-data/collector-keys.yaml

`add_collect_command(subparsers)` registers it on an argparse subparsers object (the
`orion` parser's); each command sets `handler`, which takes the parsed arguments and
returns the exit code. `python -m orion.collector ...` runs the same commands on their own.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from orion.argtypes import non_negative, port, positive_float, positive_int, pubsub_topic

SAMPLE_RULES = Path(__file__).resolve().parent.parent / "samples" / "rules"
DEFAULT_KEYS = Path("orion-data") / "collector-keys.yaml"


_KAFKA_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
_KAFKA_SERVER = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})")


def _kafka_topic(text: str) -> str:
    if not _KAFKA_TOPIC.fullmatch(text) or text in (".", ".."):
        raise argparse.ArgumentTypeError(f"{text!r} is not a Kafka topic name (letters, digits, '.', '_', '-'; "
                                         "at most 249)")
    return text


def _kafka_servers(text: str) -> str:
    servers = [server.strip() for server in text.split(",")]
    for server in servers:
        found = _KAFKA_SERVER.fullmatch(server)
        if not found or not 0 < int(found.group(2)) < 65536:
            raise argparse.ArgumentTypeError(f"{server!r} is not HOST:PORT (give HOST:PORT[,HOST:PORT...])")
    return ",".join(servers)


@dataclass(frozen=True)
class KafkaDestination:
    """Where the collector publishes in Kafka mode (else: a Pub/Sub topic name)."""
    servers: str                    # bootstrap servers, HOST:PORT[,HOST:PORT...]
    topic: str
    partitions: int | None = None   # of a topic --create-topic creates; None: the broker's default


def add_collect_command(subparsers) -> None:
    """Register `collect` (serve) with its `keys add|list|revoke` helpers."""
    from orion.collector.settings import CollectorSettings

    defaults = CollectorSettings()
    collect = subparsers.add_parser(
        "collect",
        help="run the HTTP intake collector: events in, Pub/Sub or Kafka out",
        description="Serve POST /v1/events (one event, a JSON array or JSONL; API key per "
        "tenant), GET /healthz and GET /metrics. Accepted events are published to a Pub/Sub "
        "topic (--topic) or a Kafka topic (--kafka-servers, --kafka-topic), many per message "
        "or record; a request is answered only after its events were acknowledged, or 503 "
        "with Retry-After when they were not. The Pub/Sub emulator is used when "
        "PUBSUB_EMULATOR_HOST is set. See docs/collector.md.",
    )
    collect.add_argument("--topic", type=pubsub_topic, metavar="projects/P/topics/T",
                         help="the Pub/Sub topic the graph's subscription reads (this or Kafka's two options)")
    collect.add_argument("--kafka-servers", type=_kafka_servers, metavar="HOST:PORT[,...]",
                         help="Kafka's bootstrap servers: publish to Kafka instead of Pub/Sub")
    collect.add_argument("--kafka-topic", type=_kafka_topic, metavar="TOPIC",
                         help="the Kafka topic (with --kafka-servers); a lead's events stay in one partition")
    collect.add_argument("--create-topic", action="store_true",
                         help="create the topic if it does not exist (handy with the emulator or a test broker)")
    collect.add_argument("--kafka-partitions", type=positive_int, default=None, metavar="N",
                         help="partitions of the Kafka topic --create-topic creates (default: the broker's)")
    collect.add_argument("--keys", type=Path, default=DEFAULT_KEYS, metavar="FILE",
                         help="the API keys file, hashes only (default: %(default)s)")
    collect.add_argument("--rules", type=Path, default=SAMPLE_RULES,
                         help="rules directory: each tenant's activity types (default: the shipped samples)")
    collect.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    collect.add_argument("--port", type=port, default=8080, help="port to listen on (default: %(default)s)")
    collect.add_argument("--max-batch", type=positive_int, default=defaults.max_batch, metavar="EVENTS",
                         help="most events in one request; more: 413 (default: %(default)s)")
    collect.add_argument("--max-body-bytes", type=positive_int, default=defaults.max_body_bytes, metavar="BYTES",
                         help="largest request body, also once decompressed; larger: 413 (default: %(default)s)")
    collect.add_argument("--max-compression-ratio", type=positive_float, default=defaults.max_compression_ratio,
                         metavar="RATIO", help="how many times its size a gzip or deflate body may inflate; "
                         "more: 413 (default: %(default)s)")
    collect.add_argument("--idle-timeout", type=positive_float, default=defaults.idle_timeout, metavar="SECONDS",
                         help="close a connection without a complete request line and headers after this "
                         "long: from when it opens and after each answer (default: %(default)s)")
    collect.add_argument("--body-timeout", type=positive_float, default=defaults.body_timeout, metavar="SECONDS",
                         help="how long a request's body may take to arrive; longer: 408 (default: %(default)s)")
    collect.add_argument("--max-connections", type=positive_int, default=defaults.max_connections, metavar="N",
                         help="open connections at most; past it the oldest one waiting for a request is "
                         "closed, or, when all are busy, the new one gets 503 (default: %(default)s)")
    collect.add_argument("--rate-limit", type=non_negative, default=defaults.rate_limit, metavar="PER_SECOND",
                         help="requests a second per key, token bucket; over: 429; 0: no limit "
                         "(default: %(default)s)")
    collect.add_argument("--rate-burst", type=non_negative, default=None, metavar="REQUESTS",
                         help="requests a key may make at once (default: one second's worth)")
    collect.add_argument("--flush-events", type=positive_int, default=defaults.flush_events, metavar="EVENTS",
                         help="send a message once it holds this many events (default: %(default)s)")
    collect.add_argument("--flush-bytes", type=positive_int, default=defaults.flush_bytes, metavar="BYTES",
                         help="... or this many bytes (default: %(default)s)")
    collect.add_argument("--flush-ms", type=non_negative, default=defaults.flush_seconds * 1000, metavar="MS",
                         help="... or this long after its first event (default: %(default)s)")
    collect.add_argument("--max-pending-bytes", type=positive_int, default=defaults.max_pending_bytes,
                         metavar="BYTES", help="bytes that may wait for Pub/Sub or Kafka; beyond: 503 "
                         "(default: %(default)s)")
    collect.add_argument("--publish-timeout", type=non_negative, default=defaults.publish_timeout, metavar="SECONDS",
                         help="how long Pub/Sub or Kafka may take to acknowledge; longer: 503 (default: %(default)s)")
    collect.add_argument("--retry-after", type=non_negative, default=defaults.retry_after, metavar="SECONDS",
                         help="Retry-After of a 503 (default: %(default)s)")
    collect.add_argument("--cors-origin", default=defaults.cors_origin,
                         help="Access-Control-Allow-Origin for web pages (default: %(default)s)")
    collect.set_defaults(handler=serve)

    keys = collect.add_subparsers(dest="collect_command", metavar="keys")
    keys_parser = keys.add_parser("keys", help="add, list or revoke API keys")
    key_commands = keys_parser.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    add = key_commands.add_parser("add", help="create a key for a tenant; prints it once, stores its hash",
                                  description="Create a random API key for TENANT, store its SHA-256 in "
                                  "the keys file and print the key. It is shown only this once.")
    add.add_argument("--tenant", required=True)
    add.add_argument("--label", default="", help="a note, e.g. where the key is used")
    add.add_argument("--keys", type=Path, default=DEFAULT_KEYS, metavar="FILE",
                     help="the API keys file (default: %(default)s)")
    add.set_defaults(handler=keys_add)
    listing = key_commands.add_parser("list", help="list key ids, tenants and labels (never keys)")
    listing.add_argument("--keys", type=Path, default=DEFAULT_KEYS, metavar="FILE",
                         help="the API keys file (default: %(default)s)")
    listing.set_defaults(handler=keys_list)
    revoke = key_commands.add_parser("revoke", help="remove a key by its id")
    revoke.add_argument("key_id", metavar="KEY_ID")
    revoke.add_argument("--keys", type=Path, default=DEFAULT_KEYS, metavar="FILE",
                        help="the API keys file (default: %(default)s)")
    revoke.set_defaults(handler=keys_revoke)


def keys_add(args: argparse.Namespace) -> int:
    from orion.collector.keys import KeysFileError, add_key

    try:
        key, record = add_key(args.keys, args.tenant, args.label)
    except KeysFileError as err:
        print(f"orion: {err}", file=sys.stderr)
        return 2
    print(key)
    print(f"key {record.id} for tenant {record.tenant} stored (hash only) in {args.keys}; "
          "the key above is not shown again", file=sys.stderr)
    return 0


def keys_list(args: argparse.Namespace) -> int:
    from orion.collector.keys import KeysFileError, read_keys

    try:
        keys = read_keys(args.keys)
    except KeysFileError as err:
        print(f"orion: {err}", file=sys.stderr)
        return 2
    for key in keys.values():
        print(f"{key.id}\t{key.tenant}\t{key.created_at}\t{key.label}")
    return 0


def keys_revoke(args: argparse.Namespace) -> int:
    from orion.collector.keys import KeysFileError, revoke_key

    try:
        removed = revoke_key(args.keys, args.key_id)
    except KeysFileError as err:
        print(f"orion: {err}", file=sys.stderr)
        return 2
    if removed is None:
        print(f"orion: no key {args.key_id} in {args.keys}", file=sys.stderr)
        return 1
    print(f"revoked key {removed.id} of tenant {removed.tenant}", file=sys.stderr)
    return 0


def _destination(args: argparse.Namespace) -> str | KafkaDestination:
    """The Pub/Sub topic name or the KafkaDestination the options name; ValueError when
    they name neither or both."""
    kafka = args.kafka_servers is not None or args.kafka_topic is not None
    if args.topic is not None and kafka:
        raise ValueError("collect publishes to one place: give --topic (Pub/Sub) or --kafka-servers and "
                         "--kafka-topic (Kafka), not both")
    if kafka:
        if args.kafka_servers is None or args.kafka_topic is None:
            raise ValueError("--kafka-servers and --kafka-topic go together")
        return KafkaDestination(args.kafka_servers, args.kafka_topic, args.kafka_partitions)
    if args.topic is None:
        raise ValueError("collect needs --topic projects/P/topics/T (Pub/Sub) or --kafka-servers HOST:PORT "
                         "--kafka-topic TOPIC (Kafka)")
    if args.kafka_partitions is not None:
        raise ValueError("--kafka-partitions is for Kafka topics (--kafka-servers, --kafka-topic)")
    return args.topic


def serve(args: argparse.Namespace) -> int:
    from orion.collector.app import CollectorSettings, load_types
    from orion.collector.kafka import KafkaUnavailable  # confluent-kafka itself is imported only for Kafka
    from orion.collector.keys import KeysFileError, KeyStore
    from orion.rules import RuleErrors

    try:
        destination = _destination(args)
    except ValueError as err:
        print(f"orion: {err}", file=sys.stderr)
        return 2
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
        types = load_types(args.rules)
    except RuleErrors as errors:
        print(f"orion: the rules in {args.rules} have {len(errors.errors)} error(s):", file=sys.stderr)
        for error in errors.errors:
            print(f"  {error}", file=sys.stderr)
        return 2
    settings = CollectorSettings(
        max_batch=args.max_batch, max_body_bytes=args.max_body_bytes, rate_limit=args.rate_limit,
        rate_burst=args.rate_burst, flush_events=args.flush_events, flush_bytes=args.flush_bytes,
        flush_seconds=args.flush_ms / 1000, max_pending_bytes=args.max_pending_bytes,
        publish_timeout=args.publish_timeout, retry_after=args.retry_after, cors_origin=args.cors_origin,
        max_compression_ratio=args.max_compression_ratio, idle_timeout=args.idle_timeout,
        body_timeout=args.body_timeout, max_connections=args.max_connections)
    pubsub = not isinstance(destination, KafkaDestination)
    if pubsub and settings.max_body_bytes * 2 + settings.flush_bytes > 9_000_000:
        print("orion: --max-body-bytes x 2 + --flush-bytes must stay under 9,000,000 "
              "(a Pub/Sub message holds at most 10 MB)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(run_collector(destination, keys, types, settings, args.host, args.port, args.create_topic))
    except (LookupError, KafkaUnavailable) as err:
        print(f"orion: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


async def run_collector(destination: str | KafkaDestination, keys, types, settings, host: str, port: int,
                        create_topic: bool = False, ready=None, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGINT/SIGTERM (or `stop` is set); then stop taking requests, publish
    what is waiting, flush the producer and close. `destination` is a Pub/Sub topic name
    or a KafkaDestination. `ready(port)` is called once listening."""
    from aiohttp import web

    from orion.collector.serving import wait_until_stopped

    from orion.collector.app import CollectorRunner, build_app
    from orion.collector.metrics import CollectorMetrics
    from orion.collector.publisher import BatchPublisher, PubSubTopic
    from orion.collector.redaction import install_log_redaction

    install_log_redaction()
    _raise_open_files_limit(settings.max_connections)
    metrics = CollectorMetrics()
    publishing = dict(flush_events=settings.flush_events, flush_bytes=settings.flush_bytes,
                      flush_seconds=settings.flush_seconds, max_pending_bytes=settings.max_pending_bytes,
                      publish_timeout=settings.publish_timeout, retry_after_s=settings.retry_after, metrics=metrics)
    if isinstance(destination, KafkaDestination):
        from orion.collector.kafka import KafkaTopic

        topic = KafkaTopic(destination.servers, destination.topic, publish_timeout=settings.publish_timeout,
                           max_pending_bytes=settings.max_pending_bytes)
        status = await topic.ensure(create_topic, destination.partitions)
        publisher = BatchPublisher(sink=topic, **publishing)
        where = f"Kafka topic {destination.topic} on {topic.where} ({status})"
    else:
        topic = PubSubTopic(destination, settings.publish_timeout)
        status = await topic.ensure(create_topic)
        publisher = BatchPublisher(topic.send, **publishing)
        where = f"topic {destination} on {topic.where} ({status})"
    app = build_app(keys, types, publisher, settings, metrics)
    runner = CollectorRunner(app, settings)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    print(f"orion collect: listening on http://{host}:{bound}/v1/events; {where}; "
          f"{len(keys)} key(s) for {len(keys.tenants())} tenant(s)", flush=True)
    if ready is not None:
        ready(bound)
    try:
        await wait_until_stopped(stop)
    finally:
        await site.stop()  # no new connections; requests under way finish below
        publisher.flush()  # their events go now, not when the flush would be due
        await runner.cleanup()
        await publisher.close()  # every request answered: its events acknowledged, or 503
        await topic.close()  # Kafka: the producer flushed
        print("orion collect: stopped", flush=True)


def _raise_open_files_limit(max_connections: int) -> None:
    """Each connection is a file descriptor: raise the soft limit towards the hard one
    when the cap would not fit under it, else say the cap cannot be reached."""
    try:
        import resource
    except ImportError:  # not on this platform
        return
    wanted = max_connections + 256  # the listening socket, Kafka's or gRPC's, logs, the keys file
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
    except (ValueError, OSError):
        raised = soft
    if raised < wanted:
        logging.getLogger(__name__).warning(
            "open files are limited to %d: fewer than --max-connections %d can be served (ulimit -n)",
            raised, max_connections)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orion.collector")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_collect_command(subparsers)
    args = parser.parse_args(["collect", *(sys.argv[1:] if argv is None else argv)])
    return args.handler(args)

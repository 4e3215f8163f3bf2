"""The `orion` command line.

    orion run                           # the graph on the DirectRunner over the samples
    orion run --events 'in/*.jsonl' --store sqlite:///data/a.db --direct_num_workers=2
    orion evaluate                      # the shipped sample rules and events, into ./orion-data/
    orion evaluate --rules DIR --events FILE.jsonl
    orion rules validate DIR            # every error, with file:line; non-zero exit if any
    orion store init URI                # tables, column families, indexes; safe to rerun
    orion history --store URI --tenant T --lead L   # a lead's activities, newest first
    orion bootstrap --from mysql://... --to bigtable://...   # copy the legacy history, then verify
    orion collect --topic projects/P/topics/T --keys FILE   # HTTP intake: events in, Pub/Sub out (docs/collector.md)
    orion run --outbox sqlite:///orion-data/outbox.db   # with campaign flows, emails queued
    orion send --outbox URI --store URI --smtp HOST:PORT  # drain the outbox to SMTP, feed back deliveries
    orion campaign run --tenant T --campaign NAME       # a batch campaign, in --streams N
    orion run --runner flink                            # the same job as a PyFlink job
    orion flink cluster start                           # a local Flink cluster: --flink-master (docs/flink.md)
    orion decide serve --topic projects/P/topics/T --keys FILE   # POST /v1/decide (docs/decisions.md)
    orion analytics experiments --tenant T              # impressions, conversions, lift over control
    orion analytics query --tenant T --metric events --by type --from now-1h --to now   # roll-ups
    orion analytics serve --keys FILE                   # GET /v1/analytics/*, the dashboard (docs/analytics.md)
    orion run --runner dataflow --project P --region R --temp_location gs://B/tmp --out-dir gs://B/out --dry-run
    orion run --mode passive --legacy-store mysql://... --store bigtable://...   # migration
    orion run --mode tenants --legacy-store mysql://... --store bigtable://...   # each tenant in its stage
    orion tenants set acme --stage passive --store bigtable://...   # applied live (docs/migration.md)
    orion jars path flink-kafka                         # Java jars from Maven Central, fetched once
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from orion.argtypes import new_file, non_negative, pubsub_subscription
from orion.settings import (
    DEFAULT_DATA_DIR, DEFAULT_OUTBOX, DEFAULT_STORE, MODES, SAMPLE_EVENTS, SAMPLE_RULES, output_dir,
)


def _add_run(commands) -> None:
    parser = commands.add_parser(
        "run",
        help="run the activity graph (Beam) over files or a Pub/Sub subscription",
        description="Run the activity graph: parse, order each lead's activities, evaluate "
        "triggers, store every activity, write outcomes and dead letters. With no options: "
        "the shipped sample rules and events on the DirectRunner, into ./orion-data/. Any "
        "option not listed here goes to Beam unchanged (for example "
        "--direct_num_workers=2 --direct_running_mode=multi_processing).",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--events", default=str(SAMPLE_EVENTS),
                        help="JSONL files, a path or a glob; bounded (default: the shipped samples)")
    source.add_argument("--subscription", metavar="projects/P/subscriptions/S", type=pubsub_subscription,
                        help="read a Pub/Sub subscription, streaming (the emulator through "
                        "PUBSUB_EMULATOR_HOST); messages carry one activity, a JSON array or JSONL")
    parser.add_argument("--rules", type=Path, default=SAMPLE_RULES,
                        help="rules directory (default: the shipped samples)")
    parser.add_argument("--templates", type=Path, action="append", default=[],
                        help="extra template folder (repeatable)")
    parser.add_argument("--store", default=DEFAULT_STORE,
                        help="activity store URI (default: %(default)s)")
    parser.add_argument("--out-dir", type=output_dir, default=DEFAULT_DATA_DIR,
                        help="where outcomes-*.jsonl and dead-letters-*.jsonl go: a local directory or "
                        "gs://BUCKET/PATH (default: %(default)s)")
    parser.add_argument("--allowed-lateness", type=non_negative, default=60.0, metavar="SECONDS",
                        help="how far behind the watermark (or, in a file, behind the newest "
                        "earlier line) an activity may arrive and still be evaluated in order; "
                        "later ones go to the dead letters as late (default: %(default)s)")
    parser.add_argument("--dedup-span", type=non_negative, default=24.0, metavar="HOURS",
                        help="how long, in event time, a lead remembers event ids to drop "
                        "duplicate deliveries (default: %(default)s)")
    parser.add_argument("--duration", type=non_negative, metavar="SECONDS",
                        help="with --subscription: stop after this long (default: until Ctrl-C); with "
                        "--kafka-topic on the Beam graph: read for this long, then finish")
    parser.add_argument("--outbox", metavar="URI", default=DEFAULT_OUTBOX,
                        type=lambda uri: None if uri.lower() == "none" else uri,
                        help="run the campaign flows of what qualifies and queue their emails, held "
                        "emails and webhook calls here, once each however often the job reruns: "
                        "mysql://..., sqlite:///PATH or eml:///DIR; `none`: no flows, outcomes only "
                        "(default: %(default)s)")
    parser.add_argument("--no-rollups", dest="rollups", action="store_false",
                        help="keep no analytics roll-ups (by default the graph rolls up what it does per "
                        "tenant and minute into the store, for `orion analytics`)")
    migration = parser.add_argument_group("migration from the legacy MySQL store (docs/migration.md)")
    migration.add_argument("--mode", choices=MODES,
                           help="legacy: MySQL only; passive: write both, serve reads from MySQL and "
                           "compare with --store; active: write both, serve from --store and compare "
                           "with MySQL; tenants: each tenant in the stage the tenant registry in --store "
                           "gives it (orion tenants set), applied live (default: --store alone)")
    migration.add_argument("--legacy-store", metavar="mysql://USER:PASSWORD@HOST:PORT/DB",
                           help="the legacy store, with --mode")
    migration.add_argument("--tenant-refresh", type=float, metavar="SECONDS",
                           help="with --mode tenants: re-read the tenant registry this often (default: 10)")
    runners = parser.add_argument_group("runners")
    runners.add_argument("--runner", default="direct",
                         help="direct (default), flink (a PyFlink job: a local mini-cluster, or "
                         "--flink-master), dataflow (Google Cloud Dataflow), or any Beam runner "
                         "name, passed to Beam (e.g. FlinkRunner)")
    from orion.runners.flink_options import add_flink_arguments
    from orion.runners.dataflow_options import add_dataflow_arguments

    add_flink_arguments(parser)
    add_dataflow_arguments(parser)
    parser.set_defaults(handler=_run, beam_args_allowed=True)



def _run(args: argparse.Namespace) -> int:
    from orion.rules import RuleErrors
    from orion.rules.shared import serving_rules
    from orion.runners.direct import run
    from orion.settings import RunConfig

    try:
        # Kept for the graph's steps: on the in-process runner they do not compile them again.
        rules, refused = serving_rules(str(args.rules), tuple(str(t) for t in args.templates))
    except RuleErrors as errors:
        return _report_rule_errors(args.rules, errors)
    for tenant, errors in refused.items():
        # One tenant's broken rules do not stop the others: its campaigns do not run.
        print(f"orion: tenant {tenant!r}: its rules have {len(errors)} error(s), so its campaigns do not run "
              "until they are fixed (its activities are still stored):", file=sys.stderr)
        for error in errors:
            print(f"  {error}", file=sys.stderr)
    if args.mode is not None and args.legacy_store is None:
        print("orion: --mode needs --legacy-store mysql://USER:PASSWORD@HOST:PORT/DB", file=sys.stderr)
        return 2
    print(f"rules: {args.rules}\n{rules.summary()}")
    config = RunConfig(
        rules_dir=str(args.rules),
        template_dirs=tuple(str(t) for t in args.templates),
        events=None if args.subscription else args.events,
        subscription=args.subscription,
        store_uri=args.store,
        out_dir=args.out_dir,
        allowed_lateness_ms=int(args.allowed_lateness * 1000),
        dedup_span_ms=int(args.dedup_span * 3_600_000),
        duration_s=args.duration,
        beam_args=tuple(args.beam_args),
        outbox_uri=args.outbox,
        mode=args.mode,
        legacy_store_uri=args.legacy_store,
        tenant_refresh_s=args.tenant_refresh,
        rollups=args.rollups,
    )
    runner = args.runner.lower()
    kafka = None
    if (args.kafka_topic is not None or args.kafka_servers is not None) and runner != "flink":
        # The Beam graph reads Kafka through Beam's ReadFromKafka, a Java transform, on
        # Prism (orion/runners/beam_kafka.py), for a bounded time: it then finishes as over
        # files. An open-ended Kafka job is the Flink job's.
        if args.kafka_servers is None or args.kafka_topic is None:
            print("orion: --kafka-servers and --kafka-topic go together", file=sys.stderr)
            return 2
        if args.duration is None or args.duration <= 0:
            print("orion: the Beam graph reads Kafka for a bounded time: add --duration SECONDS (it reads "
                  "that long, then finishes); for a job that reads on until stopped, add --runner flink",
                  file=sys.stderr)
            return 2
        if runner not in ("direct", "prism", "prismrunner"):
            print(f"orion: the Beam graph reads Kafka on Beam's Prism runner, not {args.runner}; for Kafka on "
                  "Flink, add --runner flink", file=sys.stderr)
            return 2
        from orion.transforms.kafka import KafkaIntake

        kafka = KafkaIntake(args.kafka_servers, args.kafka_topic, max_read_s=args.duration)
        config = config._replace(events=None, duration_s=None)
        runner = "direct"
    # (a Dataflow job's places are checked by its own runner: the ones it takes are remote)
    refusal = _check_run_places(args) if runner != "dataflow" else None
    if refusal is not None:
        print(f"orion: {refusal}", file=sys.stderr)
        return 2
    if runner == "flink":
        from orion.runners.flink import run_from_args

        status = run_from_args(config, args)
        if status:
            return status
    elif runner == "dataflow":
        from orion.runners.dataflow_options import run_from_args

        return run_from_args(config, args)
    else:
        if runner != "direct":
            from orion.runners.flink_options import beam_runner_args

            config = config._replace(beam_args=(f"--runner={args.runner}", *beam_runner_args(args),
                                                *config.beam_args))
        from orion.runners.beam_kafka import BeamKafkaUnavailable

        try:
            run(config, kafka=kafka)
        except BeamKafkaUnavailable as error:
            print(f"orion: {error}", file=sys.stderr)
            return 1
    stores = {None: args.store, "legacy": f"{_shown_uri(args.legacy_store or '')} (the legacy store)"}.get(
        args.mode, f"{args.store}, beside the legacy store {_shown_uri(args.legacy_store or '')} ({args.mode})")
    print(f"store:        {stores}\noutcomes:     {args.out_dir}/outcomes-*.jsonl\n"
          f"dead letters: {args.out_dir}/dead-letters-*.jsonl")
    return 0


def _check_run_places(args: argparse.Namespace) -> str | None:
    """What is wrong with where `orion run` reads and writes, said before the graph is
    built (inside it, the same fault is a worker's traceback): the input files, the output
    folder, and the store, the legacy store and the outbox URIs; on this machine's runner,
    the store and the outbox are opened and their tables made (as the graph's steps would)."""
    import glob

    from orion.settings import is_remote

    if args.subscription is None and args.kafka_topic is None and not is_remote(args.events):
        events = str(args.events)
        if Path(events).is_dir() and not getattr(args, "watch", False):  # (--watch: a folder, watched)
            return f"--events {events} is a folder; give its files: --events '{events.rstrip('/')}/*.jsonl'"
        if not glob.has_magic(events) and not Path(events).exists():
            return f"--events {events}: no such file"
        if glob.has_magic(events) and not glob.glob(events):
            print(f"orion: note: no file matches --events {events}; nothing to read", file=sys.stderr)
    if not is_remote(args.out_dir) and Path(args.out_dir).exists() and not Path(args.out_dir).is_dir():
        return f"--out-dir {args.out_dir} is a file, not a folder"
    local = args.runner.lower() == "direct"
    from orion.campaigns.outbox import OutboxError, open_outbox
    from orion.store import open_store
    from orion.store.base import StoreError

    # The URIs first, all of them, so a mistyped one is said before anything is made;
    # then, on this machine, the store and the outbox are opened and their tables made.
    opened = []
    try:
        # (--mode legacy uses the legacy store alone: --store is not opened)
        store = args.store if getattr(args, "mode", None) != "legacy" else None
        for option, uri in (("--legacy-store", args.legacy_store), ("--store", store)):
            if uri is not None:
                try:
                    opened.append((option, uri, open_store(uri)))
                except (StoreError, ValueError) as err:
                    return f"{option}: {err}"
        if args.outbox is not None:
            try:
                opened.append(("--outbox", args.outbox, open_outbox(args.outbox)))
            except OutboxError as err:
                return f"--outbox: {err}"
        for option, uri, place in opened:
            if option == "--legacy-store":  # never made: it must be there, with its activities
                if not hasattr(place, "check_existing"):
                    return f"--legacy-store must be mysql://USER:PASSWORD@HOST:PORT/DB, not {_shown_uri(uri)}"
                if local:
                    try:
                        place.check_existing()
                    except StoreError as err:
                        return f"--legacy-store: {err}"
                continue
            if not local:
                continue
            try:
                place.init()  # safe to rerun: the graph's steps do it too
            except (StoreError, OutboxError) as err:
                return f"{option}: {err}"
            except Exception as err:  # noqa: BLE001 - a client's own error (a file that is not SQLite, ...)
                return f"{option} {_shown_uri(uri)} cannot be opened: {type(err).__name__}: {err}"
    finally:
        for _, _, place in opened:
            place.close()
    return None


def _shown_uri(uri: str) -> str:
    from orion.store.mysql import redact

    return redact(uri)


def _report_rule_errors(rules_dir, errors) -> int:
    print(f"orion: the rules in {rules_dir} have {len(errors.errors)} error(s):", file=sys.stderr)
    for error in errors.errors:
        print(f"  {error}", file=sys.stderr)
    return 2


def _add_evaluate(commands) -> None:
    parser = commands.add_parser(
        "evaluate",
        help="evaluate a JSONL file of activities against rules, lead by lead",
        description="Evaluate each lead's activities in event-time order against the rules; "
        "write outcomes and dead letters as JSONL. With no options: the shipped sample "
        "rules and events, output into ./orion-data/.",
    )
    parser.add_argument("--rules", type=Path, default=SAMPLE_RULES,
                        help="rules directory (default: the shipped samples)")
    parser.add_argument("--events", default=str(SAMPLE_EVENTS),
                        help="JSONL activities, one per line; - for standard input "
                        "(default: the shipped sample events)")
    parser.add_argument("--out", type=new_file, default=DEFAULT_DATA_DIR / "outcomes.jsonl",
                        help="where outcomes go (default: %(default)s)")
    parser.add_argument("--dead-letters", type=new_file, default=DEFAULT_DATA_DIR / "dead-letters.jsonl",
                        help="where bad events go, with their reason (default: %(default)s)")
    parser.add_argument("--templates", type=Path, action="append", default=[],
                        help="extra template folder (repeatable)")
    parser.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from orion.file_evaluation import evaluate_file
    from orion.rules import RuleErrors, load_rules

    try:
        rules = load_rules(args.rules, args.templates)
    except RuleErrors as errors:
        return _report_rule_errors(args.rules, errors)
    if args.events != "-" and not Path(args.events).is_file():
        print(f"orion: no such events file: {args.events}", file=sys.stderr)
        return 2
    for path in (args.out, args.dead_letters):
        path.parent.mkdir(parents=True, exist_ok=True)
    print(f"rules: {args.rules}\n{rules.summary()}")
    with open(args.out, "w", encoding="utf-8") as outcomes, \
            open(args.dead_letters, "w", encoding="utf-8") as dead_letters:
        summary = evaluate_file(rules, args.events, outcomes, dead_letters)
    print(summary.render())
    print(f"outcomes:     {args.out}\ndead letters: {args.dead_letters}")
    return 0


def _add_rules(commands) -> None:
    parser = commands.add_parser("rules", help="work with rule files")
    rules_commands = parser.add_subparsers(dest="rules_command", required=True)
    validate = rules_commands.add_parser(
        "validate",
        help="check every rule file in a directory; list all errors",
        description="Check every *.yaml under DIR against the schema and for meaning. Prints "
        "every error as file:line: message and exits 1 if there is any.",
    )
    validate.add_argument("directory", type=Path, metavar="DIR")
    validate.add_argument("--templates", type=Path, action="append", default=[],
                          help="extra template folder (repeatable)")
    validate.set_defaults(handler=_validate)


def _validate(args: argparse.Namespace) -> int:
    from orion.rules import check_rules, load_rules

    errors = check_rules(args.directory, args.templates)
    for error in errors:
        print(error)
    if errors:
        print(f"{len(errors)} error(s)", file=sys.stderr)
        return 1
    print(load_rules(args.directory, args.templates).summary())
    print("rules are valid")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orion",
        description="Orion: customer activity in, trigger rules evaluated per lead, campaigns out.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run(commands)
    _add_evaluate(commands)
    _add_rules(commands)
    from orion.store.commands import add_store_commands

    add_store_commands(commands)
    from orion.pipelines.bootstrap_command import add_bootstrap_command

    add_bootstrap_command(commands)
    from orion.collector import add_collect_command

    add_collect_command(commands)
    from orion.campaigns.send import add_send_command

    add_send_command(commands)
    from orion.campaigns.batch import add_campaign_commands

    add_campaign_commands(commands)
    from orion.runners.flink_options import add_flink_commands

    add_flink_commands(commands)
    from orion.jars import add_jars_command

    add_jars_command(commands)
    from orion.decisions.commands import add_analytics_commands, add_decide_command

    add_decide_command(commands)
    add_analytics_commands(commands)
    from orion.analytics.commands import add_analytics_query_commands

    add_analytics_query_commands(commands)  # analytics query, analytics serve: the roll-ups
    from orion.tenants.commands import add_tenants_commands

    add_tenants_commands(commands)  # tenants list | set | report: per-tenant rollout stages
    return parser


def main(argv: list[str] | None = None) -> int:
    # The Google client libraries warn on import about future Python and grpcio
    # support; they say nothing about Orion's run, so the command line keeps them out.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"google\.")
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "beam_args_allowed", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.beam_args = unknown
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())

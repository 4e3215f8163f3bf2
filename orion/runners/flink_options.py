"""The options of `orion run --runner flink`, kept apart from orion.runners.flink so that
building the command line imports neither PyFlink nor Beam."""
from __future__ import annotations

import argparse
import sys


def add_flink_arguments(parser: argparse.ArgumentParser) -> None:
    """The options `orion run --runner flink` takes."""
    group = parser.add_argument_group("Flink (--runner flink)")
    group.add_argument("--flink-master", metavar="HOST:PORT",
                       help="a remote cluster's JobManager REST address (default: a local mini-cluster)")
    group.add_argument("--parallelism", type=int, default=1, help="(default: %(default)s)")
    group.add_argument("--checkpoint-interval", type=float, metavar="SECONDS",
                       help="checkpoint every SECONDS (default: no periodic checkpoints)")
    group.add_argument("--savepoint-dir", metavar="DIR",
                       help="unbounded input: when the run ends, stop with a savepoint here")
    group.add_argument("--from-savepoint", metavar="PATH", help="restore the job's state from a savepoint")
    group.add_argument("--jars", action="append", default=[], metavar="JAR",
                       help="connector jar for the job, e.g. flink-sql-connector-kafka (repeatable)")
    group.add_argument("--watch", action="store_true",
                       help="--events names a directory: read new files as they appear (unbounded)")
    group.add_argument("--kafka-servers", metavar="HOST:PORT[,...]", help="read Kafka (needs --jars)")
    group.add_argument("--kafka-topic", metavar="TOPIC")
    group.add_argument("--python-execution-mode", choices=("process", "thread"), default="process",
                       help="Flink's python.execution-mode (default: %(default)s)")


def flink_options_from(args: argparse.Namespace):
    from orion.runners.flink import FlinkOptions

    if (args.kafka_servers is None) != (args.kafka_topic is None):
        raise SystemExit("orion: --kafka-servers and --kafka-topic go together")
    return FlinkOptions(
        parallelism=args.parallelism,
        checkpoint_interval_s=args.checkpoint_interval,
        flink_master=args.flink_master,
        savepoint_dir=args.savepoint_dir,
        from_savepoint=args.from_savepoint,
        jars=tuple(args.jars),
        watch=args.watch,
        kafka_servers=args.kafka_servers,
        kafka_topic=args.kafka_topic,
        execution_mode=args.python_execution_mode,
    )


def run_from_args(config, args: argparse.Namespace) -> int:
    """`orion run --runner flink`: run the PyFlink job with the parsed options."""
    from orion.runners.flink import FlinkUnavailable, run_flink

    try:
        run_flink(config, options=flink_options_from(args))
    except FlinkUnavailable as error:
        print(f"orion: {error}", file=sys.stderr)
        return 2
    return 0

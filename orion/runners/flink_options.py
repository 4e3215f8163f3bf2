"""The options of `orion run --runner flink`, kept apart from orion.runners.flink so that
building the command line imports neither PyFlink nor Beam."""
from __future__ import annotations

import argparse


def add_flink_arguments(parser: argparse.ArgumentParser) -> None:
    """The options `orion run --runner flink` takes."""
    group = parser.add_argument_group("Flink (--runner flink)")
    group.add_argument("--flink-master", metavar="HOST:PORT",
                       help="a remote cluster's JobManager REST address (default: a local mini-cluster)")
    group.add_argument("--parallelism", type=int, metavar="N",
                       help="parallel instances of each step (default: 1); with a Beam runner "
                       "(--runner FlinkRunner) it goes to Beam's --parallelism")
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
    group.add_argument("--python-execution-mode", choices=("process", "thread"), default="thread",
                       help="Flink's python.execution-mode (default: %(default)s)")
    group.add_argument("--bundle-size", type=int, metavar="N",
                       help="Flink's python.fn-execution.bundle.size: elements per bundle handed to "
                       "the Python workers (default: Flink's, 100000)")


def flink_options_from(args: argparse.Namespace):
    from orion.settings import FlinkOptions

    if (args.kafka_servers is None) != (args.kafka_topic is None):
        raise SystemExit("orion: --kafka-servers and --kafka-topic go together")
    return FlinkOptions(
        parallelism=args.parallelism or 1,
        checkpoint_interval_s=args.checkpoint_interval,
        flink_master=args.flink_master,
        savepoint_dir=args.savepoint_dir,
        from_savepoint=args.from_savepoint,
        jars=tuple(args.jars),
        watch=args.watch,
        kafka_servers=args.kafka_servers,
        kafka_topic=args.kafka_topic,
        execution_mode=args.python_execution_mode,
        bundle_size=args.bundle_size,
    )


def beam_runner_args(args: argparse.Namespace) -> tuple[str, ...]:
    """The options of this group a Beam runner takes too (Beam's FlinkRunner: --parallelism),
    passed on to Beam when `orion run --runner` names a Beam runner."""
    return () if args.parallelism is None else (f"--parallelism={args.parallelism}",)

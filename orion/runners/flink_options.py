"""The Flink runner's command line: the options of `orion run --runner flink` and the
`orion flink` commands (a local cluster; stopping and cancelling a cluster's jobs), kept
apart from orion.runners.flink so that building the command line imports neither
PyFlink nor Beam.

    orion flink cluster start --taskmanagers 2      # a standalone cluster on 127.0.0.1
    orion run --runner flink --flink-master 127.0.0.1:PORT --events in/ --watch --detach
    orion flink stop JOB_ID --savepoint /tmp/savepoints
    orion run --runner flink --flink-master 127.0.0.1:PORT --events in/ --watch --detach --from-savepoint PATH
    orion run --runner flink --events in/ --watch --checkpoint-dir /var/orion/checkpoints   # cancelled, or failed
    orion flink newest-checkpoint /var/orion/checkpoints
    orion run --runner flink --events in/ --watch --checkpoint-dir /var/orion/checkpoints \\
        --from-savepoint /var/orion/checkpoints      # resumes from the newest retained checkpoint
    orion flink cluster status
    orion flink cluster stop
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_flink_arguments(parser: argparse.ArgumentParser) -> None:
    """The options `orion run --runner flink` takes."""
    from orion.settings import DEFAULT_RESTART_ATTEMPTS, DEFAULT_RESTART_DELAY_S, DEFAULT_STREAMING_CHECKPOINT_INTERVAL_S

    group = parser.add_argument_group("Flink (--runner flink)")
    group.add_argument("--flink-master", metavar="HOST:PORT",
                       help="submit to the cluster whose JobManager REST endpoint this is (`orion flink "
                       "cluster status` prints a local cluster's); default: a mini-cluster in this process")
    group.add_argument("--detach", action="store_true",
                       help="with --flink-master: submit, print the job id and return; the job runs on "
                       "(`orion flink stop JOB --savepoint DIR` stops it)")
    group.add_argument("--parallelism", type=int, metavar="N",
                       help="parallel instances of each step (default: 1); with a Beam runner "
                       "(--runner FlinkRunner) it goes to Beam's --parallelism")
    group.add_argument("--checkpoint-interval", type=float, metavar="SECONDS",
                       help="checkpoint every SECONDS; 0: never (default: every "
                       f"{DEFAULT_STREAMING_CHECKPOINT_INTERVAL_S:g} s for --watch and Kafka, whose outcome and "
                       "dead-letter files are committed at checkpoints; none for files, committed at the end)")
    group.add_argument("--checkpoint-dir", metavar="DIR",
                       help="keep checkpoints here, also when the job is cancelled or fails for good (resume with "
                       "--from-savepoint DIR); default: OUT_DIR/.flink-checkpoints, removed when the job ends")
    group.add_argument("--restart-attempts", type=int, default=DEFAULT_RESTART_ATTEMPTS, metavar="N",
                       help="a failed job restarts from its last checkpoint up to N times, then fails; 0: never "
                       "(default: %(default)s)")
    group.add_argument("--restart-delay", type=float, default=DEFAULT_RESTART_DELAY_S, metavar="SECONDS",
                       help="between two restarts (default: %(default)g)")
    group.add_argument("--savepoint-dir", metavar="DIR",
                       help="unbounded input: when the run ends, stop with a savepoint here")
    group.add_argument("--from-savepoint", metavar="PATH",
                       help="restore the job's state from a savepoint, a retained checkpoint (chk-N), or the newest "
                       "retained checkpoint in a --checkpoint-dir")
    group.add_argument("--jars", action="append", default=[], metavar="JAR",
                       help="connector jar for the job, e.g. flink-sql-connector-kafka (repeatable)")
    group.add_argument("--watch", action="store_true",
                       help="--events names a directory: read new files as they appear (unbounded)")
    group.add_argument("--kafka-servers", metavar="HOST:PORT[,...]", help="read this Kafka topic: with --runner flink until stopped (its connector jar comes "
                       "from `orion jars` unless --jars names one), on the Beam graph for --duration seconds")
    group.add_argument("--kafka-topic", metavar="TOPIC")
    group.add_argument("--python-execution-mode", choices=("process", "thread"),
                       help="Flink's python.execution-mode on the local mini-cluster (default: thread); "
                       "a job on a cluster, or with --python-archive, always runs in process mode")
    group.add_argument("--python-executable", metavar="PATH",
                       help="the TaskManagers' Python (python.executable); it needs orion's dependencies "
                       "(default: this interpreter's path); with --python-archive, a path inside it, "
                       "e.g. venv.zip/bin/python")
    group.add_argument("--python-archive", metavar="ARCHIVE[#DIR]",
                       help="a zipped Python environment shipped with the job (python.archives); the "
                       "TaskManagers unpack it into DIR (default: the archive's file name)")
    group.add_argument("--bundle-size", type=int, metavar="N",
                       help="Flink's python.fn-execution.bundle.size: elements per bundle handed to "
                       "the Python workers (default: Flink's, 100000)")


def flink_options_from(args: argparse.Namespace):
    from orion.settings import FlinkOptions

    if (args.kafka_servers is None) != (args.kafka_topic is None):
        raise SystemExit("orion: --kafka-servers and --kafka-topic go together")
    if args.detach and args.flink_master is None:
        raise SystemExit("orion: --detach needs --flink-master (a mini-cluster ends with this process)")
    if args.restart_attempts < 0 or args.restart_delay < 0:
        raise SystemExit("orion: --restart-attempts and --restart-delay are 0 or more")
    if args.python_execution_mode == "thread" and (args.flink_master or args.python_archive):
        raise SystemExit("orion: --python-execution-mode thread runs on the local mini-cluster only: a "
                         "TaskManager keeps one embedded interpreter and the first job's modules for its "
                         "whole life, so jobs on a cluster (and with --python-archive) run in process mode")
    return FlinkOptions(
        parallelism=args.parallelism or 1,
        checkpoint_interval_s=args.checkpoint_interval,
        checkpoint_dir=args.checkpoint_dir,
        restart_attempts=args.restart_attempts,
        restart_delay_s=args.restart_delay,
        flink_master=args.flink_master,
        savepoint_dir=args.savepoint_dir,
        from_savepoint=args.from_savepoint,
        jars=tuple(args.jars),
        watch=args.watch,
        kafka_servers=args.kafka_servers,
        kafka_topic=args.kafka_topic,
        execution_mode=args.python_execution_mode or "thread",
        python_executable=args.python_executable,
        python_archive=args.python_archive,
        bundle_size=args.bundle_size,
    )


def beam_runner_args(args: argparse.Namespace) -> tuple[str, ...]:
    """The options of this group a Beam runner takes too (Beam's FlinkRunner: --parallelism),
    passed on to Beam when `orion run --runner` names a Beam runner."""
    return () if args.parallelism is None else (f"--parallelism={args.parallelism}",)


# --- orion flink ... -------------------------------------------------------------------


def add_flink_commands(commands) -> None:
    """`orion flink cluster start|stop|status`, `orion flink stop JOB`, `orion flink cancel JOB`,
    `orion flink newest-checkpoint DIR`."""
    from orion.settings import DEFAULT_DATA_DIR

    default_state = DEFAULT_DATA_DIR / "flink-cluster"
    parser = commands.add_parser("flink", help="a local Flink cluster, and the jobs on a cluster",
                                 description="Start, inspect and stop a standalone Flink cluster on this "
                                 "machine (the apache-flink package's own scripts); stop or cancel a job "
                                 "submitted with `orion run --runner flink --flink-master ... --detach`.")
    flink_commands = parser.add_subparsers(dest="flink_command", required=True, metavar="COMMAND")

    cluster = flink_commands.add_parser("cluster", help="a standalone cluster on 127.0.0.1")
    cluster_commands = cluster.add_subparsers(dest="cluster_command", required=True, metavar="COMMAND")
    start = cluster_commands.add_parser(
        "start", help="start one JobManager and N TaskManagers",
        description="Start one JobManager and N TaskManagers with Flink's jobmanager.sh and taskmanager.sh, "
        "every port free and on 127.0.0.1; configuration, logs and pid files in the state directory. "
        "Prints the REST address to pass as --flink-master.")
    start.add_argument("--taskmanagers", type=int, default=2, metavar="N", help="(default: %(default)s)")
    start.add_argument("--slots", type=int, default=2, metavar="N",
                       help="task slots per TaskManager (default: %(default)s)")
    stop = cluster_commands.add_parser("stop", help="stop the TaskManagers, then the JobManager")
    status = cluster_commands.add_parser("status", help="the REST address, TaskManagers, slots and jobs")
    for command, handler in ((start, _cluster_start), (stop, _cluster_stop), (status, _cluster_status)):
        command.add_argument("--state-dir", type=Path, default=default_state,
                             help="the cluster's configuration, logs and pid files (default: %(default)s)")
        command.set_defaults(handler=handler)

    for name, help_text in (("stop", "stop a job with a savepoint (resume it with --from-savepoint)"),
                            ("cancel", "cancel a job, without a savepoint")):
        command = flink_commands.add_parser(name, help=help_text, description=f"{help_text.capitalize()}.")
        command.add_argument("job", metavar="JOB_ID")
        command.add_argument("--flink-master", metavar="HOST:PORT",
                             help="the cluster's REST address (default: the local cluster's, from --state-dir)")
        command.add_argument("--state-dir", type=Path, default=default_state,
                             help="a local cluster's state directory (default: %(default)s)")
        if name == "stop":
            command.add_argument("--savepoint", metavar="DIR",
                                 help="where the savepoint goes: a directory every TaskManager and the "
                                 "JobManager can write (default: the cluster's savepoint directory)")
            command.add_argument("--drain", action="store_true",
                                 help="first advance event time to the end: every buffered activity is "
                                 "released (do this before changing the job's state layout)")
        command.set_defaults(handler=_job_stop if name == "stop" else _job_cancel)

    newest = flink_commands.add_parser(
        "newest-checkpoint", help="the newest retained checkpoint in a --checkpoint-dir",
        description="Print the newest complete checkpoint (chk-N with a _metadata) retained in DIR, the "
        "--checkpoint-dir of a job that was cancelled or failed (a path, or a URL such as gs://BUCKET/PATH, "
        "read through Flink's file systems); --from-savepoint takes it, or DIR itself. "
        "Exit 1 if there is none.")
    newest.add_argument("directory", metavar="DIR")
    newest.set_defaults(handler=_newest_checkpoint)


def _fails_with_cluster_error(handler):
    def run(args: argparse.Namespace) -> int:
        from orion.flink.cluster import ClusterError

        try:
            return handler(args)
        except ClusterError as error:
            print(f"orion: {error}", file=sys.stderr)
            return 2
    return run


@_fails_with_cluster_error
def _cluster_start(args: argparse.Namespace) -> int:
    from orion.flink.cluster import LocalCluster

    status = LocalCluster(args.state_dir).start(taskmanagers=args.taskmanagers, slots=args.slots)
    print(status.render())
    print(f"submit with: orion run --runner flink --flink-master {status.rest_address}")
    return 0


@_fails_with_cluster_error
def _cluster_stop(args: argparse.Namespace) -> int:
    from orion.flink.cluster import LocalCluster

    stopped = LocalCluster(args.state_dir).stop()
    print(f"stopped {len(stopped)} Flink process(es)" if stopped else f"no cluster running from {args.state_dir}")
    return 0


@_fails_with_cluster_error
def _cluster_status(args: argparse.Namespace) -> int:
    from orion.flink.cluster import LocalCluster

    cluster = LocalCluster(args.state_dir)
    if not cluster.is_running():
        print(f"no cluster running from {args.state_dir} (orion flink cluster start)")
        return 1
    print(cluster.status().render())
    return 0


def _master(args: argparse.Namespace) -> str:
    from orion.flink.cluster import LocalCluster

    return args.flink_master or LocalCluster(args.state_dir).rest_address


@_fails_with_cluster_error
def _job_stop(args: argparse.Namespace) -> int:
    from orion.flink.cluster import stop_job

    savepoint = stop_job(_master(args), args.job, args.savepoint, drain=args.drain)
    print(f"stopped job {args.job}\nsavepoint:    {savepoint}")
    print(f"resume with:  orion run --runner flink --flink-master {_master(args)} --from-savepoint {savepoint} ...")
    return 0


@_fails_with_cluster_error
def _job_cancel(args: argparse.Namespace) -> int:
    from orion.flink.cluster import cancel_job

    print(f"job {args.job}: {cancel_job(_master(args), args.job)}")
    return 0


@_fails_with_cluster_error
def _newest_checkpoint(args: argparse.Namespace) -> int:
    from orion.flink.cluster import newest_checkpoint

    found = newest_checkpoint(args.directory)
    if found is None:
        print(f"orion: no complete checkpoint in {args.directory}", file=sys.stderr)
        return 1
    print(found)
    return 0

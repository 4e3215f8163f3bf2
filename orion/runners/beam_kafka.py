"""What the Beam graph needs to read Kafka (orion/transforms/kafka.py), started for one run
and stopped after it: Beam's expansion service with KafkaIO, which expands ReadFromKafka
into Java steps; Beam's Java SDK harness as an external worker pool, which runs those
steps; and the runner, Beam's Prism (a local portable runner; the Python steps run in
this process, LOOPBACK). Their jars are the `beam-kafka` bundle and Prism is built with Go
once (orion/jars.py); no Docker is needed.

    orion run --kafka-servers 127.0.0.1:9092 --kafka-topic activities --duration 60

    orion.runners.direct.run(config, kafka=KafkaIntake(...))   # from Python: starts and stops them

    with BeamKafkaServices(intake) as services:      # or by hand, around a pipeline of one's own
        pipeline = beam.Pipeline(options=PipelineOptions(services.beam_args()))
        orion.runners.direct.build(pipeline, config, intake, services.expansion_service)

The worker pool serves one job: Beam's Java harness shuts down an executor all its
workers share when the first one ends, so a second job on the same pool fails to start
its worker. Hence one set of services per run.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from orion.jars import JarFetchError, classpath, prism_binary
from orion.testing.emulators import free_port
from orion.testing.jvm import find_java, tail, terminate

BUNDLE = "beam-kafka"
EXPANSION_SERVICE_MAIN = "org.apache.beam.sdk.expansion.service.ExpansionService"
WORKER_POOL_MAIN = "org.apache.beam.fn.harness.ExternalWorkerService"
JAVA_MISSING = "the Beam graph's Kafka intake needs Java 17 or newer: apt-get install openjdk-17-jre-headless"
START_TIMEOUT_S = 120.0
STOP_GRACE_S = 5.0
# PortableRunner waits on the job's state stream with --job_server_timeout (60 s by
# default), and a run longer than that would fail with DEADLINE_EXCEEDED: a run waits as
# long as it takes.
JOB_SERVER_TIMEOUT_S = 7 * 24 * 3600


class BeamKafkaUnavailable(RuntimeError):
    """A service the Beam Kafka intake needs cannot start; the message says why."""


TOPIC_CHECK_S = 10.0


def check_topic(servers: str, topic: str, timeout_s: float = TOPIC_CHECK_S) -> None:
    """Raise BeamKafkaUnavailable unless a broker at `servers` answers and has `topic`:
    said before any Java starts, instead of KafkaIO's stack trace from inside the job.
    (Without confluent-kafka, the collector's client, nothing is checked.)"""
    try:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient
    except ImportError:
        return
    admin = AdminClient({"bootstrap.servers": servers})
    try:
        # Every topic, not this one: asking for one by name may create it on a broker
        # with auto.create.topics.enable.
        found = admin.list_topics(timeout=timeout_s).topics.get(topic)
    except KafkaException as err:
        raise BeamKafkaUnavailable(f"no Kafka broker at {servers} answered within {timeout_s:g} s ({err}); "
                                   "start Kafka or correct --kafka-servers") from None
    if found is None or found.error is not None:
        raise BeamKafkaUnavailable(f"Kafka topic {topic} does not exist on {servers}: create it (orion collect "
                                   "--create-topic does), or correct --kafka-topic")


class BeamKafkaServices:
    """The expansion service and the Java worker pool on free ports, their logs in a
    temporary directory (removed on exit unless `keep_logs`); Prism is started by Beam's
    PrismRunner from `beam_args()`. With `intake`, its broker and topic are checked first
    (check_topic), before any Java starts."""

    def __init__(self, intake=None, keep_logs: bool = False):
        self.intake = intake
        self.keep_logs = keep_logs
        self.workdir: Path | None = None
        self.processes: list[tuple[str, subprocess.Popen, Path]] = []
        self.expansion_service = ""
        self.prism: Path | None = None

    def __enter__(self) -> "BeamKafkaServices":
        if self.intake is not None:
            check_topic(self.intake.servers, self.intake.topic)
        java = find_java(BeamKafkaUnavailable, JAVA_MISSING)
        try:
            jars = classpath(BUNDLE)
            self.prism = prism_binary()
        except JarFetchError as error:
            raise BeamKafkaUnavailable(f"reading Kafka with the Beam graph: {error}") from error
        self.workdir = Path(tempfile.mkdtemp(prefix="orion-beam-kafka-"))
        try:
            pool_port, expansion_port = free_port(), free_port()
            # The pool's address travels in PIPELINE_OPTIONS, the way Beam's own launcher gives it.
            pool_options = {"options": {"environmentOptions": [f"external_service_address=localhost:{pool_port}"]}}
            self._start("worker pool", [java, "-cp", jars, WORKER_POOL_MAIN],
                        {**os.environ, "PIPELINE_OPTIONS": json.dumps(pool_options)}, pool_port)
            self._start("expansion service",
                        [java, "-cp", jars, EXPANSION_SERVICE_MAIN, str(expansion_port),
                         "--defaultEnvironmentType=EXTERNAL", f"--defaultEnvironmentConfig=localhost:{pool_port}"],
                        dict(os.environ), expansion_port)
            self.expansion_service = f"localhost:{expansion_port}"
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def beam_args(self) -> list[str]:
        """Beam's flags for a run on Prism with these services."""
        return ["--runner=PrismRunner", f"--prism_location={self.prism}",
                f"--job_server_timeout={JOB_SERVER_TIMEOUT_S}"]

    def _start(self, name: str, command: list[str], environment: dict, port: int) -> None:
        log = Path(self.workdir) / f"{name.replace(' ', '-')}.log"
        with open(log, "wb") as handle:
            process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=environment,
                                       stdin=subprocess.DEVNULL, cwd=self.workdir,
                                       preexec_fn=_stop_with_parent)
        self.processes.append((name, process, log))
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise BeamKafkaUnavailable(f"Beam's {name} exited with {process.returncode}:\n{tail(log, 3000)}")
            with socket.socket() as sock:
                sock.settimeout(1.0)
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.2)
        raise BeamKafkaUnavailable(f"Beam's {name} did not listen on port {port} within {START_TIMEOUT_S:g} s:\n"
                                   f"{tail(log, 3000)}")

    def __exit__(self, *exc) -> None:
        for _, process, _ in reversed(self.processes):
            terminate(process, STOP_GRACE_S)
        self.processes.clear()
        if self.workdir is not None and not self.keep_logs:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _stop_with_parent() -> None:
    """In the child before exec: on Linux, SIGTERM it when the process that started it
    ends, so a run killed without its cleanup (SIGTERM, SIGKILL) leaves no JVM behind."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

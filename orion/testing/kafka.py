"""A real Apache Kafka broker for tests, benchmarks and trying Orion's Kafka commands: one
node in KRaft mode (broker and controller in one JVM) on free 127.0.0.1 ports, its data
in a throwaway directory, started from the `kafka` jar bundle (orion/jars.py: Apache
Kafka's own jars from Maven Central, fetched once by java/kafka/pom.xml). It needs Java 17
and, until the jars are cached, Maven; without them it fails with a message that says what
to install. Nothing is ever replaced by a mock.

Its settings suit tests: topics are created explicitly (no auto-creation), everything is
replicated once, the transaction log accepts one in-sync replica (so transactional
producers, such as Flink's exactly-once Kafka sink, work), and consumer groups start
without the usual rebalance delay.

    python -m orion.testing.kafka --topic activities:3    # prints the bootstrap servers; Ctrl-C stops it
"""
from __future__ import annotations

import argparse
import base64
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from orion.jars import JarFetchError, classpath
from orion.testing import jvm
from orion.testing.emulators import free_port

NODE_ID = 1
JAVA_MISSING = "Kafka needs Java 17 or newer: apt-get install openjdk-17-jre-headless"
CLIENT_MISSING = ("the Kafka broker is checked through confluent-kafka: pip install -e '.[collector,test]' "
                  "(or pip install confluent-kafka)")
# What the broker's log says when another process took its port between free_port() and
# the bind.
_PORT_TAKEN = ("Address already in use", "BindException")
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin"])


class KafkaUnavailable(RuntimeError):
    """The broker cannot start here; the message says what to install, or why it failed."""


class _PortTaken(RuntimeError):
    pass


def random_cluster_id() -> str:
    """A KRaft cluster id as Kafka's Uuid writes it: 16 random bytes, URL-safe base64
    without padding. Kafka's own generator refuses ids that start with '-' (they read as
    command-line options), and so does this one."""
    while True:
        found = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not found.startswith("-"):
            return found


def find_java() -> str:
    """The java of JAVA_HOME, or the one on PATH, once it has shown it is 17 or newer."""
    return jvm.find_java(KafkaUnavailable, JAVA_MISSING)


class KafkaBroker(jvm.ThrowawayServer):
    """One KRaft broker+controller whose files live under `workdir` (created if missing):
    server.properties, log4j2.properties, data/ (deleted by stop()) and logs/server.log.

        broker = KafkaBroker(tmp_path); broker.start()
        broker.create_topic("activities", partitions=3)
        ... bootstrap.servers = broker.bootstrap_servers ...
        broker.stop()
    """

    def __init__(self, workdir: Path):
        super().__init__(workdir)
        self.port: int | None = None
        self.controller_port: int | None = None
        self.cluster_id = random_cluster_id()
        self.process: subprocess.Popen | None = None

    @property
    def bootstrap_servers(self) -> str:
        if self.port is None:
            raise RuntimeError("the broker has not been started: call start() first")
        return f"127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def log_file(self) -> Path:
        """The broker's own log (log4j2); the JVM's stdout and stderr are in kafka.out."""
        return self.workdir / "logs" / "server.log"

    def start(self, timeout_s: float = 60) -> None:
        """Start the broker and return once it answers a metadata request. Raises
        KafkaUnavailable (what to install, or the end of the broker's log)."""
        if self.process is not None and self.process.poll() is None:
            return
        java = find_java()
        try:
            import confluent_kafka  # noqa: F401  (the readiness check below speaks Kafka through it)
        except ImportError as error:
            raise KafkaUnavailable(f"{error}: {CLIENT_MISSING}") from error
        try:
            jars = classpath("kafka")
        except JarFetchError as error:
            raise KafkaUnavailable(f"cannot get Apache Kafka's jars: {error}") from error
        self._stop_at_exit()
        deadline = time.monotonic() + timeout_s
        # free_port() cannot hold the ports for the JVM: another process may take one in
        # between, and then the broker exits at once. Try a few pairs.
        for _ in range(3):
            self._prepare()
            self._format(java, jars, max(deadline - time.monotonic(), 5))
            self._launch(java, jars)
            try:
                self._wait_until_ready(deadline)
                return
            except _PortTaken:
                self._terminate()
            except BaseException:
                self._terminate()
                raise
        raise KafkaUnavailable(f"the broker found its port taken three times in a row:\n{jvm.tail(self.log_file)}")

    def _prepare(self) -> None:
        self.port, self.controller_port = free_port(), free_port()
        while self.controller_port == self.port:
            self.controller_port = free_port()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        self.log_file.unlink(missing_ok=True)  # a retry reads only its own log
        (self.workdir / "server.properties").write_text(self._server_properties(), encoding="utf-8")
        (self.workdir / "log4j2.properties").write_text(self._log4j_properties(), encoding="utf-8")

    def _server_properties(self) -> str:
        settings = {
            "process.roles": "broker,controller",
            "node.id": NODE_ID,
            "controller.quorum.voters": f"{NODE_ID}@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": self.data_dir,
            # A test names every topic it uses; a typo must not create one silently.
            "auto.create.topics.enable": "false",
            "num.partitions": 1,
            "default.replication.factor": 1,
            "min.insync.replicas": 1,
            "offsets.topic.replication.factor": 1,
            # Transactions (Flink's exactly-once sink) need the transaction log, whose
            # defaults (3 replicas, 2 in sync) one broker can never satisfy.
            "transaction.state.log.replication.factor": 1,
            "transaction.state.log.min.isr": 1,
            "share.coordinator.state.topic.replication.factor": 1,
            "share.coordinator.state.topic.min.isr": 1,
            # The internal topics are made on first use, 50 partitions each by default:
            # a few keep the first consumer group and the first transaction quick.
            "offsets.topic.num.partitions": 4,
            "transaction.state.log.num.partitions": 4,
            # A group's first member would otherwise wait 3 s for others to join.
            "group.initial.rebalance.delay.ms": 0,
            "num.network.threads": 2,
            "num.io.threads": 2,
            "background.threads": 2,
        }
        return "".join(f"{key}={value}\n" for key, value in settings.items())

    def _log4j_properties(self) -> str:
        return (
            "status = warn\n"
            "appender.file.type = File\n"
            "appender.file.name = file\n"
            f"appender.file.fileName = {self.log_file}\n"
            "appender.file.layout.type = PatternLayout\n"
            "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
            "rootLogger.level = INFO\n"
            "rootLogger.appenderRef.file.ref = file\n"
            # The state-change and request loggers fill the log with every partition move.
            "logger.state.name = state.change.logger\n"
            "logger.state.level = WARN\n"
            "logger.request.name = kafka.request.logger\n"
            "logger.request.level = WARN\n"
        )

    def _jvm(self, java: str, jars: str) -> list[str]:
        return [java, "-Xms64m", "-Xmx512m", "-XX:+UseSerialGC", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.properties'}",
                f"-Dkafka.logs.dir={self.workdir / 'logs'}", "-cp", jars]

    def _format(self, java: str, jars: str, timeout: float) -> None:
        # kafka-storage.sh format: writes meta.properties (cluster id, node id) and the
        # bootstrap metadata into the empty log directory, which the broker requires.
        command = [*self._jvm(java, jars), "kafka.tools.StorageTool", "format", "--cluster-id",
                   self.cluster_id, "--config", str(self.workdir / "server.properties")]
        try:
            done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  timeout=timeout, cwd=self.workdir, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as error:
            raise KafkaUnavailable(f"formatting the broker's storage did not finish within {timeout:.0f} s") \
                from error
        if done.returncode != 0:
            raise KafkaUnavailable(f"formatting the broker's storage failed with {done.returncode}:\n"
                                   f"{done.stdout[-3000:]}\n{jvm.tail(self.log_file, 2000)}")

    def _launch(self, java: str, jars: str) -> None:
        command = [*self._jvm(java, jars), "kafka.Kafka", str(self.workdir / "server.properties")]
        # setpriv (util-linux) makes the kernel stop the broker when the thread that
        # started it dies without reaching stop(), e.g. a killed test run.
        setpriv = shutil.which("setpriv", path=SEARCH_PATH)
        if setpriv is not None:
            command = [setpriv, "--pdeathsig", "TERM", *command]
        with open(self.workdir / "kafka.out", "wb") as out:
            # A session of its own, so a Ctrl-C in the terminal reaches the test run (which
            # then stops the broker in order) and not the broker directly.
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir,
                                            stdin=subprocess.DEVNULL, start_new_session=True)

    def _wait_until_ready(self, deadline: float) -> None:
        from confluent_kafka.admin import AdminClient

        last_error: object = "the port never opened"
        admin = None
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                text = jvm.tail(self.log_file) + "\n" + jvm.tail(self.workdir / "kafka.out", 2000)
                if any(marker in text for marker in _PORT_TAKEN):
                    raise _PortTaken(text)
                raise KafkaUnavailable(f"the Kafka broker exited with {self.process.returncode}:\n{text}")
            # The port first: a client pointed at a closed port logs every refused attempt.
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
            except OSError as error:
                last_error = error
                time.sleep(0.2)
                continue
            if admin is None:
                admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, "log_level": 3})
            try:
                metadata = admin.list_topics(timeout=min(5.0, max(deadline - time.monotonic(), 0.5)))
                if NODE_ID in metadata.brokers:
                    return
                last_error = f"the metadata names no broker {NODE_ID} yet: {metadata.brokers}"
            except Exception as error:  # KafkaException while the broker is still starting
                last_error = error
            time.sleep(0.2)
        raise KafkaUnavailable(f"the Kafka broker did not answer on {self.bootstrap_servers} in time "
                               f"({last_error}):\n{jvm.tail(self.log_file)}")

    def admin(self):
        """A confluent_kafka AdminClient of this broker."""
        from confluent_kafka.admin import AdminClient

        return AdminClient({"bootstrap.servers": self.bootstrap_servers})

    def create_topic(self, name: str, partitions: int = 1, config: dict[str, str] | None = None,
                     timeout_s: float = 30) -> None:
        """Create topic `name` and return once every partition has a leader, so a producer's
        first record does not meet an unknown partition."""
        from confluent_kafka.admin import NewTopic

        admin = self.admin()
        futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1,
                                                config=dict(config or {}))], request_timeout=timeout_s)
        futures[name].result(timeout=timeout_s)
        deadline = time.monotonic() + timeout_s
        while True:
            topic = admin.list_topics(topic=name, timeout=timeout_s).topics.get(name)
            ready = topic is not None and topic.error is None and len(topic.partitions) == partitions \
                and all(partition.leader >= 0 for partition in topic.partitions.values())
            if ready:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"topic {name!r} has no leader for all {partitions} partitions "
                                   f"after {timeout_s} s: {topic}")
            time.sleep(0.1)

    def _terminate(self, grace_s: float = 15) -> None:
        # SIGTERM is the broker's controlled shutdown; its data is thrown away anyway.
        process, self.process = self.process, None
        jvm.terminate(process, grace_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orion.testing.kafka",
        description="Start a single-node Kafka broker (KRaft) on a free 127.0.0.1 port, print its "
        "bootstrap servers and run until Ctrl-C; its data is deleted at the end.",
    )
    parser.add_argument("--topic", action="append", default=[], metavar="NAME[:PARTITIONS]",
                        help="create this topic once the broker is up (repeatable)")
    parser.add_argument("--workdir", type=Path, help="where its files go (default: a new temporary directory)")
    args = parser.parse_args(argv)
    broker = KafkaBroker(args.workdir or Path(tempfile.mkdtemp(prefix="orion-kafka-")))

    def announce() -> None:
        for topic in args.topic:
            name, _, partitions = topic.partition(":")
            broker.create_topic(name, int(partitions or 1))
            print(f"topic {name}: {partitions or 1} partition(s)", file=sys.stderr)
        print(broker.bootstrap_servers, flush=True)
        print(f"broker log: {broker.log_file}; Ctrl-C stops it", file=sys.stderr, flush=True)

    return jvm.serve(broker, KafkaUnavailable, announce,
                     alive=lambda: broker.process is not None and broker.process.poll() is None,
                     exited=lambda: f"the broker exited:\n{jvm.tail(broker.log_file)}")


if __name__ == "__main__":
    sys.exit(main())

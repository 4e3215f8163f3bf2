"""A real Apache HBase for tests, benchmarks and trying the hbase:// store: HBase in
standalone mode (HMaster's `start` runs the master, one region server and an embedded
ZooKeeper in one JVM, over a local file:// root directory) and HBase's Thrift 2 server in
a second JVM, both on free 127.0.0.1 ports, their data in a throwaway directory. Started
from the `hbase` jar bundle (orion/jars.py: Apache HBase 2.6's own jars from Maven Central,
fetched once by java/hbase/pom.xml). It needs Java 17 and, until the jars are cached,
Maven; without them it fails with a message that says what to install. Nothing is ever
replaced by a mock.

Two JVMs, because HBase starts its Thrift server only from its own main class, and the
bundle runs HBase's main classes as they are (nothing is compiled). Both start at once:
the Thrift server connects to the cluster through ZooKeeper as soon as the cluster is up.
The server is ready when the Thrift server answers a call that needs the initialized
master (listNamespaces), so a store's `init` can create tables straight away.

    python -m orion.testing.hbase --table activities    # prints hbase://127.0.0.1:PORT/activities; Ctrl-C stops it
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from xml.sax.saxutils import escape

from orion.jars import JarFetchError, classpath
from orion.testing import jvm
from orion.testing.emulators import free_port

JAVA_MISSING = "HBase needs Java 17 or newer: apt-get install openjdk-17-jre-headless"
CLIENT_MISSING = "the HBase server is checked through thriftpy2: pip install -e . (or pip install thriftpy2)"
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin"])
MASTER_MAIN = "org.apache.hadoop.hbase.master.HMaster"
THRIFT_MAIN = "org.apache.hadoop.hbase.thrift2.ThriftServer"
# HBase reaches into the JDK's internals (direct buffers, netty, Hadoop's Shell); on
# Java 17 these must be opened explicitly, as HBase's own bin/hbase does.
JDK17_FLAGS = (
    "-Dorg.apache.hbase.thirdparty.io.netty.tryReflectionSetAccessible=true",
    "--add-modules", "jdk.unsupported",
    "--add-opens", "java.base/java.io=ALL-UNNAMED",
    "--add-opens", "java.base/java.nio=ALL-UNNAMED",
    "--add-opens", "java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens", "java.base/java.lang=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens", "java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens", "java.base/java.util=ALL-UNNAMED",
    "--add-opens", "java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-exports", "java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports", "java.security.jgss/sun.security.krb5=ALL-UNNAMED",
    "--add-exports", "java.base/sun.net.dns=ALL-UNNAMED",
    "--add-exports", "java.base/sun.net.util=ALL-UNNAMED",
)
# What the logs say when another process took a port between free_port() and the bind.
_PORT_TAKEN = ("Address already in use", "BindException", "Could not start ZK at requested port")


class HBaseUnavailable(RuntimeError):
    """HBase cannot start here; the message says what to install, or why it failed."""


class _PortTaken(RuntimeError):
    pass


def find_java() -> str:
    """The java of JAVA_HOME, or the one on PATH, once it has shown it is 17 or newer."""
    return jvm.find_java(HBaseUnavailable, JAVA_MISSING)


class HBaseServer(jvm.ThrowawayServer):
    """Standalone HBase plus its Thrift 2 server, their files under `workdir` (created if
    missing): conf/ (hbase-site.xml, log4j.properties), data/ (deleted by stop()) and
    logs/ (master.log, thrift.log, and each JVM's own output in *.out).

        server = HBaseServer(tmp_path); server.start()
        store = open_store(server.uri("activities")); store.init()
        server.stop()

    `settings` are added to (or replace) hbase-site.xml's properties, for both JVMs.
    """

    def __init__(self, workdir: Path, settings: dict[str, object] | None = None):
        super().__init__(workdir)
        self.settings = dict(settings or {})
        self.thrift_port: int | None = None
        self.zookeeper_port: int | None = None
        self.master: subprocess.Popen | None = None
        self.thrift: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        """HOST:PORT of the Thrift server."""
        if self.thrift_port is None:
            raise RuntimeError("HBase has not been started: call start() first")
        return f"127.0.0.1:{self.thrift_port}"

    def uri(self, table: str) -> str:
        """The hbase:// store URI of `table` on this server."""
        return f"hbase://{self.address}/{table}"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def logs_dir(self) -> Path:
        return self.workdir / "logs"

    @property
    def master_log(self) -> Path:
        return self.logs_dir / "master.log"

    @property
    def thrift_log(self) -> Path:
        return self.logs_dir / "thrift.log"

    def start(self, timeout_s: float = 180) -> None:
        """Start both JVMs and return once the Thrift server answers a call that needs the
        initialized master. Raises HBaseUnavailable (what to install, or the end of the
        logs)."""
        if self.running():
            return
        java = find_java()
        try:
            import thriftpy2  # noqa: F401  (the readiness check speaks Thrift through it)
        except ImportError as error:
            raise HBaseUnavailable(f"{error}: {CLIENT_MISSING}") from error
        try:
            jars = classpath("hbase")
        except JarFetchError as error:
            raise HBaseUnavailable(f"cannot get Apache HBase's jars: {error}") from error
        self._stop_at_exit()
        deadline = time.monotonic() + timeout_s
        # free_port() cannot hold the ports for the JVMs: another process may take one in
        # between, and then ZooKeeper or the Thrift server gives up. Try a few times.
        for _ in range(3):
            self._prepare()
            self._launch(java, jars)
            try:
                self._wait_until_ready(deadline)
                return
            except _PortTaken:
                self._terminate()
            except BaseException:
                self._terminate()
                raise
        raise HBaseUnavailable(f"HBase found a port taken three times in a row:\n{self._logs()}")

    def running(self) -> bool:
        return all(process is not None and process.poll() is None for process in (self.master, self.thrift))

    def _prepare(self) -> None:
        self.zookeeper_port, self.thrift_port = free_port(), free_port()
        while self.thrift_port == self.zookeeper_port:
            self.thrift_port = free_port()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.data_dir.mkdir(parents=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        for log in self.logs_dir.iterdir():  # a retry reads only its own logs
            log.unlink()
        conf = self.workdir / "conf"
        conf.mkdir(parents=True, exist_ok=True)
        (conf / "hbase-site.xml").write_text(self._site_xml(), encoding="utf-8")
        for name in ("master", "thrift"):
            (conf / f"log4j-{name}.properties").write_text(self._log4j_properties(self.logs_dir / f"{name}.log"),
                                                           encoding="utf-8")

    def _site(self) -> dict[str, object]:
        settings: dict[str, object] = {
            "hbase.cluster.distributed": "false",
            "hbase.rootdir": (self.data_dir / "root").as_uri(),
            "hbase.tmp.dir": self.data_dir / "tmp",
            "hbase.zookeeper.property.dataDir": self.data_dir / "zookeeper",
            "hbase.zookeeper.quorum": "127.0.0.1",
            "hbase.zookeeper.property.clientPort": self.zookeeper_port,
            # The master and region server RPC ports: any free ones (their defaults,
            # 16000 and 16020, would clash with any other HBase on the machine).
            "hbase.localcluster.assign.random.ports": "true",
            "hbase.master.ipc.address": "127.0.0.1",
            "hbase.regionserver.ipc.address": "127.0.0.1",
            "hbase.unsafe.regionserver.hostname": "127.0.0.1",
            # No web UIs.
            "hbase.master.info.port": -1,
            "hbase.regionserver.info.port": -1,
            "hbase.thrift.info.port": -1,
            # The local file system has no hflush/hsync; HBase refuses it for its WAL
            # unless told that this is understood (standalone mode only).
            "hbase.unsafe.stream.capability.enforce": "false",
            # Two cores shared with the tests: fewer idle threads.
            "hbase.regionserver.handler.count": 8,
            "hbase.master.handler.count": 8,
            "hbase.thrift.minWorkerThreads": 4,
            # The one region server is there at once; the master need not wait for more.
            "hbase.master.wait.on.regionservers.mintostart": 1,
            "hbase.master.wait.on.regionservers.timeout": 1000,
        }
        settings.update(self.settings)
        return settings

    def _site_xml(self) -> str:
        properties = "".join(f"  <property><name>{escape(str(name))}</name><value>{escape(str(value))}</value>"
                             "</property>\n" for name, value in self._site().items())
        return f'<?xml version="1.0"?>\n<configuration>\n{properties}</configuration>\n'

    @staticmethod
    def _log4j_properties(log_file: Path) -> str:
        # HBase 2.6 logs through SLF4J, bound here to reload4j (log4j 1.2's API), which
        # Hadoop brings along.
        return (
            "log4j.rootLogger=INFO,file\n"
            "log4j.appender.file=org.apache.log4j.FileAppender\n"
            f"log4j.appender.file.File={log_file}\n"
            "log4j.appender.file.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.file.layout.ConversionPattern=%d{ISO8601} %p [%t] %c{2}: %m%n\n"
            # Every ZooKeeper session and every metrics source otherwise logs a screenful.
            "log4j.logger.org.apache.zookeeper=WARN\n"
            "log4j.logger.org.apache.hadoop.metrics2=ERROR\n"
            "log4j.logger.org.apache.hadoop.hbase.zookeeper=WARN\n"
        )

    def _jvm(self, java: str, jars: str, name: str, heap: str) -> list[str]:
        conf = self.workdir / "conf"
        command = [java, f"-Xmx{heap}", "-XX:+UseSerialGC", "-Djava.awt.headless=true", *JDK17_FLAGS,
                   f"-Dlog4j.configuration={(conf / f'log4j-{name}.properties').as_uri()}",
                   f"-Dhbase.log.dir={self.logs_dir}", "-cp", os.pathsep.join([str(conf), jars])]
        # setpriv (util-linux) makes the kernel stop the JVM when the thread that started
        # it dies without reaching stop(), e.g. a killed test run.
        setpriv = shutil.which("setpriv", path=SEARCH_PATH)
        return [setpriv, "--pdeathsig", "TERM", *command] if setpriv is not None else command

    def _launch(self, java: str, jars: str) -> None:
        master = [*self._jvm(java, jars, "master", "512m"), MASTER_MAIN, "start"]
        thrift = [*self._jvm(java, jars, "thrift", "256m"), THRIFT_MAIN, "-b", "127.0.0.1",
                  "-p", str(self.thrift_port), "--infoport", "-1", "start"]
        # Sessions of their own, so a Ctrl-C in the terminal reaches the test run (which
        # then stops them in order) and not the JVMs directly.
        with open(self.logs_dir / "master.out", "wb") as out:
            self.master = subprocess.Popen(master, stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir,
                                           stdin=subprocess.DEVNULL, start_new_session=True)
        with open(self.logs_dir / "thrift.out", "wb") as out:
            self.thrift = subprocess.Popen(thrift, stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir,
                                           stdin=subprocess.DEVNULL, start_new_session=True)

    def _logs(self, chars: int = 3000) -> str:
        return "\n".join(f"--- {path.name} ---\n{jvm.tail(path, chars)}"
                         for path in (self.master_log, self.logs_dir / "master.out", self.thrift_log,
                                      self.logs_dir / "thrift.out"))

    def _wait_until_ready(self, deadline: float) -> None:
        from orion.store.hbase import thrift_client

        last_error: object = "the Thrift port never opened"
        while time.monotonic() < deadline:
            for name, process in (("HBase master", self.master), ("HBase Thrift server", self.thrift)):
                assert process is not None
                if process.poll() is not None:
                    text = self._logs()
                    if any(marker in text for marker in _PORT_TAKEN):
                        raise _PortTaken(text)
                    raise HBaseUnavailable(f"the {name} exited with {process.returncode}:\n{text}")
            # The port first: a Thrift client pointed at a closed port fails slowly.
            try:
                with socket.create_connection(("127.0.0.1", self.thrift_port), timeout=0.5):
                    pass
            except OSError as error:
                last_error = error
                time.sleep(0.3)
                continue
            client = None
            try:
                client = thrift_client("127.0.0.1", self.thrift_port, timeout_s=10)
                namespaces = client.listNamespaces()
                if "default" in namespaces:
                    return
                last_error = f"the master lists the namespaces {namespaces}, without 'default' yet"
            except Exception as error:  # noqa: BLE001 - the master is still initializing, in any way
                last_error = error
            finally:
                if client is not None:
                    client.close()
            time.sleep(0.5)
        raise HBaseUnavailable(f"HBase did not answer on {self.address} in time ({last_error}):\n{self._logs()}")

    def _terminate(self, grace_s: float = 3) -> None:
        # The Thrift server first: it is only a client of the cluster. SIGTERM runs each
        # JVM's shutdown hooks, which would flush every table to disk and wait up to a
        # minute for open client connections; the data is thrown away, so a few seconds.
        for attribute in ("thrift", "master"):
            process = getattr(self, attribute)
            setattr(self, attribute, None)
            jvm.terminate(process, grace_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orion.testing.hbase",
        description="Start a standalone HBase and its Thrift 2 server on free 127.0.0.1 ports, print "
        "the Thrift server's HOST:PORT (or a store URI) and run until Ctrl-C; its data is deleted at the end.",
    )
    parser.add_argument("--table", action="append", default=[], metavar="NAME",
                        help="create the hbase:// store of this table (TABLE, TABLE-index, TABLE-profiles) "
                        "once HBase is up and print its URI (repeatable)")
    parser.add_argument("--workdir", type=Path, help="where its files go (default: a new temporary directory)")
    args = parser.parse_args(argv)
    server = HBaseServer(args.workdir or Path(tempfile.mkdtemp(prefix="orion-hbase-")))

    def announce() -> None:
        if not args.table:
            print(server.address, flush=True)
        for table in args.table:
            from orion.store import open_store

            with open_store(server.uri(table)) as store:
                store.init()
            print(server.uri(table), flush=True)
        print(f"HBase logs: {server.logs_dir}; Ctrl-C stops it", file=sys.stderr, flush=True)

    return jvm.serve(server, HBaseUnavailable, announce, alive=server.running,
                     exited=lambda: f"HBase exited:\n{server._logs()}")


if __name__ == "__main__":
    sys.exit(main())

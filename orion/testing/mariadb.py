"""Starting a real MariaDB server for tests and benchmarks: Debian's `mariadbd` on a
throwaway data directory and a free loopback port, user root with no password, stopped
and deleted again at the end. It fails with a message that says what to install when
MariaDB is missing; nothing is ever replaced by a mock.

With ORION_TEST_MYSQL=HOST:PORT set, `start_or_reuse()` uses that running server
instead (user root, no password) and leaves it running at the end.

    python -c "from orion.testing.mariadb import MariaDBServer as M; s = M.start(); print(s.uri('x')); s.stop()"
"""
from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from orion.testing.emulators import free_port

ENV_VAR = "ORION_TEST_MYSQL"
USER = "root"
# PATH often lacks /usr/sbin (where Debian puts mariadbd) for a user who is not root.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin"])


class MariaDBMissing(RuntimeError):
    pass


class _PortTaken(RuntimeError):
    """mariadbd could not bind its port: another process took it first."""


def _find(name: str) -> str:
    found = shutil.which(name, path=SEARCH_PATH)
    if found is None:
        raise MariaDBMissing(
            f"{name} not found on PATH or in /usr/sbin; install MariaDB with: apt-get install mariadb-server "
            f"(or set {ENV_VAR}=HOST:PORT to use a running server, user root with no password)"
        )
    return found


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log was written)"


def _connect(host: str, port: int, timeout: float):
    import pymysql

    return pymysql.connect(host=host, port=port, user=USER, password="", connect_timeout=timeout, autocommit=True)


class MariaDBServer:
    """A MariaDB server on `host`:`port`, user root with no password. `process` and
    `workdir` are None for a server this object did not start (ORION_TEST_MYSQL)."""

    def __init__(self, host: str, port: int, process: subprocess.Popen | None = None,
                 workdir: Path | None = None):
        self.host, self.port, self.process, self.workdir = host, port, process, workdir
        self._owner_pid = os.getpid()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def uri(self, database: str) -> str:
        return f"mysql://{USER}@{self.host}:{self.port}/{database}"

    def connect(self, database: str | None = None, **options):
        """A pymysql connection as root (autocommit), optionally to `database`."""
        import pymysql

        return pymysql.connect(host=self.host, port=self.port, user=USER, password="", database=database,
                               connect_timeout=10, autocommit=True, charset="utf8mb4", **options)

    @classmethod
    def start(cls, timeout: float = 60.0, log_file_size: str = "16M") -> "MariaDBServer":
        """A new server on a fresh data directory. `log_file_size` is InnoDB's redo log,
        written in full into every fresh data directory: small for tests; benchmarks pass
        the server's default, 96M, so that their figures match a normal installation."""
        mariadbd, install_db = _find("mariadbd"), _find("mariadb-install-db")
        workdir = Path(tempfile.mkdtemp(prefix="orion-mariadb-"))
        datadir = workdir / "data"
        # mariadbd refuses to run as root unless told to, and only root may pass --user.
        as_root = ["--user=root"] if os.geteuid() == 0 else []
        # --no-defaults: nothing from /etc/mysql, so the machine's own server settings
        # (socket, pid file, data dir) cannot leak in. Character set and collation are
        # then set to what Debian's configuration gives, as a normal installation has.
        server_options = [
            f"--innodb-log-file-size={log_file_size}",
            "--innodb-buffer-pool-size=128M",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_general_ci",
        ]
        try:
            installed = subprocess.run(
                [install_db, "--no-defaults", f"--datadir={datadir}", "--auth-root-authentication-method=normal",
                 "--skip-test-db", "--skip-name-resolve", *as_root, *server_options],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout, cwd=workdir,
            )
        except subprocess.TimeoutExpired:
            shutil.rmtree(workdir, ignore_errors=True)
            raise RuntimeError(f"mariadb-install-db did not finish within {timeout} s")
        if installed.returncode != 0:
            shutil.rmtree(workdir, ignore_errors=True)
            raise RuntimeError(f"mariadb-install-db failed with {installed.returncode}:\n{installed.stdout[-3000:]}")

        # free_port() cannot hold the port for mariadbd: another process may take it in
        # between, and then mariadbd exits at once. Try a few ports.
        for _ in range(3):
            server = cls._launch(mariadbd, workdir, [*as_root, *server_options])
            try:
                server._wait_until_ready(timeout)
                return server
            except _PortTaken:
                server.stop(keep_workdir=True)
            except BaseException:
                server.stop()
                raise
        shutil.rmtree(workdir, ignore_errors=True)
        raise RuntimeError("mariadbd found its port taken three times in a row")

    @classmethod
    def _launch(cls, mariadbd: str, workdir: Path, options: list[str]) -> "MariaDBServer":
        port = free_port()
        (workdir / "error.log").unlink(missing_ok=True)  # a retry reads only its own log
        command = [
            mariadbd, "--no-defaults", f"--datadir={workdir / 'data'}", f"--socket={workdir / 'mysqld.sock'}",
            f"--pid-file={workdir / 'mysqld.pid'}", f"--log-error={workdir / 'error.log'}", f"--port={port}",
            "--bind-address=127.0.0.1", "--skip-name-resolve", "--max-connections=500", *options,
        ]
        # setpriv (util-linux) makes the kernel stop the server when the thread that
        # started it dies without reaching stop(), e.g. a killed test run, so no server is
        # left behind (its data directory in the temp dir is).
        setpriv = shutil.which("setpriv", path=SEARCH_PATH)
        if setpriv is not None:
            command = [setpriv, "--pdeathsig", "TERM", *command]
        with open(workdir / "mariadbd.out", "wb") as out:
            # A session of its own, so a Ctrl-C in the terminal reaches the test run,
            # which then stops the server in order, and not the server directly.
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=workdir,
                                       start_new_session=True)
        server = cls("127.0.0.1", port, process, workdir)
        atexit.register(server.stop)
        return server

    @classmethod
    def existing(cls, address: str, timeout: float = 10.0) -> "MariaDBServer":
        """A running server at HOST:PORT, checked by connecting as root."""
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{ENV_VAR}={address!r}: write HOST:PORT, for example 127.0.0.1:3306")
        try:
            _connect(host, int(port), timeout).close()
        except Exception as err:
            raise RuntimeError(f"{ENV_VAR}={address}: cannot connect as root with no password: {err}") from err
        return cls(host, int(port))

    def _wait_until_ready(self, timeout: float) -> None:
        # The port opens before the grant tables are read: wait for a real login, and to
        # this server (its socket), not to another one that holds the port.
        log, socket_path = self.workdir / "error.log", str(self.workdir / "mysqld.sock")
        deadline = time.monotonic() + timeout
        last_error: object = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                text = _tail(log)
                if "Address already in use" in text or "Bind on TCP/IP port" in text:
                    raise _PortTaken(text)
                raise RuntimeError(f"mariadbd exited with {self.process.returncode}:\n{text}"
                                   f"\n{_tail(self.workdir / 'mariadbd.out', 1000)}")
            try:
                connection = _connect(self.host, self.port, 2)
                try:
                    with connection.cursor() as cursor:
                        cursor.execute("SELECT @@socket")
                        answered = cursor.fetchone()[0]
                finally:
                    connection.close()
                if answered == socket_path:
                    return
                last_error = f"port {self.port} is answered by another server (socket {answered})"
            except Exception as err:  # not listening yet, or still starting up
                last_error = err
            time.sleep(0.2)
        raise RuntimeError(f"mariadbd did not accept root on {self.address} within {timeout} s "
                           f"({last_error}):\n{_tail(log)}")

    def stop(self, keep_workdir: bool = False) -> None:
        """Stop the server this object started and delete its data; a server it did not
        start is left running. Calling it twice is harmless."""
        if os.getpid() != self._owner_pid:
            return  # a forked worker exiting (atexit runs there too): the server is its parent's
        if self.process is not None:
            # SIGTERM is mariadbd's clean shutdown; the data is thrown away anyway, so a
            # server that hangs in it is killed rather than waited for.
            for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
                if self.process.poll() is not None:
                    break
                try:
                    self.process.send_signal(sig)
                except ProcessLookupError:
                    break
                try:
                    self.process.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        atexit.unregister(self.stop)
        if self.workdir is not None and not keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_or_reuse(timeout: float = 60.0, log_file_size: str = "16M") -> MariaDBServer:
    """The server ORION_TEST_MYSQL names, if set; otherwise a new one (see start)."""
    address = os.environ.get(ENV_VAR, "").strip()
    if address:
        return MariaDBServer.existing(address)
    return MariaDBServer.start(timeout=timeout, log_file_size=log_file_size)

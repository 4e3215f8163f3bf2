"""What the Java servers the tests start (Kafka, HBase) share: finding a Java 17, the end
of a log for an error message, stopping a JVM that may hang in its shutdown hooks, a
server's life once started (ThrowawayServer) and its command line (serve).

    python -c "from orion.testing.jvm import find_java; print(find_java(RuntimeError, 'install Java 17'))"
"""
from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable


def find_java(unavailable: type[Exception], missing: str) -> str:
    """The java of JAVA_HOME, or the one on PATH, once it has shown it is 17 or newer;
    `unavailable(message)` is raised otherwise, the message ending with `missing` (what to
    install)."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home and (Path(home) / "bin" / "java").exists() else \
        shutil.which("java")
    if java is None:
        raise unavailable(f"no `java` on PATH or in JAVA_HOME. {missing}")
    try:
        shown = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60).stderr
    except (OSError, subprocess.TimeoutExpired) as error:
        raise unavailable(f"`{java} -version` failed ({error}). {missing}") from error
    match = re.search(r'version "(\d+)(?:\.(\d+))?', shown)
    major = int(match.group(1)) if match else 0
    if major == 1 and match and match.group(2):  # "1.8.0_..." is Java 8
        major = int(match.group(2))
    if major < 17:
        raise unavailable(f"{java} is Java {major or '(unknown)'}: {shown.strip()[:200]}. {missing}")
    return java


def tail(path: Path, chars: int = 4000) -> str:
    """The last `chars` characters of a log, for an error message."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log was written)"


def terminate(process: subprocess.Popen | None, grace_s: float) -> None:
    """SIGTERM (the JVM's shutdown hooks), then SIGKILL what has not stopped after
    `grace_s`: the servers' data is thrown away, so one that hangs in its shutdown is
    killed rather than waited for."""
    if process is None:
        return
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10)):
        if process.poll() is not None:
            break
        try:
            process.send_signal(sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue


class ThrowawayServer:
    """What a Java server the tests start shares (Kafka's broker, HBase): its files in
    `workdir`, its data in `data_dir`, thrown away when it stops. It is stopped once, by
    the process that started it: at the latest at that interpreter's exit, never by a
    forked worker's (atexit runs there too). Subclasses start it (`start`, calling
    `_stop_at_exit` first) and end its processes (`_terminate`)."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self._owner_pid = os.getpid()
        self._registered = False

    @property
    def data_dir(self) -> Path:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def _terminate(self) -> None:
        raise NotImplementedError

    def _stop_at_exit(self) -> None:
        if not self._registered:
            atexit.register(self.stop)
            self._registered = True

    def stop(self) -> None:
        """Stop the server and delete its data (its logs stay in workdir). Calling it
        twice is harmless."""
        if os.getpid() != self._owner_pid:
            return  # a forked worker exiting: the server is its parent's
        self._terminate()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(server: ThrowawayServer, unavailable: type[Exception], announce: Callable[[], None],
          alive: Callable[[], bool], exited: Callable[[], str]) -> int:
    """A server's command line (`python -m orion.testing.kafka` ...): start it, `announce`
    what to connect to, run until Ctrl-C or SIGTERM (0) or until the server dies (1, with
    `exited()` said), and stop it at the end. A server that cannot start: its error, 1."""
    try:
        try:
            server.start()
        except unavailable as error:
            print(f"orion: {error}", file=sys.stderr)
            return 1
        announce()
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while alive():
            time.sleep(0.5)
        print(f"orion: {exited()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()

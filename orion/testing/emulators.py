"""Starting the real Google Cloud emulators on a free loopback port, for tests and
benchmarks. Each start fails with a message that says what to install when the emulator
is missing; nothing is ever replaced by a mock.

    python -c "from orion.testing.emulators import PubSubEmulator as E; e = E.start(); print(e.host); e.stop()"
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SDK_ROOTS = [Path("/usr/lib/google-cloud-sdk"), Path("/usr/share/google-cloud-sdk")]


class EmulatorMissing(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the emulator exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the emulator did not listen on port {port} within {timeout} s:\n{log.read_text()[-3000:]}")


def _find(relative: str, package: str) -> Path:
    for root in SDK_ROOTS:
        candidate = root / relative
        if candidate.exists():
            return candidate
    found = shutil.which(Path(relative).name)
    if found:
        return Path(found)
    raise EmulatorMissing(
        f"{Path(relative).name} not found under {', '.join(map(str, SDK_ROOTS))} or on PATH; "
        f"install it with: apt-get install {package} (from Google Cloud's Debian repository)"
    )


class _Emulator:
    env_var = ""

    def __init__(self, process: subprocess.Popen, port: int, log: Path, workdir: Path):
        self.process, self.port, self.log, self.workdir = process, port, log, workdir

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        # The emulator runs in a session of its own; end the whole group, or the Java
        # process under the wrapper script outlives it.
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @classmethod
    def _launch(cls, command: list[str], port: int, timeout: float):
        workdir = Path(tempfile.mkdtemp(prefix="orion-emulator-"))
        log = workdir / "emulator.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=workdir,
                                       start_new_session=True)
        _wait_for_port(port, process, log, timeout)
        return cls(process, port, log, workdir)


class PubSubEmulator(_Emulator):
    """cloud-pubsub-emulator (google-cloud-cli-pubsub-emulator; needs Java 17)."""

    env_var = "PUBSUB_EMULATOR_HOST"

    @classmethod
    def start(cls, timeout: float = 60.0) -> "PubSubEmulator":
        script = _find("platform/pubsub-emulator/bin/cloud-pubsub-emulator", "google-cloud-cli-pubsub-emulator")
        if shutil.which("java") is None:
            raise EmulatorMissing("the Pub/Sub emulator needs Java 17: apt-get install openjdk-17-jre-headless")
        port = free_port()
        workdir_arg = tempfile.mkdtemp(prefix="orion-pubsub-data-")
        return cls._launch([str(script), "--host=127.0.0.1", f"--port={port}", f"--dir={workdir_arg}"], port, timeout)


class BigtableEmulator(_Emulator):
    """cbtemulator (google-cloud-cli-bigtable-emulator)."""

    env_var = "BIGTABLE_EMULATOR_HOST"

    @classmethod
    def start(cls, timeout: float = 30.0) -> "BigtableEmulator":
        binary = _find("platform/bigtable-emulator/cbtemulator", "google-cloud-cli-bigtable-emulator")
        port = free_port()
        return cls._launch([str(binary), "-host=127.0.0.1", f"-port={port}"], port, timeout)


def emulator_environment(*emulators: _Emulator) -> dict[str, str]:
    env = dict(os.environ)
    for emulator in emulators:
        env[emulator.env_var] = emulator.host
    return env

"""What the Java servers the tests start (Kafka, HBase) share: finding a Java 17, the end
of a log for an error message, and stopping a JVM that may hang in its shutdown hooks.

    python -c "from orion.testing.jvm import find_java; print(find_java(RuntimeError, 'install Java 17'))"
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path


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

"""A standalone Flink cluster on this machine, and the REST calls orion makes to any
cluster.

`LocalCluster` starts one JobManager and N TaskManagers with the apache-flink package's
own scripts (bin/jobmanager.sh, bin/taskmanager.sh), the way a standalone cluster is
started from a Flink distribution; it can kill one TaskManager the way a failing machine
loses it and start another (`kill_taskmanager`, `start_taskmanager`: failover tests).
Everything it writes lives in its state directory, never inside site-packages:

    STATE_DIR/conf/       a copy of the package's conf/, config.yaml set for this machine:
                          every address 127.0.0.1, free ports, small memory, and
                          python.executable = the interpreter that started the cluster
    STATE_DIR/log/        the daemons' logs (FLINK_LOG_DIR)
    STATE_DIR/pid/        their pid files (FLINK_PID_DIR)
    STATE_DIR/tmp/        io.tmp.dirs: the jobs' shipped Python files and archives
    STATE_DIR/savepoints/ the default savepoint directory
    STATE_DIR/cluster.json  the REST address and the cluster's shape, while it runs

The REST functions (`overview`, `jobs`, `stop_job`, `cancel_job`, `trigger_checkpoint`)
speak Flink's REST API to any cluster, this one or a remote one, and need neither Java nor
PyFlink. `newest_checkpoint` finds the checkpoint to resume from in a directory of
retained checkpoints (--checkpoint-dir); `restore_path` is what --from-savepoint
restores; `keep_lineage` and `lineage_of` write and read the job's lineage id beside its
checkpoints. These four read a local directory directly and a URL (gs://, s3://)
through Flink's own file systems (orion.flink.files).

    .venv/bin/orion flink cluster start --taskmanagers 2
    .venv/bin/orion flink cluster status
    .venv/bin/orion flink cluster stop
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import NamedTuple

from orion.flink.files import FilesError, FlinkFiles, Files, LocalFiles, is_local, local_path
from orion.settings import DEFAULT_DATA_DIR

DEFAULT_STATE_DIR = DEFAULT_DATA_DIR / "flink-cluster"
DEFAULT_TASKMANAGERS = 2
DEFAULT_SLOTS = 2  # per TaskManager
# Small enough for a laptop or a 2-core CI machine running the tests beside it: with two
# TaskManagers the cluster takes 4 GB.
JOBMANAGER_MEMORY = "1024m"
TASKMANAGER_MEMORY = "1536m"
HOST = "127.0.0.1"
IDENT = "orion"  # FLINK_IDENT_STRING: the daemons' pid and log files are named after it
STATE_FILE = "cluster.json"
CONFIG_FILE = "config.yaml"  # Flink 2.x; Flink 1.x read flink-conf.yaml
MISSING = (
    "{what}\n"
    "A Flink cluster needs Java 17 (apt-get install openjdk-17-jre-headless, or JAVA_HOME "
    "pointing at a JDK 17) and the apache-flink==2.3.0 package in this interpreter "
    "(pip install -e '.[flink]' installs it)."
)


class ClusterError(RuntimeError):
    """The cluster cannot start, stop or answer; the message says why and what to do."""


# --- Flink's REST API ------------------------------------------------------------------


def rest_call(address: str, path: str, body: dict | None = None, method: str | None = None,
              timeout_s: float = 10.0) -> dict:
    """One call to the REST API at HOST:PORT; the answer's JSON."""
    data = None if body is None else json.dumps(body).encode("utf-8")
    verb = method or ("POST" if data else "GET")
    request = urllib.request.Request(f"http://{address}{path}", data=data, method=verb,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            text = response.read().decode("utf-8")
    except urllib.error.HTTPError as error:
        detail = error.read().decode("utf-8", "replace")
        raise ClusterError(f"Flink REST {verb} {path} at {address}: HTTP {error.code}: {detail}") from error
    except OSError as error:
        raise ClusterError(f"no Flink REST endpoint answers at {address} ({error})") from error
    return json.loads(text) if text.strip() else {}


def overview(address: str) -> dict:
    """/overview: TaskManagers, slots, jobs by state, Flink version."""
    return rest_call(address, "/overview")


def taskmanagers(address: str) -> list[dict]:
    return rest_call(address, "/taskmanagers").get("taskmanagers", [])


def jobs(address: str) -> list[dict]:
    """/jobs/overview: every job the cluster knows, newest first (jid, name, state, ...)."""
    return sorted(rest_call(address, "/jobs/overview").get("jobs", []), key=lambda job: -job.get("start-time", 0))


def job_state(address: str, job_id: str) -> str:
    return rest_call(address, f"/jobs/{job_id}").get("state", "UNKNOWN")


def job_taskmanagers(address: str, job_id: str) -> set[str]:
    """The ids of the TaskManagers the job's subtasks ran on."""
    found = set()
    for vertex in rest_call(address, f"/jobs/{job_id}").get("vertices", []):
        for subtask in rest_call(address, f"/jobs/{job_id}/vertices/{vertex['id']}").get("subtasks", []):
            if subtask.get("taskmanager-id"):
                found.add(subtask["taskmanager-id"])
    return found


def wait_for_job(address: str, job_id: str, states=("FINISHED", "CANCELED", "FAILED"),
                 timeout_s: float = 120.0) -> str:
    """Until the job reaches one of `states`; its state."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = job_state(address, job_id)
        if state in states:
            return state
        if time.monotonic() > deadline:
            raise ClusterError(f"job {job_id} is {state} after {timeout_s:.0f} s, not {' or '.join(states)}")
        time.sleep(0.3)


def stop_job(address: str, job_id: str, savepoint_dir: str | None = None, drain: bool = False,
             timeout_s: float = 300.0) -> str:
    """Stop a job with a savepoint (into `savepoint_dir`, or the cluster's default
    savepoint directory); the savepoint's path. drain=True first advances event time to
    the end, which releases every buffered activity."""
    body: dict = {"drain": drain, "formatType": "CANONICAL"}
    if savepoint_dir is not None:
        body["targetDirectory"] = savepoint_dir if "://" in savepoint_dir else Path(savepoint_dir).resolve().as_uri()
    trigger = rest_call(address, f"/jobs/{job_id}/stop", body)["request-id"]
    deadline = time.monotonic() + timeout_s
    while True:
        answer = rest_call(address, f"/jobs/{job_id}/savepoints/{trigger}")
        if answer.get("status", {}).get("id") == "COMPLETED":
            operation = answer.get("operation", {})
            if "failure-cause" in operation:
                cause = operation["failure-cause"].get("stack-trace", "").splitlines()
                raise ClusterError(f"job {job_id} did not stop with a savepoint: {cause[0] if cause else operation}")
            wait_for_job(address, job_id, timeout_s=max(10.0, deadline - time.monotonic()))
            return operation["location"]
        if time.monotonic() > deadline:
            raise ClusterError(f"job {job_id}: no savepoint after {timeout_s:.0f} s")
        time.sleep(0.3)


def cancel_job(address: str, job_id: str) -> str:
    """Cancel a job (no savepoint); its final state."""
    rest_call(address, f"/jobs/{job_id}?mode=cancel", method="PATCH")
    return wait_for_job(address, job_id)


def trigger_checkpoint(address: str, job_id: str, timeout_s: float = 120.0) -> int:
    """Take a checkpoint of a running job now (beside its periodic ones) and wait for it
    to complete; its id. It is retained as the periodic ones are."""
    trigger = rest_call(address, f"/jobs/{job_id}/checkpoints", {"checkpointType": "FULL"})["request-id"]
    deadline = time.monotonic() + timeout_s
    while True:
        answer = rest_call(address, f"/jobs/{job_id}/checkpoints/{trigger}")
        if answer.get("status", {}).get("id") == "COMPLETED":
            operation = answer.get("operation", {})
            if "failure-cause" in operation:
                cause = operation["failure-cause"].get("stack-trace", "").splitlines()
                raise ClusterError(f"job {job_id}: the checkpoint failed: {cause[0] if cause else operation}")
            return int(operation["checkpointId"])
        if time.monotonic() > deadline:
            raise ClusterError(f"job {job_id}: no checkpoint after {timeout_s:.0f} s")
        time.sleep(0.3)


def job_restarts(address: str, job_id: str) -> int:
    """How often the job has restarted since it was submitted (its numRestarts metric)."""
    for metric in rest_call(address, f"/jobs/{job_id}/metrics?get=numRestarts") or []:
        if metric.get("id") == "numRestarts":
            return int(metric.get("value", 0))
    return 0


def completed_checkpoints(address: str, job_id: str) -> int:
    """How many checkpoints of the job have completed."""
    return rest_call(address, f"/jobs/{job_id}/checkpoints").get("counts", {}).get("completed", 0)


# --- retained checkpoints --------------------------------------------------------------
#
# A checkpoint directory may be local or a URL (gs://, s3://, hdfs://): each function
# below reads it through orion.flink.files (Python's own file functions for a local one,
# Flink's file systems in the Java gateway for a URL). `files` names the file system to
# use instead of the one the location's scheme picks.

CHECKPOINT_METADATA = "_metadata"  # a complete checkpoint or savepoint has this file
LINEAGE_FILE = "orion-lineage"  # in DIR/JOB_ID/ of a --checkpoint-dir: the job's lineage id


def _reached(function):
    """A file system that cannot be reached raises ClusterError, with what it said."""
    @functools.wraps(function)
    def reaching(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except FilesError as err:
            raise ClusterError(str(err)) from err

    return reaching


def _opened(location: str | Path, files: Files | None) -> tuple[Files, str]:
    if files is not None:
        return files, str(location)
    location = str(location)
    return (LocalFiles(), str(local_path(location))) if is_local(location) else (FlinkFiles(), location.rstrip("/"))


@_reached
def newest_checkpoint(directory: str | Path, files: Files | None = None) -> str | None:
    """The newest complete checkpoint retained in a checkpoint directory: a `chk-N`
    holding a `_metadata`, directly in `directory` or in a job's sub-directory of it
    (DIR/JOB_ID/chk-N, Flink's layout); the one whose `_metadata` was written last (a
    checkpoint still being written has none). None when there is none."""
    files, base = _opened(directory, files)
    found = []
    for name, is_dir in files.children(base):
        if not is_dir:
            continue
        child = files.join(base, name)
        checkpoints = ([(name, child)] if name.startswith("chk-") else
                       [(inner, files.join(child, inner)) for inner, inner_dir in files.children(child)
                        if inner_dir and inner.startswith("chk-")])
        for checkpoint_name, checkpoint in checkpoints:
            metadata = files.join(checkpoint, CHECKPOINT_METADATA)
            if files.is_file(metadata):
                number = checkpoint_name.removeprefix("chk-")
                found.append((files.modified(metadata), int(number) if number.isdigit() else -1, checkpoint))
    return max(found)[2] if found else None


@_reached
def keep_lineage(checkpoint_dir: str | Path, job_id: str, lineage: str, files: Files | None = None) -> str:
    """Write the job's lineage id where Flink keeps its checkpoints (DIR/JOB_ID/), so a
    job restored from one of them continues the lineage (orion.leadstep.Lineage)."""
    files, base = _opened(checkpoint_dir, files)
    marker = files.join(base, job_id, LINEAGE_FILE)
    files.write_text(marker, lineage + "\n")
    return marker


@_reached
def lineage_of(restored: str, files: Files | None = None) -> str | None:
    """The lineage id kept beside a checkpoint (`restore_path`'s answer: its job's
    directory holds it) or in a savepoint's directory; None when there is none (a
    savepoint, or a checkpoint of a job from before lineages)."""
    files, location = _opened(restored, files)
    checkpoint = files.parent(location) if files.name(location) == CHECKPOINT_METADATA else location
    for directory in (checkpoint, files.parent(checkpoint)):
        found = (files.read_text(files.join(directory, LINEAGE_FILE)) or "").strip()
        if re.fullmatch(r"[0-9a-f]{32}", found):
            return found
    return None


# Flink names a savepoint's directory after the first six hex digits of its job's id
# (AbstractFsCheckpointStorageAccess: savepoint-JOBID6-RANDOM).
_SAVEPOINT_NAME = re.compile(r"savepoint-([0-9a-f]{6})-[0-9a-f]+")


@_reached
def savepoint_lineage(restored: str, checkpoint_dir: str | Path, files: Files | None = None) -> str | None:
    """The lineage of the job a savepoint was taken of, for a savepoint that holds none:
    one Flink took while the job ran (`flink savepoint JOB_ID`), after which the job went
    on writing profiles. The job kept its lineage in DIR/JOB_ID/ of its --checkpoint-dir
    (`keep_lineage`); the savepoint's directory is named after the first six hex digits
    of that id. The lineage of the one job directory in `checkpoint_dir` whose id starts
    so; None when the savepoint is not named so, or no job there, or more than one,
    matches (a guess would be worse than a new lineage)."""
    opened, location = _opened(restored, files)
    savepoint = opened.parent(location) if opened.name(location) == CHECKPOINT_METADATA else location
    named = _SAVEPOINT_NAME.fullmatch(opened.name(savepoint))
    if named is None:
        return None
    checkpoints, base = _opened(checkpoint_dir, files)  # its own file system, unless one was named
    if not checkpoints.is_dir(base):
        return None
    jobs = [name for name, is_dir in checkpoints.children(base) if is_dir and name.startswith(named.group(1))]
    if len(jobs) != 1:
        return None
    found = (checkpoints.read_text(checkpoints.join(base, jobs[0], LINEAGE_FILE)) or "").strip()
    return found if re.fullmatch(r"[0-9a-f]{32}", found) else None


@_reached
def restore_path(path: str, files: Files | None = None) -> str:
    """What a job restores from, given --from-savepoint PATH: a savepoint or retained
    checkpoint (a directory with a `_metadata`, or that file) as it is; a checkpoint
    directory (--checkpoint-dir of an earlier run, local or a URL), its newest retained
    checkpoint. ClusterError for a directory with neither."""
    files, location = _opened(path, files)
    if isinstance(files, LocalFiles):
        location = str(Path(location).resolve())
    if (files.is_file(location) or files.is_file(files.join(location, CHECKPOINT_METADATA))
            or not files.is_dir(location)):
        return location
    newest = newest_checkpoint(location, files)
    if newest is None:
        raise ClusterError(f"{path} is neither a savepoint nor a checkpoint, and holds no complete checkpoint "
                           f"(chk-N/{CHECKPOINT_METADATA})")
    return newest


# --- the local cluster -----------------------------------------------------------------


class ClusterStatus(NamedTuple):
    rest_address: str
    taskmanagers: list[dict]  # /taskmanagers: id, slotsNumber, freeSlots, ...
    overview: dict
    jobs: list[dict]

    def render(self) -> str:
        version = self.overview.get("flink-version", "?")
        free, total = self.overview.get("slots-available", 0), self.overview.get("slots-total", 0)
        lines = [f"Flink {version} cluster, REST and web UI at http://{self.rest_address}",
                 f"taskmanagers: {len(self.taskmanagers)}, slots: {free} free of {total}"]
        for manager in sorted(self.taskmanagers, key=lambda tm: tm["id"]):
            lines.append(f"  {manager['id']}  slots {manager.get('freeSlots', 0)} free of "
                         f"{manager.get('slotsNumber', 0)}")
        running = [job for job in self.jobs if job.get("state") not in ("FINISHED", "CANCELED", "FAILED")]
        lines.append(f"jobs: {len(running)} running, {len(self.jobs)} known")
        for job in self.jobs:
            lines.append(f"  {job['jid']}  {job.get('state', '?'):<10} {job.get('name', '')}")
        return "\n".join(lines)


def flink_home() -> Path:
    """The apache-flink package's directory (bin/, lib/, opt/, conf/): FLINK_HOME."""
    spec = importlib.util.find_spec("pyflink")
    if spec is None or spec.origin is None:
        raise ClusterError(MISSING.format(what="PyFlink is not importable in this interpreter."))
    home = Path(spec.origin).resolve().parent
    if not (home / "bin" / "jobmanager.sh").is_file():
        raise ClusterError(MISSING.format(what=f"{home} has no bin/jobmanager.sh: not a full apache-flink package."))
    return home


def java_available() -> bool:
    java_home = os.environ.get("JAVA_HOME")
    return bool(shutil.which("java")) or bool(java_home and (Path(java_home) / "bin" / "java").is_file())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def _set_option(tree: dict, key: str, value) -> None:
    """Set a dotted Flink option in config.yaml's nested form, replacing a flattened one."""
    tree.pop(key, None)
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def _descendants(pid: int) -> list[int]:
    """The processes started by `pid`, their children and so on (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # the parent is the 4th field; the 2nd, the command, may hold spaces
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, waiting = [], list(children.get(pid, ()))
    while waiting:
        child = waiting.pop()
        found.append(child)
        waiting.extend(children.get(child, ()))
    return found


class LocalCluster:
    """A standalone cluster on this machine, managed through Flink's own scripts; its
    state (configuration, logs, pid files) lives in `state_dir`."""

    def __init__(self, state_dir: Path | str = DEFAULT_STATE_DIR):
        self.state_dir = Path(state_dir).resolve()
        self.conf_dir = self.state_dir / "conf"
        self.log_dir = self.state_dir / "log"
        self.pid_dir = self.state_dir / "pid"
        self.savepoint_dir = self.state_dir / "savepoints"

    # --- what it is ---

    @property
    def rest_address(self) -> str:
        """HOST:PORT of the JobManager's REST endpoint (and web UI): --flink-master."""
        state = self._state()
        if state is None:
            raise ClusterError(f"no cluster has been started in {self.state_dir} (orion flink cluster start)")
        return state["rest_address"]

    def _state(self) -> dict | None:
        path = self.state_dir / STATE_FILE
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def daemon_pids(self) -> dict[str, list[int]]:
        """The live JobManager ('standalonesession') and TaskManager ('taskexecutor')
        processes of this cluster, from the scripts' pid files; a pid the system has
        given to another process since is not counted."""
        found: dict[str, list[int]] = {}
        for daemon in ("standalonesession", "taskexecutor"):
            path = self.pid_dir / f"flink-{IDENT}-{daemon}.pid"
            pids = [int(line) for line in path.read_text().split()] if path.is_file() else []
            found[daemon] = [pid for pid in pids if self._is_ours(pid)]
        return found

    def _is_ours(self, pid: int) -> bool:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return os.fsencode(str(self.conf_dir)) in command

    def is_running(self) -> bool:
        return any(self.daemon_pids().values())

    # --- start, status, stop ---

    def write_configuration(self, taskmanagers: int, slots: int, python: str = sys.executable) -> dict:
        """conf/: the package's conf/ copied, config.yaml set for this machine; returns the
        options set."""
        import yaml

        home = flink_home()
        shutil.rmtree(self.conf_dir, ignore_errors=True)
        shutil.copytree(home / "conf", self.conf_dir)
        for directory in (self.log_dir, self.pid_dir, self.state_dir / "tmp", self.savepoint_dir):
            directory.mkdir(parents=True, exist_ok=True)
        rest_port = free_port()
        options = {
            "jobmanager.rpc.address": HOST,
            "jobmanager.bind-host": HOST,
            "jobmanager.rpc.port": free_port(),
            "taskmanager.host": HOST,
            "taskmanager.bind-host": HOST,
            # a port for each (Flink's port-range syntax); `start` gives each its own
            "taskmanager.rpc.port": ",".join(str(free_port()) for _ in range(taskmanagers)),
            "rest.address": HOST,
            "rest.bind-address": HOST,
            "rest.port": rest_port,
            "blob.server.port": str(free_port()),
            "taskmanager.numberOfTaskSlots": slots,
            # a job of parallelism N takes slots on N TaskManagers, not N slots of the first
            "taskmanager.load-balance.mode": "SLOTS",
            "jobmanager.memory.process.size": JOBMANAGER_MEMORY,
            "taskmanager.memory.process.size": TASKMANAGER_MEMORY,
            "python.executable": python,
            "python.client.executable": python,
            "io.tmp.dirs": str(self.state_dir / "tmp"),
            "execution.checkpointing.savepoint-dir": self.savepoint_dir.as_uri(),
            # A TaskManager that dies is known dead after two heartbeats its process does
            # not answer (heartbeat.rpc-failure-threshold: 2), within seconds rather than
            # Flink's 10 s interval: the job's restart then asks for slots elsewhere
            # instead of spending its attempts on a TaskManager that is gone.
            "heartbeat.interval": "2 s",
        }
        path = self.conf_dir / CONFIG_FILE
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for key, value in options.items():
            _set_option(tree, key, value)
        path.write_text(yaml.safe_dump(tree, sort_keys=False), encoding="utf-8")
        (self.conf_dir / "masters").write_text(f"{HOST}:{rest_port}\n", encoding="utf-8")
        (self.conf_dir / "workers").write_text(f"{HOST}\n" * taskmanagers, encoding="utf-8")
        return options

    def start(self, taskmanagers: int = DEFAULT_TASKMANAGERS, slots: int = DEFAULT_SLOTS,
              timeout_s: float = 120.0) -> ClusterStatus:
        """Start the JobManager, then the TaskManagers, and wait until all have
        registered. Fails if this state directory's cluster is running already."""
        if taskmanagers < 1 or slots < 1:
            raise ClusterError("a cluster needs at least one TaskManager with one slot")
        home = flink_home()
        if not java_available():
            raise ClusterError(MISSING.format(what="No java on PATH and no JAVA_HOME."))
        if self.is_running():
            raise ClusterError(f"a cluster from {self.state_dir} is running already, at "
                               f"{self._state_address()} (orion flink cluster stop first)")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / STATE_FILE).unlink(missing_ok=True)
        for stale in self.pid_dir.glob("*.pid"):
            stale.unlink()
        options = self.write_configuration(taskmanagers, slots)
        address = f"{HOST}:{options['rest.port']}"
        try:
            self._script(home, "jobmanager.sh", "start")
            for port in options["taskmanager.rpc.port"].split(","):
                self._script(home, "taskmanager.sh", "start", "-D", f"taskmanager.rpc.port={port}")
            self._wait_registered(address, taskmanagers, timeout_s)
        except ClusterError:
            self.stop()
            raise
        (self.state_dir / STATE_FILE).write_text(json.dumps(
            {"rest_address": address, "taskmanagers": taskmanagers, "slots": slots,
             "flink_home": str(home), "python": sys.executable}, indent=2) + "\n", encoding="utf-8")
        return self.status()

    def taskmanager_processes(self) -> list[tuple[int, int]]:
        """(pid, RPC port) of each live TaskManager, in the order they were started."""
        found = []
        for pid in self.daemon_pids()["taskexecutor"]:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", "replace")
            port = re.search(r"taskmanager\.rpc\.port=(\d+)", command)
            found.append((pid, int(port.group(1)) if port else -1))
        return found

    def taskmanager_id(self, port: int) -> str | None:
        """The REST id of the registered TaskManager on RPC port `port` (HOST:PORT-SUFFIX)."""
        for manager in taskmanagers(self.rest_address):
            if manager["id"].startswith(f"{HOST}:{port}-"):
                return manager["id"]
        return None

    def kill_taskmanager(self, index: int = 0, timeout_s: float = 30.0) -> str:
        """Kill the `index`th live TaskManager with SIGKILL, as a machine that fails
        would lose it: no shutdown, its tasks and their Python workers (its child
        processes, which SIGKILL would leave orphaned) gone with it. Returns the REST id
        it had. The JobManager learns of it by its missed heartbeats."""
        processes = self.taskmanager_processes()
        if not 0 <= index < len(processes):
            raise ClusterError(f"no TaskManager {index}: {len(processes)} running from {self.state_dir}")
        pid, port = processes[index]
        manager = self.taskmanager_id(port) or f"{HOST}:{port}"
        workers = _descendants(pid)
        os.kill(pid, signal.SIGKILL)
        for worker in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + timeout_s
        while self._is_ours(pid):
            if time.monotonic() > deadline:
                raise ClusterError(f"TaskManager {pid} outlived SIGKILL for {timeout_s:.0f} s")
            time.sleep(0.1)
        return manager

    def start_taskmanager(self, timeout_s: float = 120.0) -> str:
        """Start one more TaskManager (taskmanager.sh start, on a free RPC port) and wait
        until it has registered; its REST id."""
        port = free_port()
        self._script(flink_home(), "taskmanager.sh", "start", "-D", f"taskmanager.rpc.port={port}")
        deadline = time.monotonic() + timeout_s
        while (manager := self.taskmanager_id(port)) is None:
            if time.monotonic() > deadline:
                raise ClusterError(f"a TaskManager started on port {port} did not register within "
                                   f"{timeout_s:.0f} s\n{self._log_tail()}")
            time.sleep(0.5)
        return manager

    def wait_for_taskmanagers(self, count: int, timeout_s: float = 120.0) -> list[dict]:
        """Until the JobManager lists exactly `count` TaskManagers (one that died is
        listed until it has missed its heartbeats); their /taskmanagers entries."""
        deadline = time.monotonic() + timeout_s
        while len(listed := taskmanagers(self.rest_address)) != count:
            if time.monotonic() > deadline:
                raise ClusterError(f"the cluster lists {len(listed)} TaskManagers after {timeout_s:.0f} s, "
                                   f"not {count}")
            time.sleep(0.5)
        return listed

    def status(self) -> ClusterStatus:
        address = self.rest_address
        return ClusterStatus(address, taskmanagers(address), overview(address), jobs(address))

    def stop(self, timeout_s: float = 60.0) -> list[int]:
        """Stop the TaskManagers, then the JobManager, through Flink's scripts; a daemon
        that outlives them is killed. Returns the pids stopped."""
        pids = self.daemon_pids()
        stopped = [pid for group in pids.values() for pid in group]
        if not stopped:
            (self.state_dir / STATE_FILE).unlink(missing_ok=True)
            return []
        home = flink_home()
        # The scripts stop whatever their pid files name: leave only this cluster's live daemons there.
        for daemon, live in pids.items():
            path = self.pid_dir / f"flink-{IDENT}-{daemon}.pid"
            if live:
                path.write_text("".join(f"{pid}\n" for pid in live))
            else:
                path.unlink(missing_ok=True)
        for script, daemon in (("taskmanager.sh", "taskexecutor"), ("jobmanager.sh", "standalonesession")):
            if pids[daemon]:
                self._script(home, script, "stop-all", check=False)
        deadline = time.monotonic() + timeout_s
        while any(self._is_ours(pid) for pid in stopped) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in stopped:
            if self._is_ours(pid):
                os.kill(pid, signal.SIGKILL)
        (self.state_dir / STATE_FILE).unlink(missing_ok=True)
        return stopped

    # --- helpers ---

    def _state_address(self) -> str:
        state = self._state()
        return state["rest_address"] if state else "an unknown address"

    def environment(self, home: Path) -> dict[str, str]:
        """The scripts' environment: the package as FLINK_HOME, everything else here."""
        env = dict(os.environ)
        env.update(FLINK_HOME=str(home), FLINK_CONF_DIR=str(self.conf_dir), FLINK_LOG_DIR=str(self.log_dir),
                   FLINK_PID_DIR=str(self.pid_dir), FLINK_IDENT_STRING=IDENT)
        for inherited in ("FLINK_LIB_DIR", "FLINK_OPT_DIR", "FLINK_PLUGINS_DIR", "FLINK_ENV_JAVA_OPTS"):
            env.pop(inherited, None)
        return env

    def _script(self, home: Path, name: str, *args: str, check: bool = True) -> str:
        # From the state directory: a daemon's Python workers start in its working
        # directory, where a stray module could shadow an installed one.
        result = subprocess.run(["bash", str(home / "bin" / name), *args], cwd=self.state_dir,
                                env=self.environment(home), stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise ClusterError(f"{name} {' '.join(args)} failed ({result.returncode}): "
                               f"{(result.stderr or result.stdout).strip()}\n{self._log_tail()}")
        return result.stdout

    def _wait_registered(self, address: str, taskmanagers: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        registered = -1
        while time.monotonic() < deadline:
            pids = self.daemon_pids()
            if not pids["standalonesession"] or len(pids["taskexecutor"]) < taskmanagers:
                raise ClusterError(f"a Flink daemon exited while the cluster started\n{self._log_tail()}")
            try:
                registered = overview(address).get("taskmanagers", 0)
            except ClusterError:
                registered = -1
            if registered >= taskmanagers:
                return
            time.sleep(0.5)
        seen = "no REST endpoint" if registered < 0 else f"{registered} of {taskmanagers} TaskManagers"
        raise ClusterError(f"the cluster did not come up at {address} within {timeout_s:.0f} s ({seen})\n"
                           f"{self._log_tail()}")

    def _log_tail(self, lines: int = 15) -> str:
        parts = []
        for path in sorted(self.log_dir.glob("*.out")) + sorted(self.log_dir.glob("*.log")):
            text = path.read_text(encoding="utf-8", errors="replace").splitlines()
            errors = [line for line in text if "ERROR" in line or "Exception" in line][-lines:]
            if errors or path.suffix == ".out" and text:
                parts.append(f"--- {path}\n" + "\n".join(errors or text[-lines:]))
        return "\n".join(parts) or f"(no logs in {self.log_dir})"

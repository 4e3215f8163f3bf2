"""The Flink the Flink tests run on, as session fixtures: `flink`, the runner module once
PyFlink has shown it can start a local mini-cluster (conftest.py imports it), and
`flink_cluster`, a standalone cluster of one JobManager and two TaskManagers started from
the apache-flink package's own scripts on free ports, its state in a temporary
directory, stopped at the end of the session. Without Java 17 or PyFlink the tests fail
and say what to install. Nothing is skipped.

    .venv/bin/python -m pytest -q tests/test_flink_parity.py tests/test_flink_cli.py tests/test_flink_cluster.py \
        tests/test_flink_recovery.py
"""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def flink():
    """The Flink runner module, once PyFlink has shown it can start a mini-cluster."""
    try:
        from orion.runners import flink as flink_runner
    except ImportError as error:
        pytest.fail(f"PyFlink is not importable ({error}); install apache-flink==2.3.0 "
                    "(pip install -e . installs it) and Java 17", pytrace=False)
    try:
        flink_runner.create_environment(flink_runner.FlinkOptions())
    except flink_runner.FlinkUnavailable as error:
        pytest.fail(str(error), pytrace=False)
    return flink_runner


@pytest.fixture(scope="session")
def flink_cluster(tmp_path_factory):
    """A running orion.flink.cluster.LocalCluster with two TaskManagers of two slots;
    `flink_cluster.rest_address` is what --flink-master takes. A test that kills a
    TaskManager starts another before it ends (`start_taskmanager`)."""
    from orion.flink.cluster import ClusterError, LocalCluster

    # A second attempt, in a fresh directory on fresh ports: on a loaded machine a daemon
    # can lose the race for a free port it was given. Both failures are reported.
    failures = []
    for _ in range(2):
        cluster = LocalCluster(tmp_path_factory.mktemp("flink-cluster"))
        try:
            cluster.start(taskmanagers=2, slots=2)
            break
        except ClusterError as error:
            cluster.stop()
            failures.append(str(error))
    else:
        pytest.fail("cannot start a standalone Flink cluster: " + "\n--- then: ".join(failures), pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()

"""The Flink runner the Flink tests run on, as a session fixture (conftest.py imports it):
PyFlink importable and able to start a local mini-cluster, or the tests fail and say what
to install. Nothing is skipped.

    .venv/bin/python -m pytest -q tests/test_flink_parity.py tests/test_flink_cli.py
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

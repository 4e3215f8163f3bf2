"""The HBase the HBase store tests use, as a session fixture (conftest.py imports it):
`hbase_server`, one real standalone HBase and its Thrift 2 server
(orion.testing.hbase.HBaseServer, from Apache HBase's jars fetched once from Maven Central)
on free ports, stopped at the end of the session. Without Java 17, Maven (for the first
fetch) or thriftpy2 the tests fail and say what to install. Nothing is skipped.

The Thrift server here closes a connection idle for IDLE_CLOSE_MS (HBase's default is a
minute), so the store's reopening of closed connections is exercised all through the
suite, and a test can prove it by waiting a few seconds.

    .venv/bin/python -m pytest -q tests/test_hbase_store.py
"""
from __future__ import annotations

import uuid

import pytest

from orion.testing.hbase import HBaseServer, HBaseUnavailable

IDLE_CLOSE_MS = 5_000

# The session's server, once the hbase_server fixture has started it; hbase_uri() names
# tables on it.
_session_hbase: HBaseServer | None = None


@pytest.fixture(scope="session")
def hbase_server(tmp_path_factory):
    """A started HBaseServer: `hbase_server.uri(table)`, `hbase_server.address`."""
    global _session_hbase
    server = HBaseServer(tmp_path_factory.mktemp("hbase"),
                         settings={"hbase.thrift.server.socket.read.timeout": IDLE_CLOSE_MS})
    # pytest.fail outside the except clause, so the report is the message alone.
    failure = None
    try:
        server.start()
    except HBaseUnavailable as error:
        failure = f"the HBase tests need HBase: {error}"
    if failure is not None:
        server.stop()
        pytest.fail(failure, pytrace=False)
    _session_hbase = server
    try:
        yield server
    finally:
        _session_hbase = None
        server.stop()


def hbase_uri(table: str | None = None) -> str:
    """A URI naming a table no other test uses, on the session's HBase (the test or
    fixture must have requested hbase_server)."""
    if _session_hbase is None:
        raise RuntimeError("no HBase is running: the test or fixture must request the hbase_server fixture first")
    return _session_hbase.uri(table or "t" + uuid.uuid4().hex[:16])

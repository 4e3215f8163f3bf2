"""The store commands (`orion store init`, `orion history`) and what other tools see of a
store: rows the Bigtable store writes, read back with Google's `cbt` CLI.

The commands run as a user runs them, in a subprocess (`python -m orion.store.commands`,
the same handlers `orion` registers), or through their handlers where stdout is enough.

    .venv/bin/python -m pytest -q tests/test_store_cli.py
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from conftest import HOUR, MINUTE, T0
from store_services import BIGTABLE_INSTANCE, BIGTABLE_PROJECT, bigtable_uri, drop_mysql_tables, mysql_uri

from orion.activities import Activity, format_timestamp
from orion.store import StoredProfile, open_store
from orion.store.bigtable import activity_row_key, index_row_key
from orion.store.base import activity_day
from orion.store.commands import main as store_commands

CBT_LOCATIONS = [Path("/usr/lib/google-cloud-sdk/bin/cbt"), Path("/usr/share/google-cloud-sdk/bin/cbt")]


def run_commands(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orion.store.commands", *args], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ))


@pytest.fixture(params=("sqlite", "bigtable", "mysql"))
def store_uri(request, tmp_path):
    """A URI of each backend naming a store that does not exist yet."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'data' / 'activities.db'}"
    elif request.param == "bigtable":
        request.getfixturevalue("bigtable_emulator")
        yield bigtable_uri()
    else:
        database = request.getfixturevalue("mysql_database")
        yield mysql_uri(database)
        drop_mysql_tables(database)


def test_store_init_creates_the_store_and_is_safe_to_run_twice(store_uri):
    first = run_commands("store", "init", store_uri)
    assert first.returncode == 0, first.stderr
    assert "initialized" in first.stdout
    with open_store(store_uri) as store:
        store.write([Activity("e1", "acme", "7", "open_email", T0, {"email": "welcome"})])
        store.write_profiles([StoredProfile("acme", "7", '{"v": 1}', T0)])  # init made the profile table too
    second = run_commands("store", "init", store_uri)
    assert second.returncode == 0, second.stderr
    with open_store(store_uri) as store:
        assert store.count() == 1
        assert store.read_profiles([("acme", "7")]) == ['{"v": 1}']


def test_history_prints_newest_first_one_line_per_activity(store_uri):
    batch = [
        Activity("e1", "acme", "7", "visit_web_page", T0, {"url": "/pricing"}),
        Activity("e2", "acme", "7", "open_email", T0 + MINUTE, {"email": "wélcome"}),
        Activity("e3", "acme", "7", "visit_web_page", T0 + HOUR, {"url": "/demo", "query": {"a": [1, 2]}}),
        Activity("e4", "acme", "8", "visit_web_page", T0 + HOUR, {"url": "/other-lead"}),
    ]
    with open_store(store_uri) as store:
        store.init()
        store.write(batch)
    result = run_commands("history", "--store", store_uri, "--tenant", "acme", "--lead", "7")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "2026-11-22T11:00:00.000Z\tvisit_web_page\te3\t{\"query\":{\"a\":[1,2]},\"url\":\"/demo\"}",
        "2026-11-22T10:01:00.000Z\topen_email\te2\t{\"email\":\"wélcome\"}",
        "2026-11-22T10:00:00.000Z\tvisit_web_page\te1\t{\"url\":\"/pricing\"}",
    ]


def test_history_filters_by_type_time_and_limit(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'a.db'}"
    with open_store(uri) as store:
        store.init()
        store.write([Activity(f"v{i}", "acme", "7", "visit_web_page", T0 + i * MINUTE, {"url": f"/{i}"})
                     for i in range(5)]
                    + [Activity("o1", "acme", "7", "open_email", T0 + 10 * MINUTE, {"email": "x"})])

    def history(*args):
        assert store_commands(["history", "--store", uri, "--tenant", "acme", "--lead", "7", *args]) == 0
        return [line.split("\t")[2] for line in capsys.readouterr().out.splitlines()]

    assert history("--type", "visit_web_page", "--limit", "2") == ["v4", "v3"]
    assert history("--type", "visit_web_page", "--type", "open_email", "--limit", "2") == ["o1", "v4"]
    assert history("--since", format_timestamp(T0 + 3 * MINUTE)) == ["o1", "v4", "v3"]
    assert history("--since", str(T0 + 3 * MINUTE), "--until", "2026-11-22T10:04:00Z") == ["v3"]
    assert history("--since", "2026-11-22T11:03:00+01:00") == ["o1", "v4", "v3"]  # an offset, not UTC


def test_history_refuses_bad_times_and_limits(tmp_path):
    uri = f"sqlite:///{tmp_path / 'a.db'}"
    for bad in (["--since", "yesterday"], ["--since", "2026-11-22T10:00:00"], ["--limit", "0"],
                ["--limit", "99999999999999999999"]):
        result = run_commands("history", "--store", uri, "--tenant", "acme", "--lead", "7", *bad)
        assert result.returncode == 2 and bad[1] in result.stderr, result.stderr
    result = run_commands("history", "--store", uri, "--tenant", "acme", "--lead", "7", "--since",
                          "2026-11-19T00:00:00Z", "--until", "2026-11-18T00:00:00Z")
    assert result.returncode == 2 and "--until must be after --since" in result.stderr, result.stderr


def test_history_keeps_one_activity_on_one_line(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'a.db'}"
    with open_store(uri) as store:
        store.init()
        store.write([Activity("tab\there\nnl", "acme", "7", "visit_web_page", T0, {"url": "a\tb"})])
    assert store_commands(["history", "--store", uri, "--tenant", "acme", "--lead", "7"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.split("\t")[2:] == ["tab\\there\\nnl", '{"url":"a\\tb"}']


@pytest.mark.parametrize("damage", ["another application's database", "a damaged file"])
def test_a_sqlite_file_that_is_not_a_store_is_said_in_one_line(tmp_path, damage):
    import sqlite3

    path = tmp_path / "other.db"
    if damage == "a damaged file":
        with open_store(f"sqlite:///{path}") as store:
            store.init()
            store.write([Activity(f"v{i}", "acme", "7", "visit_web_page", T0 + i, {"url": "x" * 500})
                         for i in range(200)])
        data = bytearray(path.read_bytes())
        for at in range(4096, len(data), 4096):  # every page's header after the first
            data[at:at + 8] = b"\xde\xad\xbe\xef" * 2
        path.write_bytes(bytes(data))
        for extra in tmp_path.glob("other.db-*"):
            extra.unlink()
    else:
        with sqlite3.connect(path) as connection:
            for table in ("activities(id, name)", "rollups(x)", "tenant_stages(a)"):
                connection.execute(f"CREATE TABLE {table}")
    uri = f"sqlite:///{path}"
    for command in (["history", "--store", uri, "--tenant", "acme", "--lead", "7"],
                    ["analytics", "query", "--store", uri, "--tenant", "acme", "--metric", "events",
                     "--from", "2026-11-01T00:00:00Z", "--to", "2026-11-02T00:00:00Z"],
                    ["tenants", "list", "--store", uri],
                    # not "initialized": its tables are not Orion's (a damaged page is found when read)
                    *([["store", "init", uri]] if damage != "a damaged file" else [])):
        result = subprocess.run([sys.executable, "-m", "orion.cli", *command], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 2, (command, result.stdout, result.stderr[-2000:])
        assert result.stderr.startswith("orion: ") and "Traceback" not in result.stderr, result.stderr[-2000:]
        if command[0] == "history":
            assert "cannot be read" in result.stderr, result.stderr


def test_history_of_a_store_never_initialized_says_to_run_init(store_uri):
    result = run_commands("history", "--store", store_uri, "--tenant", "acme", "--lead", "7")
    assert result.returncode == 2
    assert f"orion store init {store_uri}" in result.stderr, result.stderr


def test_bad_store_uris_say_which_form_to_use(tmp_path):
    for uri, expected in [
        ("postgres://db/x", "bigtable://PROJECT/INSTANCE/TABLE"),
        ("activities.db", "sqlite:///"),
        ("bigtable://project/instance", "bigtable://PROJECT/INSTANCE/TABLE"),
        ("bigtable://project/instance/table/extra", "bigtable://PROJECT/INSTANCE/TABLE"),
        ("mysql://root@127.0.0.1:3306/", "mysql://USER:PASSWORD@HOST:PORT/DATABASE"),
        ("mysql://root:s3cret@127.0.0.1:3306/no-dashes", "mysql://USER:PASSWORD@HOST:PORT/DATABASE"),
        ("mysql://root@127.0.0.1:port/orion", "mysql://USER:PASSWORD@HOST:PORT/DATABASE"),
    ]:
        result = run_commands("store", "init", uri)
        assert result.returncode == 2, (uri, result.stdout)
        assert expected in result.stderr, (uri, result.stderr)
        assert "s3cret" not in result.stderr


def find_cbt() -> str:
    found = shutil.which("cbt") or next((str(p) for p in CBT_LOCATIONS if p.exists()), None)
    if found is None:
        pytest.fail("the cbt CLI is missing; install it with: apt-get install google-cloud-cli-cbt "
                    "(from Google Cloud's Debian repository)", pytrace=False)
    return found


def cbt_read(emulator, table: str) -> dict[str, dict[str, tuple[str, str]]]:
    """`cbt read TABLE` -> {row key: {family:column: (cell time, value)}}."""
    result = subprocess.run(
        [find_cbt(), "-project", BIGTABLE_PROJECT, "-instance", BIGTABLE_INSTANCE, "read", table],
        capture_output=True, text=True, timeout=60, env={**os.environ, "BIGTABLE_EMULATOR_HOST": emulator.host},
    )
    assert result.returncode == 0, result.stderr
    rows: dict[str, dict[str, tuple[str, str]]] = {}
    for block in result.stdout.split("-" * 40 + "\n"):
        lines = [line for line in block.splitlines() if line.strip()]
        if not lines:
            continue
        cells = rows.setdefault(lines[0], {})
        for header, value in zip(lines[1::2], lines[2::2]):
            column, _, when = header.strip().partition(" @ ")
            cells[column.strip()] = (when.strip(), json.loads(value.strip()))  # Go %q: JSON-compatible here
    return rows


def test_cbt_reads_the_rows_the_bigtable_store_wrote(bigtable_emulator):
    uri = bigtable_uri()
    table = uri.rsplit("/", 1)[1]
    batch = [
        Activity("e1", "acme", "7", "visit_web_page", T0, {"url": "/pricing", "n": [1, {"ü": None}]}),
        Activity("e/2#x", "ac#me", "lead/7", "open_email", T0 + 1500, {"email": "wélcome"}),
        Activity("e3", "acme", "8", "fill_out_form", T0 + HOUR, {}),
    ]
    with open_store(uri) as store:
        store.init()
        store.write(batch)
        store.write(batch)  # a retry rewrites the same cells
        store.index_activities(batch)

    def cell_time(ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y/%m/%d-%H:%M:%S.%f")

    expected = {
        activity_row_key(a.tenant, a.lead_id, a.occurred_at, a.event_id).decode(): {
            "a:type": (cell_time(a.occurred_at), a.type),
            "a:occurred_at": (cell_time(a.occurred_at), str(a.occurred_at)),
            "a:attributes": (cell_time(a.occurred_at),
                             json.dumps(a.attributes, ensure_ascii=False, sort_keys=True, separators=(",", ":"))),
        }
        for a in batch
    }
    assert cbt_read(bigtable_emulator, table) == expected
    assert "ac%23me#" in "".join(expected) and "lead%2F7#" in "".join(expected)  # separators never leak

    index = cbt_read(bigtable_emulator, table + "-index")
    assert index == {
        index_row_key(a.tenant, a.lead_id, a.type, activity_day(a.occurred_at)).decode():
            {f"e:{a.event_id}": (cell_time(a.occurred_at), str(a.occurred_at))}
        for a in batch
    }


def test_a_store_whose_client_gives_up_is_one_line_not_a_traceback():
    """A store client's own error (Google's RetryError past the read deadline, a MySQL
    connection error) reaching a command is said in one line, as a StoreError is."""
    from google.api_core.exceptions import RetryError
    from pymysql.err import OperationalError

    from orion.store.base import StoreError, store_error

    said = store_error(RetryError("Timeout of 60.0s exceeded", None))
    assert isinstance(said, StoreError) and "did not answer: RetryError: Timeout of 60.0s" in str(said)
    assert "OperationalError" in str(store_error(OperationalError(2003, "Can't connect")))
    assert store_error(KeyError("ours")) is None  # a fault of ours is not hidden


def test_commands_that_read_a_store_do_not_make_one_at_a_mistyped_path(tmp_path):
    """A mistyped SQLite path is said; no folder, no empty store is left there."""
    uri = f"sqlite:///{tmp_path / 'typo' / 'dir' / 'activities.db'}"
    for command in (["history", "--store", uri, "--tenant", "acme", "--lead", "7"],
                    ["tenants", "list", "--store", uri],
                    ["tenants", "set", "acme", "--stage", "passive", "--store", uri],
                    ["analytics", "query", "--store", uri, "--tenant", "acme", "--metric", "events",
                     "--from", "2026-11-01T00:00:00Z", "--to", "2026-11-02T00:00:00Z"],
                    ["analytics", "experiments", "--store", uri, "--tenant", "acme"]):
        result = subprocess.run([sys.executable, "-m", "orion.cli", *command], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 2 and "there is no SQLite store at" in result.stderr, (command, result.stderr)
    assert not (tmp_path / "typo").exists()

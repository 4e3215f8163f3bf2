"""The `orion` command line, run as a user runs it: the installed console script."""
from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

ORION = Path(sys.executable).with_name("orion")
SAMPLES = Path(__file__).resolve().parent.parent / "orion" / "samples"


def run_orion(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    assert ORION.exists(), f"the orion console script is missing next to {sys.executable}; run `make test`"
    return subprocess.run([str(ORION), *args], cwd=cwd, input=stdin, capture_output=True, text=True, timeout=300)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def test_evaluate_with_no_arguments_runs_the_samples_into_orion_data(tmp_path):
    result = run_orion("evaluate", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    outcomes = read_jsonl(tmp_path / "orion-data" / "outcomes.jsonl")
    dead = read_jsonl(tmp_path / "orion-data" / "dead-letters.jsonl")
    qualified = [o for o in outcomes if o["qualified"]]
    assert qualified, "the sample events fire at least one sample campaign"
    assert {o["tenant"] for o in qualified} == {"acme", "globex", "initech"}
    # The samples carry bad lines on purpose; each is dead-lettered with a reason, none lost.
    reasons = {d["reason"] for d in dead}
    assert {"malformed_json", "missing_field", "unknown_type", "bad_attribute", "bad_timestamp"} <= reasons
    lines = sum(1 for line in (SAMPLES / "events.jsonl").read_text().splitlines() if line.strip())
    assert f"events read:      {lines}" in result.stdout
    assert f"dead letters:     {len(dead)}" in result.stdout
    assert "campaigns fired (top 10):" in result.stdout


def test_evaluate_writes_every_bad_line_to_dead_letters_and_goes_on(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "t.yaml").write_text(
        "tenant: t\ncampaigns:\n  - name: Opened\n    qualification: every_time\n"
        "    triggers: [{activity: open_email}]\n"
    )
    good = {"event_id": "e1", "tenant": "t", "lead_id": "L", "type": "open_email",
            "occurred_at": 1000, "attributes": {"email": "x"}}
    events = tmp_path / "events.jsonl"
    events.write_bytes(
        (json.dumps(good) + "\n").encode()
        + b'{"broken\n'
        + b'\xff\xfe not utf-8\n'
        + (json.dumps({**good, "event_id": "e2", "occurred_at": 2000}) + "\n").encode()
        + (json.dumps(good) + "\n").encode()  # a duplicate delivery
    )
    result = run_orion("evaluate", "--rules", str(rules), "--events", str(events),
                       "--out", "o.jsonl", "--dead-letters", "d.jsonl", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    outcomes = read_jsonl(tmp_path / "o.jsonl")
    assert [o["event_id"] for o in outcomes] == ["e1", "e2"]
    dead = read_jsonl(tmp_path / "d.jsonl")
    assert [(d["reason"], d["source"]) for d in dead] == [
        ("malformed_json", f"{events}:2"),
        ("malformed_json", f"{events}:3"),
    ]
    assert "duplicates:       1" in result.stdout


def test_evaluate_refuses_bad_rules_with_file_and_line(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "t.yaml").write_text("tenant: t\ncampaigns:\n  - name: X\n    triggers: [{activity: opn_email}]\n")
    result = run_orion("evaluate", "--rules", str(rules), cwd=tmp_path)
    assert result.returncode == 2
    assert f"{rules / 't.yaml'}:4: unknown activity type 'opn_email'" in result.stderr


def test_rules_validate_lists_every_error_and_exits_non_zero(tmp_path):
    rules = tmp_path / "rules"
    shutil.copytree(SAMPLES / "rules", rules)
    (rules / "broken.yaml").write_text(
        "tenant: acme\n"
        "campaigns:\n"
        "  - name: One\n"
        "    triggers: [{activity: visit_web_page, where: {url: {containz: x}}}]\n"
        "  - name: Two\n"
        "    triggers: [{activity: open_email}]\n"
        "    flow: [{add_to_list: {list: nowhere}}]\n"
    )
    result = run_orion("rules", "validate", str(rules), cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert any(line.startswith(f"{rules / 'broken.yaml'}:4: unknown operator 'containz'") for line in lines)
    assert any(line.startswith(f"{rules / 'broken.yaml'}:7: unknown list 'nowhere'") for line in lines)
    assert "2 error(s)" in result.stderr


def test_rules_validate_accepts_the_samples(tmp_path):
    result = run_orion("rules", "validate", str(SAMPLES / "rules"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rules are valid" in result.stdout


def test_evaluate_reads_standard_input(tmp_path):
    event = {"event_id": "e1", "tenant": "acme", "lead_id": "L", "type": "fill_out_form",
             "occurred_at": "2026-11-22T10:00:00Z", "attributes": {"form": "signup"}}
    result = run_orion("evaluate", "--events", "-", "--out", "o.jsonl", "--dead-letters", "d.jsonl",
                       cwd=tmp_path, stdin=json.dumps(event) + "\n")
    assert result.returncode == 0, result.stderr
    outcomes = read_jsonl(tmp_path / "o.jsonl")
    assert [(o["campaign"], o["qualified"]) for o in outcomes] == [("Welcome new signups", True)]


def test_one_tenants_broken_rules_do_not_stop_the_other_tenants_run(tmp_path):
    """orion run with a tenant whose rules do not load: the run goes on for the others
    (exit 0, their campaigns fire), the broken tenant's errors are reported with
    file:line, its campaigns do not run, and its activities are still stored."""
    rules = tmp_path / "rules"
    shutil.copytree(SAMPLES / "rules", rules)
    (rules / "evil.yaml").write_text(
        "tenant: evil\n"
        "settings:\n"
        "  activity_types:\n"
        "    store_visit: {attributes: {store: string}}\n"
        "campaigns:\n"
        "  - name: Broken\n"
        "    triggers: [{activity: visit_web_page, where: {url: {containz: x}}}]\n")
    events = tmp_path / "events.jsonl"
    lines = [{"event_id": "a1", "tenant": "acme", "lead_id": "L1", "type": "fill_out_form",
              "occurred_at": "2026-11-22T10:00:00Z", "attributes": {"form": "signup"}},
             {"event_id": "v1", "tenant": "evil", "lead_id": "E1", "type": "visit_web_page",
              "occurred_at": "2026-11-22T10:00:01Z", "attributes": {"url": "https://evil.example/x"}},
             {"event_id": "s1", "tenant": "evil", "lead_id": "E1", "type": "store_visit",  # its own type
              "occurred_at": "2026-11-22T10:00:02Z", "attributes": {"store": "Main St"}}]
    events.write_text("".join(json.dumps(line) + "\n" for line in lines))
    db = tmp_path / "store.db"
    result = run_orion("run", "--events", str(events), "--rules", str(rules), "--store", f"sqlite:///{db}",
                       "--out-dir", str(tmp_path / "out"), "--outbox", "none", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tenant 'evil': its rules have 1 error(s)" in result.stderr
    assert f"{rules / 'evil.yaml'}:7: unknown operator 'containz'" in result.stderr
    outcomes = [json.loads(line) for f in (tmp_path / "out").glob("outcomes-*.jsonl")
                for line in f.read_text().splitlines()]
    assert {(o["tenant"], o["campaign"]) for o in outcomes if o["qualified"]} == {("acme", "Welcome new signups")}
    with sqlite3.connect(db) as connection:
        stored = sorted(row[0] for row in connection.execute("SELECT event_id FROM activities"))
    assert stored == ["a1", "s1", "v1"], "the refused tenant's activities, of its own types too, are stored"


def test_rules_that_belong_to_no_tenant_still_stop_the_run(tmp_path):
    rules = tmp_path / "rules"
    shutil.copytree(SAMPLES / "rules", rules)
    (rules / "nobody.yaml").write_text("campaigns: []\n")  # no tenant: whose campaigns would be missing?
    result = run_orion("run", "--rules", str(rules), "--store", f"sqlite:///{tmp_path / 's.db'}",
                       "--out-dir", str(tmp_path / "out"), "--outbox", "none", cwd=tmp_path)
    assert result.returncode == 2
    assert str(rules / "nobody.yaml") in result.stderr


def test_run_refuses_an_open_ended_kafka_read_on_the_beam_graph_and_names_both_ways(tmp_path):
    result = run_orion("run", "--kafka-servers", "127.0.0.1:9", "--kafka-topic", "activities", cwd=tmp_path)
    assert result.returncode == 2
    assert "--runner flink" in result.stderr and "--duration" in result.stderr
    assert not (tmp_path / "orion-data").exists()  # refused before anything ran


def test_building_the_command_line_loads_no_web_server_no_sketches_and_no_rule_compiler():
    """Every `orion` command builds the whole parser first: the collector's and the
    decision service's defaults come from their settings modules, the roll-ups load
    DataSketches when a sketch is first needed, and the run settings' defaults, the
    campaign commands and `orion.rules`' names load the rules' compiler only when it is
    used, so a command that serves, sketches and compiles nothing does not pay for
    importing aiohttp, DataSketches, numpy, Jinja2, jsonschema, PyYAML or RE2."""
    probe = ("import sys; from orion import cli; cli.build_parser(); "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('aiohttp', 'datasketches', "
             "'_datasketches', 'numpy', 'jinja2', 'jsonschema', 'yaml', 're2') "
             "or m in ('orion.collector.app', 'orion.decisions.app', 'orion.rules.compiler')))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]", result.stdout


def test_bad_places_and_values_are_refused_with_one_line_before_anything_runs(tmp_path):
    """What a user mistypes is said in one line, exit 2, no traceback, nothing written:
    `orion run`'s store, outbox, input and output places (said before the graph is built)
    and the numbers of run, send and the servers."""
    (tmp_path / "notdb.db").write_text("not a database")
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    cases = [
        (("run", "--store", "foo://bar"), "unsupported store URI scheme 'foo'"),
        (("run", "--store", f"sqlite:///{tmp_path / 'notdb.db'}"), "file is not a database"),
        (("run", "--outbox", "foo://bar"), "bad outbox URI"),
        (("run", "--outbox", f"sqlite:///{tmp_path / 'notdb.db'}"), "file is not a database"),
        (("run", "--events", str(tmp_path / "folder")), "is a folder; give its files"),
        (("run", "--events", str(tmp_path / "missing.jsonl")), "no such file"),
        (("run", "--out-dir", str(tmp_path / "file")), "is a file, not a folder"),
        (("run", "--allowed-lateness", "nan"), "must be a number, 0 or more"),
        (("run", "--dedup-span", "-1"), "must be a number, 0 or more"),
        (("run", "--subscription", "mine"), "is not projects/PROJECT/subscriptions/SUBSCRIPTION"),
        (("send", "--outbox", "sqlite:///o.db", "--no-consent-check", "--smtp", "127.0.0.1:99999"), "1 to 65535"),
        (("send", "--outbox", "sqlite:///o.db", "--no-consent-check", "--smtp", "127.0.0.1:25", "--rate", "-1"),
         "more than 0"),
        (("send", "--outbox", "sqlite:///o.db", "--no-consent-check", "--smtp", "127.0.0.1:25", "--feedback",
          str(tmp_path / "folder")), "is a folder"),
        (("collect", "keys", "list", "--keys", str(tmp_path / "folder")), "cannot be read as a keys file"),
        (("collect", "--topic", "projects/p/topics/t", "--port", "99999"), "a port is 0 to 65535"),
        (("analytics", "serve", "--port", "-1"), "a port is 0 to 65535"),
        (("campaign", "schedule", "--rules", str(tmp_path / "no-rules")), "error"),
        (("evaluate", "--out", str(tmp_path / "folder")), "is a folder"),
    ]
    for args, said in cases:
        result = run_orion(*args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.returncode, result.stderr[-2000:])
        assert said in result.stderr and "Traceback" not in result.stderr, (args, result.stderr[-2000:])
    assert not list(tmp_path.glob("orion-data/*.jsonl")), "no graph ran"
    assert not (tmp_path / "o.db").exists()


def test_evaluate_reads_a_compressed_file_as_orion_run_does(tmp_path):
    import gzip

    (tmp_path / "events.jsonl.gz").write_bytes(gzip.compress((SAMPLES / "events.jsonl").read_bytes()))
    results = []
    for name in ("events.jsonl.gz", str(SAMPLES / "events.jsonl")):
        result = run_orion("evaluate", "--events", name, "--out", f"{Path(name).name}.out", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        results.append(read_jsonl(tmp_path / f"{Path(name).name}.out"))
    assert results[0] == results[1] and len(results[0]) > 100

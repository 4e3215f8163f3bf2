"""Files that would have stopped or skewed a whole run, through `orion run` (the Beam
graph on the DirectRunner, SQLite store): a compressed file cut short or not compressed
at all, a byte order mark, a score change that would overflow, and one tenant's line
dated far in the future. Each is a dead letter with its reason, or read as meant, and
every other line goes through.

    .venv/bin/python -m pytest -q tests/test_hostile_files.py
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

from conftest import SAMPLE_RULES, T0

from orion.profiles import decode_profile
from orion.store import open_store


def visit(n: int, tenant: str = "acme", at: int = T0, lead: str | None = None) -> dict:
    return {"event_id": f"{tenant}-v{n}", "tenant": tenant, "lead_id": lead or f"L{n}", "type": "visit_web_page",
            "occurred_at": at + n * 1000, "attributes": {"url": f"https://{tenant}.example/p{n}"}}


def lines(events) -> bytes:
    return "".join(json.dumps(event) + "\n" for event in events).encode()


def run(tmp_path: Path, capsys) -> tuple[str, list[dict], str]:
    """`orion run` over tmp_path/in/*: (its summary, the dead letters, the store URI)."""
    from orion.cli import main

    store = f"sqlite:///{tmp_path / 'store.db'}"
    assert main(["run", "--events", str(tmp_path / "in" / "*"), "--rules", str(SAMPLE_RULES), "--store", store,
                 "--outbox", "none", "--out-dir", str(tmp_path / "out")]) == 0
    letters = [json.loads(line) for path in (tmp_path / "out").glob("dead-letters-*.jsonl")
               for line in path.read_text().splitlines()]
    return capsys.readouterr().out, letters, store


def stored_ids(store: str, tenant: str, leads) -> set[str]:
    with open_store(store) as opened:
        return {a.event_id for lead in leads for a in opened.history(tenant, lead)}


def test_a_compressed_file_cut_short_or_not_compressed_is_one_dead_letter_and_the_rest_goes_through(
        tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.jsonl").write_bytes(lines(visit(n) for n in range(10)))
    whole = gzip.compress(lines(visit(n) for n in range(100, 400)))
    (folder / "cut.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    (folder / "plain.jsonl.gz").write_bytes(lines([visit(900)]))  # named .gz, not compressed
    summary, letters, store = run(tmp_path, capsys)

    unreadable = sorted((Path(letter["source"].rsplit(":", 1)[0]).name, letter["detail"]) for letter in letters
                        if letter["reason"] == "unreadable_file")
    assert [name for name, _ in unreadable] == ["cut.jsonl.gz", "plain.jsonl.gz"], letters
    assert "EOFError" in unreadable[0][1] and "the lines before it were read" in unreadable[0][1]
    assert "BadGzipFile" in unreadable[1][1]
    assert "unreadable_file: 2" in summary, summary
    found = stored_ids(store, "acme", [f"L{n}" for n in (*range(10), *range(100, 400), 900)])
    assert {f"acme-v{n}" for n in range(10)} <= found, "the good file is stored whole"
    cut_read = {n for n in range(100, 400) if f"acme-v{n}" in found}
    assert cut_read and cut_read == set(range(100, 100 + len(cut_read))), "the cut file up to where it breaks"
    assert "acme-v900" not in found


def test_a_byte_order_mark_starting_a_file_is_skipped(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + lines(visit(n) for n in range(3)))
    _, letters, store = run(tmp_path, capsys)
    assert letters == []
    assert stored_ids(store, "acme", ["L0", "L1", "L2"]) == {"acme-v0", "acme-v1", "acme-v2"}


def test_a_score_change_that_would_overflow_is_refused_and_the_lead_goes_on(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()

    def score(n: int, **attributes) -> dict:
        return {"event_id": f"s{n}", "tenant": "acme", "lead_id": "S", "type": "change_score",
                "occurred_at": T0 + n * 1000, "attributes": attributes}

    (folder / "scores.jsonl").write_bytes(lines([score(1, delta=1e308), score(2, delta=1e308), score(3, delta=5),
                                                 score(4, delta=0, new_score=-1e300)]))
    _, letters, store = run(tmp_path, capsys)
    assert sorted((letter["reason"], json.loads(letter["element"])["event_id"]) for letter in letters) == [
        ("bad_attribute", "s1"), ("bad_attribute", "s2"), ("bad_attribute", "s4")]
    assert all("1,000,000,000" in letter["detail"] for letter in letters), letters
    with open_store(store) as opened:
        profile = decode_profile(opened.read_profiles([("acme", "S")])[0])
    assert profile.flows.lead.score == 5


def test_a_profile_whose_score_overflowed_before_reads_as_score_zero():
    """A profile an earlier Orion wrote after a score overflowed holds a null score."""
    text = json.dumps({"version": 2, "lead": {"attributes": {}, "score": None, "lists": []}})
    assert decode_profile(text).flows.lead.score == 0


def test_a_tenants_line_far_in_the_future_does_not_make_another_tenants_later_lines_late(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    bad_clock = visit(0, tenant="globex", lead="BOT", at=253_402_300_000_000)  # year 9999
    (folder / "mixed.jsonl").write_bytes(lines([visit(1), bad_clock, *(visit(n) for n in range(2, 6))]))
    summary, letters, store = run(tmp_path, capsys)
    assert letters == [], letters
    assert stored_ids(store, "acme", [f"L{n}" for n in range(1, 6)]) == {f"acme-v{n}" for n in range(1, 6)}


def test_a_lone_line_far_in_the_future_does_not_make_its_own_tenants_later_lines_late(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    bad_clock = visit(0, lead="BOT", at=253_402_300_000_000)  # year 9999, the same tenant
    (folder / "mixed.jsonl").write_bytes(lines([visit(1), bad_clock, *(visit(n) for n in range(2, 6))]))
    summary, letters, store = run(tmp_path, capsys)
    assert letters == [], letters
    assert stored_ids(store, "acme", [f"L{n}" for n in range(1, 6)]) == {f"acme-v{n}" for n in range(1, 6)}
    assert stored_ids(store, "acme", ["BOT"]) == {"acme-v0"}, "the line itself is stored too"


def test_lines_far_in_the_future_together_do_not_make_their_tenants_later_lines_late(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    # the tenant's first lines, two of them, from a clock at year 9999: they agree with each
    # other, but cannot have happened yet
    bad_clock = [visit(0, lead="BOT", at=253_402_300_000_000), visit(9, lead="BOT", at=253_402_300_001_000)]
    (folder / "mixed.jsonl").write_bytes(lines([*bad_clock, *(visit(n) for n in range(1, 6))]))
    summary, letters, store = run(tmp_path, capsys)
    assert letters == [], letters
    assert stored_ids(store, "acme", [f"L{n}" for n in range(1, 6)]) == {f"acme-v{n}" for n in range(1, 6)}
    assert stored_ids(store, "acme", ["BOT"]) == {"acme-v0", "acme-v9"}, "the lines themselves are stored too"

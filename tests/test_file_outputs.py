"""Outcome and dead-letter files through Beam's fileio (orion.transforms.sinks.WriteJsonLines):
a retried bundle writes no line twice and leaves no temporary file; records keep their
JSON shape; unbounded input is written window by window, and a line far behind the
watermark is not dropped as late."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.io import fileio
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms.window import TimestampedValue

from orion.deadletters import DeadLetter
from orion.transforms.sinks import WriteJsonLines

BOUNDED = ["--runner=BundleBasedDirectRunner"]  # the local runner that retries a failed bundle


class Scored:
    """A record that knows its own JSON dict, as outcomes do."""

    def __init__(self, lead: str, score: int):
        self.lead, self.score = lead, score

    def to_json_dict(self) -> dict:
        return {"lead": self.lead, "score": self.score}


def lines_in(out: Path, prefix: str = "outcomes") -> list[dict]:
    return [json.loads(line) for f in sorted(out.glob(f"{prefix}-*.jsonl")) for line in f.read_text().splitlines()]


def counter(result, name: str) -> int:
    found = result.metrics().query(beam.metrics.MetricsFilter().with_name(name))["counters"]
    return sum(c.committed for c in found)


# Shared with the sink the runner runs in this process: the temporary files of attempts that failed.
FAILED_ATTEMPTS: list[str] = []


def test_a_retried_bundle_writes_each_line_once_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    # The first attempt at the bundle fails after writing its lines into a temporary
    # file (in flush, before the file is closed); the runner retries the bundle. The
    # failure is injected (a patch of the real sink's flush): a local disk cannot be
    # made to fail once on demand; the runner, the retry and the files are real.
    flush = fileio.TextSink.flush

    def fail_first_flush(sink):
        if not FAILED_ATTEMPTS:
            FAILED_ATTEMPTS.append(sink._fh.name)
            raise OSError("disk went away")
        flush(sink)

    FAILED_ATTEMPTS.clear()
    monkeypatch.setattr(fileio.TextSink, "flush", fail_first_flush)
    out, temp = tmp_path / "out", tmp_path / "work"
    records = [{"lead": f"L{n}", "score": n} for n in range(50)]

    pipeline = beam.Pipeline(options=PipelineOptions(BOUNDED))
    (pipeline
     | beam.Create(records)
     | WriteJsonLines(str(out / "outcomes"), "lines_written", temp_directory=str(temp)))
    result = pipeline.run()
    result.wait_until_finish()

    assert len(FAILED_ATTEMPTS) == 1, "the bundle failed once and was retried"
    assert sorted(lines_in(out), key=lambda r: r["score"]) == records, "every line exactly once"
    assert not os.path.exists(FAILED_ATTEMPTS[0]) and not temp.exists(), "no temporary file remains"
    assert counter(result, "lines_written") == len(records)


def test_files_that_could_not_be_moved_into_place_fail_the_run_and_keep_their_lines(tmp_path, monkeypatch):
    # The failed move is injected (a patch of the local file system's rename): nothing
    # else makes a local rename fail on demand; the run and the files are real.
    from apache_beam.io.filesystem import BeamIOError
    from apache_beam.io.localfilesystem import LocalFileSystem

    def refuse(self, sources, destinations):
        raise BeamIOError("rename failed", {(s, d): OSError("read-only") for s, d in zip(sources, destinations)})

    monkeypatch.setattr(LocalFileSystem, "rename", refuse)
    out, temp = tmp_path / "out", tmp_path / "work"

    pipeline = beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"]))
    (pipeline
     | beam.Create([{"n": n} for n in range(5)])
     | WriteJsonLines(str(out / "outcomes"), "lines_written", temp_directory=str(temp)))
    with pytest.raises(Exception, match="not moved into"):
        pipeline.run().wait_until_finish()

    assert not list(out.glob("outcomes-*.jsonl"))
    kept = sorted(json.loads(line)["n"] for f in temp.iterdir() for line in f.read_text().splitlines())
    assert kept == [0, 1, 2, 3, 4], "the lines are still in the temporary directory"


def test_records_are_written_as_their_own_json_into_prefix_named_files_and_the_temp_directory_goes(tmp_path):
    out = tmp_path / "out"
    dead = DeadLetter({"event_id": "e1"}, "late", "2 minutes behind", "files")
    records = [dead, Scored("L1", 7), {"plain": ["json", 1]}]

    with beam.Pipeline(options=PipelineOptions(BOUNDED)) as pipeline:
        pipeline | beam.Create(records) | WriteJsonLines(str(out / "dead-letters"), "dead_letters_written")

    names = [f.name for f in out.iterdir()]
    assert names and all(name.startswith("dead-letters-") and name.endswith(".jsonl") for name in names), names
    written = lines_in(out, "dead-letters")
    assert json.loads(dead.to_json()) in written
    assert {"lead": "L1", "score": 7} in written and {"plain": ["json", 1]} in written and len(written) == 3


def run_streaming(stream: TestStream, out: Path, **settings) -> None:
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(options=options) as pipeline:
        pipeline | stream | WriteJsonLines(str(out / "outcomes"), "outcomes_written", **settings)


def test_unbounded_input_is_written_in_files_per_window(tmp_path):
    # The clock returns 0, so each line keeps its own timestamp: windows by event time.
    def at(seconds: float, n: int) -> TimestampedValue:
        return TimestampedValue({"n": n, "at": seconds}, seconds)

    stream = (TestStream()
              .advance_watermark_to(1_000)
              .add_elements([at(1_000, 1), at(1_003, 2)])
              .add_elements([at(1_012, 3)])
              .advance_watermark_to(1_010.5)  # the first window closes: its files are written
              .add_elements([at(1_015, 4), at(1_019.9, 5)])
              .advance_watermark_to_infinity())
    out = tmp_path / "out"

    run_streaming(stream, out, window_s=10, clock=lambda: 0.0)

    by_window: dict[str, list[int]] = {}
    for f in out.glob("outcomes-*.jsonl"):
        window = f.name.removeprefix("outcomes-").rsplit("-", 3)[0]  # START-END, before SHARD-of-N
        by_window.setdefault(window, []).extend(json.loads(line)["n"] for line in f.read_text().splitlines())
    assert {window: sorted(ns) for window, ns in by_window.items()} == {
        "1970-01-01T00:16:40-1970-01-01T00:16:50": [1, 2],
        "1970-01-01T00:16:50-1970-01-01T00:17:00": [3, 4, 5],
    }
    assert not list(out.glob(".temp-*/*")), "every temporary file was moved into place"


def test_a_line_far_behind_the_watermark_still_reaches_the_files(tmp_path):
    # A too-late activity's dead letter carries its event time, long behind the watermark;
    # in a window by that time it would be dropped. Lines are filed by when they are written.
    now = int(time.time())  # whole seconds: TestStream keeps milliseconds
    stream = (TestStream()
              .advance_watermark_to(now - 60)
              .add_elements([TimestampedValue({"reason": "late", "n": 1}, now - 3_600)])
              .add_elements([TimestampedValue({"reason": "on time", "n": 2}, now - 30)])
              .advance_watermark_to_infinity())
    out = tmp_path / "out"

    run_streaming(stream, out)

    assert sorted(line["n"] for line in lines_in(out)) == [1, 2]

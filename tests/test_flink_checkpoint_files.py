"""Finding the checkpoint to restore and the job's lineage beside it, in a local
checkpoint directory and in one reached through Flink's own file systems (the way a
gs:// or s3:// directory is read): the same layout, the same answers. Flink's file
systems run for real in PyFlink's Java gateway, here on file:/// URLs, the one scheme a
plain apache-flink installation has; gs:// fails with Flink's message naming its plugin.

Needs Java 17 and apache-flink (PyFlink); without them these tests fail and say so.

    .venv/bin/python -m pytest tests/test_flink_checkpoint_files.py -q
"""
from __future__ import annotations

import os

import pytest

from orion.flink.cluster import (
    ClusterError, keep_lineage, lineage_of, newest_checkpoint, restore_path, savepoint_lineage,
)
from orion.flink.files import FlinkFiles, LocalFiles

LINEAGE = "0123456789abcdef0123456789abcdef"


def _layout(root):
    """DIR/JOB_ID/chk-N as Flink keeps retained checkpoints: job-b's chk-4 is the newest
    complete one; its chk-5 has no _metadata yet (still being written)."""
    for job, number, complete, age in (("job-a", 9, True, 300), ("job-b", 4, True, 100), ("job-b", 5, False, 0)):
        checkpoint = root / job / f"chk-{number}"
        checkpoint.mkdir(parents=True)
        (checkpoint / "state-file").write_bytes(b"\0")
        if complete:
            (checkpoint / "_metadata").write_bytes(b"\0")
            os.utime(checkpoint / "_metadata", (1_800_000_000 - age,) * 2)


@pytest.fixture(params=["local", "flink"])
def files(request, flink):
    """(Files, how a local directory is named to it): paths for this machine's files,
    file:/// URLs for Flink's."""
    if request.param == "local":
        return LocalFiles(), str
    return FlinkFiles(), lambda path: path.as_uri()


def test_the_newest_complete_checkpoint_is_found_and_restored(files, tmp_path):
    files, name = files
    _layout(tmp_path / "checkpoints")
    directory = name(tmp_path / "checkpoints")
    newest = files.join(directory, "job-b", "chk-4")

    assert newest_checkpoint(directory, files) == newest
    assert restore_path(directory, files) == newest, "a checkpoint directory restores its newest checkpoint"
    assert restore_path(newest, files) == newest, "a checkpoint named directly is taken as it is"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert newest_checkpoint(name(empty), files) is None
    with pytest.raises(ClusterError, match="holds no complete checkpoint"):
        restore_path(name(empty), files)


def test_the_lineage_kept_beside_a_jobs_checkpoints_is_read_back_from_any_of_them(files, tmp_path):
    files, name = files
    _layout(tmp_path / "checkpoints")
    directory = name(tmp_path / "checkpoints")

    marker = keep_lineage(directory, "job-b", LINEAGE, files)

    assert (tmp_path / "checkpoints" / "job-b" / "orion-lineage").read_text(encoding="utf-8") == LINEAGE + "\n"
    assert marker == files.join(directory, "job-b", "orion-lineage")
    restored = restore_path(directory, files)
    assert lineage_of(restored, files) == LINEAGE
    assert lineage_of(files.join(restored, "_metadata"), files) == LINEAGE, "Flink may name the _metadata file"
    assert lineage_of(files.join(directory, "job-a", "chk-9"), files) is None, "another job's checkpoints"
    (tmp_path / "checkpoints" / "job-a" / "orion-lineage").write_text("not a lineage\n", encoding="utf-8")
    assert lineage_of(files.join(directory, "job-a", "chk-9"), files) is None, "a marker that does not read"
    (tmp_path / "checkpoints" / "job-a" / "orion-lineage").write_bytes(b"\xff\xfe\x00")
    assert lineage_of(files.join(directory, "job-a", "chk-9"), files) is None, "a marker that is not text"


def test_a_savepoint_taken_while_the_job_ran_continues_the_lineage_its_job_kept(files, tmp_path):
    """`flink savepoint JOB_ID` leaves no lineage in the savepoint, and the job goes on
    writing profiles after it: a job restored from it continues the lineage that job kept
    in its --checkpoint-dir, found by the job id's first six hex digits, which Flink puts
    in the savepoint's name."""
    files, name = files
    job, other = "3f9a2c" + "0" * 26, "77aa00" + "1" * 26
    checkpoints = name(tmp_path / "checkpoints")
    keep_lineage(checkpoints, job, LINEAGE, files)
    keep_lineage(checkpoints, other, "f" * 32, files)
    savepoint = tmp_path / "savepoints" / "savepoint-3f9a2c-0123456789ab"
    savepoint.mkdir(parents=True)
    (savepoint / "_metadata").write_bytes(b"\0")

    assert lineage_of(restore_path(name(savepoint), files), files) is None, "the savepoint holds none itself"
    assert savepoint_lineage(name(savepoint), checkpoints, files) == LINEAGE
    assert savepoint_lineage(files.join(name(savepoint), "_metadata"), checkpoints, files) == LINEAGE

    renamed = tmp_path / "savepoints" / "before-the-upgrade"
    renamed.mkdir()
    assert savepoint_lineage(name(renamed), checkpoints, files) is None, "a name Flink did not give says nothing"
    assert savepoint_lineage(name(savepoint), name(tmp_path / "nowhere"), files) is None
    keep_lineage(checkpoints, "3f9a2c" + "2" * 26, "e" * 32, files)
    assert savepoint_lineage(name(savepoint), checkpoints, files) is None, "two jobs match: no guess"


def test_a_checkpoint_url_is_read_through_flinks_file_systems_without_naming_them(flink, tmp_path):
    """What `orion run --from-savepoint URL` does: the scheme picks the file system."""
    _layout(tmp_path / "checkpoints")
    keep_lineage(tmp_path / "checkpoints", "job-b", LINEAGE)
    url = (tmp_path / "checkpoints").as_uri()
    # file:/// is this machine's: read directly, answered as a path (what Flink's
    # execution.state-recovery.path takes too).
    assert restore_path(url) == str(tmp_path / "checkpoints" / "job-b" / "chk-4")
    assert lineage_of(restore_path(url)) == LINEAGE


def test_a_scheme_flink_has_no_file_system_for_says_which_plugin_to_install(flink):
    with pytest.raises(ClusterError, match="flink-gs-fs-hadoop"):
        newest_checkpoint("gs://orion-test-bucket/checkpoints")
    with pytest.raises(ClusterError, match="flink-gs-fs-hadoop"):
        restore_path("gs://orion-test-bucket/checkpoints")

"""jobs.py: the frame state machine, and the journal that lets a batch resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from comfy_cluster.errors import ComfyClusterError
from comfy_cluster.jobs import (
    TRANSITIONS,
    FrameTask,
    Journal,
    JournalHeader,
    JobState,
    journal_path,
    read_journal,
    transition,
)


def _header(output: str, digest: str = "d" * 64, batch_id: str = "b1") -> JournalHeader:
    return JournalHeader(batch_id=batch_id, workflow_digest=digest, frames="1001-1010", output=output,
                         created=1700000000.0)


# --------------------------------------------------------------------------- state machine


def test_every_state_has_a_row_and_final_states_are_dead_ends():
    assert set(TRANSITIONS) == set(JobState)
    for state in (JobState.DONE, JobState.FAILED, JobState.CANCELLED):
        assert state.is_final
        for new in JobState:
            with pytest.raises(ValueError, match=f"{state.value} -> {new.value}"):
                transition(state, new)


def test_happy_path_and_retry_path():
    task = FrameTask(frames=(1001,))
    task.start_attempt("gpu-01", "p1", now=10.0)
    assert task.state is JobState.SUBMITTED
    task.set_state(JobState.RUNNING)
    task.attempts[-1].reason = "server 'gpu-01' went offline"
    task.set_state(JobState.QUEUED)  # a retry
    assert task.failed_backends() == {"gpu-01"}
    task.start_attempt("gpu-02", "p2", now=11.0)
    task.set_state(JobState.DONE)
    assert [a.number for a in task.attempts] == [1, 2]
    assert task.last_backend == "gpu-02"
    assert task.reasons == ["gpu-01: server 'gpu-01' went offline"]


@pytest.mark.parametrize("bad", [(JobState.QUEUED, JobState.RUNNING), (JobState.QUEUED, JobState.DONE),
                                 (JobState.RUNNING, JobState.SUBMITTED)])
def test_invalid_transitions_raise(bad):
    with pytest.raises(ValueError):
        transition(*bad)


def test_state_values_are_json_friendly():
    assert json.dumps({"s": JobState.DONE}) == '{"s": "done"}'


def test_chunk_label():
    assert FrameTask(frames=(1, 2, 3)).label == "frames 1-3"
    assert FrameTask(frames=(7,)).label == "frame 7"


# --------------------------------------------------------------------------- journal


def test_journal_path_sits_beside_the_outputs():
    assert journal_path("/renders/sh010/sh010_comfy.####.png") == Path("/renders/sh010/.sh010_comfy.comfy-journal.jsonl")
    assert journal_path("/r/look_v{iteration:02d}.png").name == ".look_v_iteration_02d.comfy-journal.jsonl"
    # versions in the name stay apart
    assert journal_path("/r/shot.v001.####.png") != journal_path("/r/shot.v002.####.png")


def test_journal_round_trip(tmp_path):
    out = str(tmp_path / "sh.####.png")
    path = journal_path(out)
    j = Journal.open(path, _header(out), resume=False)
    f1001 = tmp_path / "sh.1001.png"
    f1001.write_bytes(b"x")
    j.submitted(1001, 1, "gpu-01", "p1")
    j.retried(1002, "gpu-02", "server 'gpu-02' went offline")
    j.done(1001, [f1001], "gpu-01", 1.25)
    j.failed(1003, "node 3 raised ValueError")
    j.close()
    contents = read_journal(path)
    assert contents.header == _header(out)
    assert [r["type"] for r in contents.records] == ["submitted", "retried", "done", "failed"]
    assert contents.done_frames() == {1001: [f1001]}
    assert contents.records[1]["from"] == "gpu-02"


def test_torn_last_line_is_ignored(tmp_path):
    out = str(tmp_path / "sh.####.png")
    path = journal_path(out)
    j = Journal.open(path, _header(out), resume=False)
    good = tmp_path / "sh.0001.png"
    good.write_bytes(b"x")
    j.done(1, [good], "gpu-01", 1.0)
    j.close()
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"type":"done","frame":2,"files":["/x/sh.00')  # killed mid-write
    contents = read_journal(path)
    assert contents.done_frames() == {1: [good]}


def test_resume_keeps_only_frames_done_and_on_disk(tmp_path):
    out = str(tmp_path / "sh.####.png")
    path = journal_path(out)
    j = Journal.open(path, _header(out), resume=False)
    present, missing = tmp_path / "sh.0001.png", tmp_path / "sh.0002.png"
    present.write_bytes(b"x")
    j.done(1, [present], "gpu-01", 1.0)
    j.done(2, [missing], "gpu-01", 1.0)   # deleted since
    j.failed(3, "boom")
    j.close()
    resumed = Journal.open(path, _header(out, batch_id="new"), resume=True)
    assert resumed.resumed == {1: [present]}
    assert resumed.header.batch_id == "b1"  # the batch keeps its identity across resumes
    resumed.done(2, [present], "gpu-02", 1.0)
    resumed.close()
    assert set(read_journal(path).done_frames()) == {1, 2}


def test_resume_refuses_another_workflow_or_output(tmp_path):
    out = str(tmp_path / "sh.####.png")
    path = journal_path(out)
    Journal.open(path, _header(out), resume=False).close()
    with pytest.raises(ComfyClusterError, match="different workflow"):
        Journal.open(path, _header(out, digest="e" * 64), resume=True)
    with pytest.raises(ComfyClusterError, match="was written for output"):
        Journal.open(path, _header(out + "x"), resume=True)


def test_fresh_start_rotates_the_old_journal(tmp_path):
    out = str(tmp_path / "sh.####.png")
    path = journal_path(out)
    j = Journal.open(path, _header(out), resume=False)
    f = tmp_path / "sh.0001.png"
    f.write_bytes(b"x")
    j.done(1, [f], "gpu-01", 1.0)
    j.close()
    fresh = Journal.open(path, _header(out, digest="e" * 64), resume=False)
    fresh.close()
    assert read_journal(path).done_frames() == {}
    rotated = path.with_name(f"{path.stem}.prev.jsonl")
    assert read_journal(rotated).done_frames() == {1: [f]}


def test_resume_without_a_journal_starts_fresh(tmp_path):
    out = str(tmp_path / "sub" / "sh.####.png")
    j = Journal.open(journal_path(out), _header(out), resume=True)
    j.close()
    assert j.resumed == {}
    assert read_journal(journal_path(out)).header == _header(out)


def test_append_after_close_is_an_error(tmp_path):
    out = str(tmp_path / "sh.####.png")
    j = Journal.open(journal_path(out), _header(out), resume=False)
    j.close()
    with pytest.raises(ValueError, match="closed"):
        j.failed(1, "x")

"""Job state, frame tasks, batch events and the journal that makes a batch resumable.

Everything here is pure bookkeeping: no sockets, no threads. ``run.py`` drives it.

A frame task moves through a small state machine::

    QUEUED -> SUBMITTED -> RUNNING -> DONE
       ^          |           |
       +----------+-----------+        (a retry puts the task back in QUEUED)
    any live state -> FAILED | CANCELLED

The journal is a JSON-lines file beside the outputs
(``<output folder>/.<pattern stem>.comfy-journal.jsonl``): one header record, then one record
per event that matters for resuming (submitted, done, failed, retried). Each record is
appended and flushed at once, and a ``done`` record is fsynced, so a client killed mid-batch
loses at most the frame it was writing. The reader ignores a torn last line.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Iterable, Mapping, TextIO

from .errors import ComfyClusterError
from .frames import FramePattern

log = logging.getLogger(__name__)

JOURNAL_VERSION = 1


class JobState(str, Enum):
    """Where a job or a frame is. String values, so they read well in the journal and JSON."""

    QUEUED = "queued"
    SUBMITTED = "submitted"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in _FINAL


_FINAL = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})

#: Allowed moves. SUBMITTED/RUNNING -> QUEUED is a retry on another backend.
TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.SUBMITTED, JobState.FAILED, JobState.CANCELLED}),
    JobState.SUBMITTED: frozenset({JobState.RUNNING, JobState.DONE, JobState.QUEUED, JobState.FAILED,
                                   JobState.CANCELLED}),
    JobState.RUNNING: frozenset({JobState.DONE, JobState.QUEUED, JobState.FAILED, JobState.CANCELLED}),
    JobState.DONE: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


def transition(current: JobState, new: JobState) -> JobState:
    """Return ``new`` if the move is allowed, else raise ``ValueError`` (a bug, not a user error).

    >>> transition(JobState.QUEUED, JobState.SUBMITTED)
    <JobState.SUBMITTED: 'submitted'>
    """
    if new not in TRANSITIONS[current]:
        raise ValueError(f"invalid job state transition {current.value} -> {new.value}")
    return new


@dataclass
class Attempt:
    """One try of a frame on one backend. ``reason`` says why it did not count, if it did not."""

    number: int
    backend: str
    prompt_id: str
    started: float
    ended: float | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.number, "backend": self.backend, "prompt_id": self.prompt_id,
                "started": self.started, "ended": self.ended, "reason": self.reason}


@dataclass
class FrameTask:
    """The unit of dispatch: one prompt that renders ``frames`` (one frame, or a chunk).

    ``key`` is the first frame; events, the journal and results are keyed by frame.
    """

    frames: tuple[int, ...]
    state: JobState = JobState.QUEUED
    attempts: list[Attempt] = field(default_factory=list)
    outputs: dict[int, list[Path]] = field(default_factory=dict)
    error: ComfyClusterError | None = None
    pending_reason: str | None = None  # why the task went back to QUEUED, for the "retried" event

    @property
    def key(self) -> int:
        return self.frames[0]

    @property
    def label(self) -> str:
        if len(self.frames) == 1:
            return f"frame {self.frames[0]}"
        return f"frames {self.frames[0]}-{self.frames[-1]}"

    def set_state(self, new: JobState) -> None:
        self.state = transition(self.state, new)

    def start_attempt(self, backend: str, prompt_id: str, now: float) -> Attempt:
        attempt = Attempt(number=len(self.attempts) + 1, backend=backend, prompt_id=prompt_id, started=now)
        self.attempts.append(attempt)
        self.set_state(JobState.SUBMITTED)
        return attempt

    def failed_backends(self) -> frozenset[str]:
        """Backends that already failed this task (a candidate set to exclude on retry)."""
        return frozenset(a.backend for a in self.attempts if a.reason is not None)

    @property
    def last_backend(self) -> str | None:
        return self.attempts[-1].backend if self.attempts else None

    @property
    def reasons(self) -> list[str]:
        return [f"{a.backend}: {a.reason}" for a in self.attempts if a.reason]


@dataclass(frozen=True)
class BatchEvent:
    """What a UI hears about a batch. Delivered on worker threads, never on the caller's thread.

    kinds and ``data``: queued {}, submitted {server, prompt_id, attempt}, started {server},
    progress {value, max, node, server}, completed {outputs: [str], server, seconds},
    retried {from, to, reason}, failed {error}, cancelled {}.
    """

    kind: str
    frame: int | None
    data: dict[str, Any]
    time: float


# --------------------------------------------------------------------------- journal


def journal_path(output: str | os.PathLike[str]) -> Path:
    """The journal file of a batch writing ``output`` (a pattern or a folder).

    >>> journal_path("/renders/sh010_comfy.####.png").as_posix()
    '/renders/.sh010_comfy.comfy-journal.jsonl'
    """
    out = Path(output)
    pattern = FramePattern.parse(out.name)
    # drop the frame token and the extension: "sh010_comfy.####.png" -> "sh010_comfy"
    stem = Path(pattern.prefix + pattern.suffix).stem
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._- ") or "batch"
    return out.parent / f".{stem}.comfy-journal.jsonl"


@dataclass(frozen=True)
class JournalHeader:
    """The first record: which batch, which workflow, which frames, where to."""

    batch_id: str
    workflow_digest: str
    frames: str
    output: str
    created: float
    version: int = JOURNAL_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {"type": "header", "version": self.version, "batch_id": self.batch_id,
                "workflow_digest": self.workflow_digest, "frames": self.frames,
                "output": self.output, "created": self.created}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> JournalHeader:
        return cls(batch_id=str(d["batch_id"]), workflow_digest=str(d["workflow_digest"]),
                   frames=str(d.get("frames", "")), output=str(d["output"]),
                   created=float(d.get("created", 0.0)), version=int(d.get("version", JOURNAL_VERSION)))


@dataclass
class JournalContents:
    """A journal as read back: the header and the records after it, in order."""

    header: JournalHeader | None
    records: list[dict[str, Any]]

    def done_frames(self) -> dict[int, list[Path]]:
        """Frames with a ``done`` record, and their files (the last ``done`` record wins)."""
        done: dict[int, list[Path]] = {}
        for rec in self.records:
            if rec.get("type") == "done":
                done[int(rec["frame"])] = [Path(p) for p in rec.get("files", [])]
        return done


def read_journal(path: Path) -> JournalContents:
    """Read a journal, tolerating a torn or garbled line (a client killed mid-write)."""
    header: JournalHeader | None = None
    records: list[dict[str, Any]] = []
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                rec = json.loads(raw)
            except ValueError:
                log.warning("journal %s: ignoring unreadable line %d", path, number)
                continue
            if not isinstance(rec, dict):
                continue
            if rec.get("type") == "header":
                try:
                    header = JournalHeader.from_dict(rec)
                except (KeyError, TypeError, ValueError):
                    log.warning("journal %s: ignoring a malformed header on line %d", path, number)
                continue
            records.append(rec)
    return JournalContents(header=header, records=records)


class Journal:
    """An append-only JSON-lines log of one batch. Appends are thread-safe."""

    def __init__(self, path: Path, header: JournalHeader, *, done: Mapping[int, list[Path]] | None = None) -> None:
        self.path = path
        self.header = header
        #: frames already done (and present on disk) when the batch started
        self.resumed: dict[int, list[Path]] = dict(done or {})
        self._fh: TextIO | None = None
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path, header: JournalHeader, *, resume: bool) -> Journal:
        """Open the journal for a batch.

        ``resume=True``: keep an existing journal if it belongs to the same workflow and
        output pattern (else refuse, saying why), and report the frames that are done and
        still on disk. ``resume=False``: an existing journal is rotated aside and a fresh
        one begins.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        done: dict[int, list[Path]] = {}
        if path.exists():
            if resume:
                old = read_journal(path)
                if old.header is not None:
                    _check_same_batch(path, old.header, header)
                    header = JournalHeader(batch_id=old.header.batch_id, workflow_digest=header.workflow_digest,
                                           frames=header.frames, output=header.output, created=old.header.created)
                done = {frame: files for frame, files in old.done_frames().items()
                        if files and all(f.is_file() for f in files)}
                journal = cls(path, header, done=done)
                journal._fh = open(path, "a", encoding="utf-8")
                if old.header is None:
                    journal.append(header.to_dict())
                log.info("journal %s: resuming, %d frame(s) already done", path, len(done))
                return journal
            rotated = path.with_name(f"{path.stem}.prev.jsonl")  # one generation back is enough to inspect
            os.replace(path, rotated)
            log.info("journal %s: previous journal moved to %s", path, rotated.name)
        journal = cls(path, header)
        journal._fh = open(path, "a", encoding="utf-8")
        journal.append(header.to_dict(), sync=True)
        return journal

    def append(self, record: Mapping[str, Any], *, sync: bool = False) -> None:
        """Write one record as one line and flush it; fsync when ``sync`` (done records)."""
        line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
        with self._lock:
            if self._fh is None:
                raise ValueError(f"journal {self.path} is closed")
            self._fh.write(line)
            self._fh.flush()
            if sync:
                os.fsync(self._fh.fileno())

    def submitted(self, frame: int, attempt: int, backend: str, prompt_id: str) -> None:
        self.append({"type": "submitted", "frame": frame, "attempt": attempt, "backend": backend,
                     "prompt_id": prompt_id, "time": time.time()})

    def done(self, frame: int, files: Iterable[Path], backend: str, seconds: float) -> None:
        self.append({"type": "done", "frame": frame, "files": [str(f) for f in files], "backend": backend,
                     "seconds": round(seconds, 3), "time": time.time()}, sync=True)

    def failed(self, frame: int, error: str) -> None:
        self.append({"type": "failed", "frame": frame, "error": error, "time": time.time()})

    def retried(self, frame: int, backend: str, reason: str) -> None:
        self.append({"type": "retried", "frame": frame, "from": backend, "reason": reason, "time": time.time()})

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


def _check_same_batch(path: Path, old: JournalHeader, new: JournalHeader) -> None:
    if old.output != new.output:
        raise ComfyClusterError(
            f"cannot resume: journal {path} was written for output {old.output!r}, not {new.output!r}; "
            "render without --resume to start again")
    if old.workflow_digest != new.workflow_digest:
        raise ComfyClusterError(
            f"cannot resume: journal {path} belongs to a different workflow or different values "
            f"(digest {old.workflow_digest[:12]} vs {new.workflow_digest[:12]}); render without --resume to start again")

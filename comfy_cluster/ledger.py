"""The RunPod cost ledger: one JSON line per finished job, in the user's state directory.

Why a file and not memory: the daily budget must hold across restarts of Nuke and of the
CLI, and across two processes rendering at once. Lines are appended with ``O_APPEND`` in a
single ``write``, so two processes never interleave inside a line; a reader skips a torn
last line (a crash mid-write) instead of failing.

An entry holds no secret: endpoint id, job id, prompt id, batch id, label, billed
``execution_ms``, queue ``delay_ms``, the cost and the final RunPod status.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Iterator, Mapping

log = logging.getLogger(__name__)

LEDGER_FILE = "runpod-ledger.jsonl"


def state_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """Where comfy-cluster keeps per-user state (ledger, admin lock).

    ``$COMFY_CLUSTER_STATE_DIR``, else ``%LOCALAPPDATA%\\comfy-cluster`` on Windows, else
    ``$XDG_STATE_HOME/comfy-cluster``, else ``~/.local/state/comfy-cluster``.
    """
    explicit = environ.get("COMFY_CLUSTER_STATE_DIR", "").strip()
    if explicit:
        return Path(explicit).expanduser()
    if sys.platform == "win32" and environ.get("LOCALAPPDATA"):
        return Path(environ["LOCALAPPDATA"]) / "comfy-cluster"
    xdg = environ.get("XDG_STATE_HOME", "").strip()
    if xdg:
        return Path(xdg) / "comfy-cluster"
    return Path.home() / ".local" / "state" / "comfy-cluster"


@dataclass(frozen=True)
class LedgerEntry:
    """One billed RunPod job."""

    time: float               # wall time (epoch seconds) when the job finished
    endpoint: str
    job_id: str
    prompt_id: str
    batch: str
    label: str
    execution_ms: int         # billed
    delay_ms: int             # queue and cold start, shown apart, not billed
    cost: float
    status: str

    @property
    def day(self) -> date:
        """The local calendar day the job finished on."""
        return datetime.fromtimestamp(self.time).date()

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> LedgerEntry:
        return cls(
            time=float(data["time"]),  # type: ignore[arg-type]
            endpoint=str(data.get("endpoint", "")),
            job_id=str(data.get("job_id", "")),
            prompt_id=str(data.get("prompt_id", "")),
            batch=str(data.get("batch", "")),
            label=str(data.get("label", "")),
            execution_ms=int(data.get("execution_ms", 0) or 0),  # type: ignore[call-overload]
            delay_ms=int(data.get("delay_ms", 0) or 0),  # type: ignore[call-overload]
            cost=float(data.get("cost", 0.0) or 0.0),  # type: ignore[arg-type]
            status=str(data.get("status", "")),
        )


class CostLedger:
    """Append-only JSON-lines ledger of RunPod spend, safe across threads and processes."""

    def __init__(self, directory: Path | str | None = None, *, environ: Mapping[str, str] = os.environ,
                 clock=time.time) -> None:
        self.directory = Path(directory) if directory is not None else state_dir(environ)
        self.path = self.directory / LEDGER_FILE
        self._clock = clock
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"CostLedger({str(self.directory)!r})"

    def record(self, *, endpoint: str, job_id: str, prompt_id: str = "", batch: str = "", label: str = "",
               execution_ms: int = 0, delay_ms: int = 0, cost: float = 0.0, status: str = "COMPLETED",
               when: float | None = None) -> LedgerEntry:
        """Append one entry; one ``write`` on an ``O_APPEND`` descriptor, so lines never interleave."""
        entry = LedgerEntry(time=self._clock() if when is None else when, endpoint=endpoint, job_id=job_id,
                            prompt_id=prompt_id, batch=batch, label=label, execution_ms=int(execution_ms),
                            delay_ms=int(delay_ms), cost=float(cost), status=status)
        line = (json.dumps(entry.to_dict(), separators=(",", ":"), sort_keys=True) + "\n").encode("utf-8")
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                if os.fstat(fd).st_size and not self._ends_with_newline():
                    # A torn line from a crash: start ours on a fresh line so it stays readable.
                    line = b"\n" + line
                os.write(fd, line)
            finally:
                os.close(fd)
        log.debug("ledger: job %s on %s cost $%.4f (%d ms billed, %d ms queued)",
                  job_id, endpoint, entry.cost, entry.execution_ms, entry.delay_ms)
        return entry

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) == b"\n"

    def entries(self) -> list[LedgerEntry]:
        """Every readable entry, oldest first; torn or foreign lines are skipped."""
        return list(self._iter())

    def _iter(self) -> Iterator[LedgerEntry]:
        try:
            with open(self.path, "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:
            return
        for number, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                yield LedgerEntry.from_dict(json.loads(line))
            except (ValueError, KeyError, TypeError):
                log.debug("ledger %s: skipping unreadable line %d", self.path, number)

    def spend_today(self, now: float | None = None) -> float:
        """Dollars spent on jobs that finished on today's local date."""
        today = datetime.fromtimestamp(self._clock() if now is None else now).date()
        return sum(e.cost for e in self._iter() if e.day == today)

    def spend_for_batch(self, batch_id: str) -> float:
        return sum(e.cost for e in self._iter() if e.batch == batch_id)

    def average_per_job(self) -> float | None:
        """Mean cost of a billed job, or None before the first one."""
        costs = [e.cost for e in self._iter()]
        return sum(costs) / len(costs) if costs else None


@dataclass(frozen=True)
class CostReport:
    """What the CLI and the panel show about RunPod spend."""

    today: float
    jobs_today: int
    total: float
    jobs: int
    average_per_job: float | None
    delay_ms_average: float | None
    by_batch: dict[str, float]
    daily_budget: float | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def __str__(self) -> str:
        budget = f" of ${self.daily_budget:.2f}" if self.daily_budget is not None else ""
        lines = [f"RunPod spend today: ${self.today:.4f}{budget} ({self.jobs_today} job(s))",
                 f"all time: ${self.total:.4f} over {self.jobs} job(s)"]
        if self.average_per_job is not None:
            delay = "" if self.delay_ms_average is None else (
                f" (queue/cold start {self.delay_ms_average / 1000:.1f} s on average, not billed)")
            lines.append(f"average per job: ${self.average_per_job:.4f}{delay}")
        lines.extend(f"  batch {name or '(none)'}: ${cost:.4f}" for name, cost in sorted(self.by_batch.items()))
        return "\n".join(lines)


def cost_report(ledger: CostLedger, *, now: float | None = None, daily_budget: float | None = None) -> CostReport:
    """Today's spend, spend per batch and average per job, read from the ledger in one pass."""
    entries = ledger.entries()
    today = datetime.fromtimestamp(time.time() if now is None else now).date()
    todays = [e for e in entries if e.day == today]
    by_batch: dict[str, float] = {}
    for e in entries:
        by_batch[e.batch] = by_batch.get(e.batch, 0.0) + e.cost
    return CostReport(
        today=sum(e.cost for e in todays),
        jobs_today=len(todays),
        total=sum(e.cost for e in entries),
        jobs=len(entries),
        average_per_job=(sum(e.cost for e in entries) / len(entries)) if entries else None,
        delay_ms_average=(sum(e.delay_ms for e in entries) / len(entries)) if entries else None,
        by_batch=by_batch,
        daily_budget=daily_budget,
    )

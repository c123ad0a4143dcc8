"""The RunPod cost ledger: persistent, per-day, per-batch, safe across threads and processes."""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from comfy_cluster.ledger import LEDGER_FILE, CostLedger, cost_report, state_dir


def _record(ledger: CostLedger, job: str, cost: float, *, batch: str = "shot010_comp_v003",
            when: float | None = None) -> None:
    ledger.record(endpoint="ep-nuke", job_id=job, prompt_id=f"p-{job}", batch=batch, label=f"frame {job}",
                  execution_ms=int(cost * 1000), delay_ms=1500, cost=cost, when=when)


def test_spend_survives_a_restart(tmp_path: Path) -> None:
    first = CostLedger(tmp_path)
    _record(first, "1001", 0.25)
    _record(first, "1002", 0.5)
    again = CostLedger(tmp_path)   # a new process would build exactly this
    assert again.spend_today() == pytest.approx(0.75)
    assert [e.job_id for e in again.entries()] == ["1001", "1002"]
    assert again.entries()[0].delay_ms == 1500


def test_spend_today_counts_only_the_local_day(tmp_path: Path) -> None:
    ledger = CostLedger(tmp_path)
    yesterday = (datetime.now() - timedelta(days=1)).timestamp()
    _record(ledger, "old", 3.0, when=yesterday)
    _record(ledger, "new", 0.4)
    assert ledger.spend_today() == pytest.approx(0.4)
    assert ledger.spend_today(now=yesterday) == pytest.approx(3.0)


def test_spend_per_batch_and_average(tmp_path: Path) -> None:
    ledger = CostLedger(tmp_path)
    assert ledger.average_per_job() is None
    _record(ledger, "a", 0.2, batch="sh010")
    _record(ledger, "b", 0.4, batch="sh010")
    _record(ledger, "c", 0.9, batch="sh020")
    assert ledger.spend_for_batch("sh010") == pytest.approx(0.6)
    assert ledger.spend_for_batch("sh020") == pytest.approx(0.9)
    assert ledger.spend_for_batch("sh999") == 0
    assert ledger.average_per_job() == pytest.approx(0.5)


def test_torn_last_line_is_skipped_and_the_next_entry_stays_readable(tmp_path: Path) -> None:
    ledger = CostLedger(tmp_path)
    _record(ledger, "1", 0.1)
    with open(tmp_path / LEDGER_FILE, "ab") as fh:
        fh.write(b'{"time": 17, "cost": 0.3, "job_i')      # a crash mid-write
    assert [e.job_id for e in ledger.entries()] == ["1"]
    _record(ledger, "2", 0.2)
    assert [e.job_id for e in CostLedger(tmp_path).entries()] == ["1", "2"]
    assert ledger.spend_today() == pytest.approx(0.3)


def test_threads_append_without_losing_or_tearing_lines(tmp_path: Path) -> None:
    ledger = CostLedger(tmp_path)

    def writer(n: int) -> None:
        for i in range(50):
            _record(ledger, f"{n}-{i}", 0.01)
    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = (tmp_path / LEDGER_FILE).read_text().splitlines()
    assert len(lines) == 400
    assert all(json.loads(line)["cost"] == 0.01 for line in lines)
    assert len({e.job_id for e in ledger.entries()}) == 400


def _append_from_process(directory: str, tag: str) -> None:
    ledger = CostLedger(directory)
    for i in range(100):
        _record(ledger, f"{tag}-{i}", 0.001, batch="x" * 2000)   # long lines: a torn write would show


def test_two_processes_append_to_one_ledger(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_from_process, args=(str(tmp_path), tag)) for tag in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    entries = CostLedger(tmp_path).entries()
    assert len(entries) == 200
    lines = [line for line in (tmp_path / LEDGER_FILE).read_text().splitlines() if line.strip()]
    assert len(lines) == 200 and all(json.loads(line)["batch"] == "x" * 2000 for line in lines)


def test_state_dir_resolution() -> None:
    assert state_dir({"COMFY_CLUSTER_STATE_DIR": "/studio/state"}) == Path("/studio/state")
    assert state_dir({"XDG_STATE_HOME": "/home/ana/.state"}) == Path("/home/ana/.state/comfy-cluster")
    assert state_dir({"COMFY_CLUSTER_STATE_DIR": "/a", "XDG_STATE_HOME": "/b"}) == Path("/a")
    assert state_dir({}).parts[-3:] == (".local", "state", "comfy-cluster")


def test_ledger_defaults_to_the_state_dir(tmp_path: Path) -> None:
    ledger = CostLedger(environ={"COMFY_CLUSTER_STATE_DIR": str(tmp_path / "st")})
    _record(ledger, "1", 0.1)
    assert (tmp_path / "st" / LEDGER_FILE).exists()


def test_cost_report(tmp_path: Path) -> None:
    ledger = CostLedger(tmp_path)
    _record(ledger, "a", 0.25, batch="sh010")
    _record(ledger, "b", 0.75, batch="sh020")
    _record(ledger, "old", 2.0, batch="sh020", when=time.time() - 3 * 86400)
    report = cost_report(ledger, daily_budget=5.0)
    assert report.today == pytest.approx(1.0)
    assert report.jobs_today == 2
    assert report.total == pytest.approx(3.0)
    assert report.by_batch == pytest.approx({"sh010": 0.25, "sh020": 2.75})
    assert report.average_per_job == pytest.approx(1.0)
    assert report.delay_ms_average == 1500
    text = str(report)
    assert "$1.0000 of $5.00" in text and "batch sh020: $2.7500" in text and "1.5 s" in text
    assert json.loads(json.dumps(report.to_dict()))["jobs"] == 3

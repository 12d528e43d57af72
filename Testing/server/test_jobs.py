"""Job runner pieces in-process: CUDA OOM reporting, throttled progress, the job table's one-at-a-time rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from activeseg.jobs import worker as jobs_worker
from activeseg.store.datastore import Datastore
from activeseg.jobs.runner import JobConflictError, JobTable, read_log_tail

from .support import make_store


@pytest.fixture()
def store(tmp_path: Path) -> Datastore:
    return Datastore(make_store(tmp_path, count=5)[0])


def test_cuda_out_of_memory_fails_the_job_clearly(store: Datastore, monkeypatch: pytest.MonkeyPatch) -> None:
    import activeseg.pipeline.training_round

    def out_of_memory(*_: Any, **__: Any) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(activeseg.pipeline.training_round, "train_round", out_of_memory)
    table = JobTable(store.meta_dir)
    job = table.create("train", {})
    assert jobs_worker.execute(store.root, job.job_id) == "failed"
    record = table.get(job.job_id)
    assert record.status == "failed" and record.finished is not None
    assert record.error.startswith("CUDA out of memory") and "batch_size" in record.error


def test_engine_error_text_becomes_the_job_error(store: Datastore) -> None:
    table = JobTable(store.meta_dir)
    job = table.create("rank", {"write_pseudo": True})
    assert jobs_worker.execute(store.root, job.job_id) == "failed"
    assert "no model yet" in table.get(job.job_id).error


def test_one_job_at_a_time_and_finish_is_first_writer_wins(store: Datastore) -> None:
    table = JobTable(store.meta_dir)
    job = table.create("train", {})
    with pytest.raises(JobConflictError):
        table.create("rank", {})
    assert table.finish(job.job_id, "cancelled")
    assert not table.finish(job.job_id, "succeeded")
    assert table.get(job.job_id).status == "cancelled"
    assert not table.update_progress(job.job_id, {"phase": "train"})
    table.create("rank", {})  # the slot is free again
    assert [j.kind for j in table.list()] == ["rank", "train"]


class _CountingTable:
    def __init__(self) -> None:
        self.writes: list[dict[str, Any]] = []

    def update_progress(self, job_id: str, progress: dict[str, Any]) -> bool:
        self.writes.append(dict(progress))
        return True


def test_progress_is_throttled_but_phase_changes_are_written() -> None:
    table = _CountingTable()
    reporter = jobs_worker.ProgressReporter(table, "x", min_interval_s=10.0)  # type: ignore[arg-type]
    for step in range(1, 201):
        assert reporter({"phase": "train", "epoch": 1, "epochs": 1, "step": step, "steps": 200, "loss": 1.0 / step})
    reporter({"phase": "validate", "epoch": 1, "epochs": 1, "val_dice": 0.5})
    assert len(table.writes) == 2
    assert table.writes[0]["phase"] == "train" and {k: table.writes[1][k] for k in (
        "phase", "epoch", "epochs", "val_dice", "history")} == {
        "phase": "validate", "epoch": 1, "epochs": 1, "val_dice": 0.5,
        "history": [{"epoch": 1, "loss": None, "val_dice": 0.5}],  # the live curve so far
    }
    # the whole job's estimate rides along (issue 14 item 2)
    assert 0.0 < table.writes[1]["fraction"] < 1.0 and table.writes[1]["phase_label"] == "training"
    reporter.request_cancel()
    assert reporter({"phase": "validate"}) is False


def test_log_tail(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    path.write_text("".join(f"line {n}\n" for n in range(1000)))
    assert read_log_tail(path, 3) == ["line 997", "line 998", "line 999"]
    assert read_log_tail(tmp_path / "missing.log", 3) == []

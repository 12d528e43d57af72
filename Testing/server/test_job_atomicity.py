"""A job's effects commit together with its status, or not at all (issue 12, item 13).

The worker is SIGKILLed at the critical point: its work is done (weights trained, rankings computed, files
written) but its outcome is not yet recorded. Before the fix the store already showed the new active model,
the new queue, scores and pseudo-labels, and the previous queue's predictions were deleted, while the job read
``failed``. Now the job is failed and the store is exactly as before the job; recovery removes its files.
The pause uses the worker's crash-test hook (``$ACTIVESEG_TEST_PAUSE_BEFORE_COMMIT``), inherited from the
server's environment.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from activeseg.io.volumes import read_volume
from activeseg.jobs import worker as jobs_worker
from activeseg.jobs.runner import JobRecord, JobTable
from activeseg.pipeline.ranking_round import rank_round
from activeseg.pipeline.training_round import train_round
from activeseg.store.datastore import Datastore

from .support import ServerProcess, label_path, make_store, tiny_config, wait_for_job
from .test_crash import _worker_pids


def _ranked_store(tmp_path: Path) -> Datastore:
    """A store with model v1 active and its ranking (queue, scores, predictions, pseudo-labels) committed."""
    config = tiny_config()
    config.training.keep_better_parent = False  # every round registers: a kill must keep the new one invisible
    store_root, source = make_store(tmp_path, count=8, config=config)
    store = Datastore(store_root)
    for case_id in ("phantom_000", "phantom_001", "phantom_002"):
        store.submit_label(case_id, read_volume(label_path(source, case_id)), annotator="a")
    assert train_round(store).version == 1
    assert rank_round(store).strong, "the first ranking queued nothing; the test would prove nothing"
    return store


def _visible_state(store: Datastore) -> dict[str, Any]:
    """What users and later rounds see of the store's model, queue, scores and pseudo-labels."""
    return {
        "models": [m.version for m in store.models()],
        "active": store.active_version(),
        "queue_model": store.queue_model(),
        "queue": sorted(record.case_id for record, _ in store.queue()),
        "scores": {v: sorted(store.scores(v)) for v in (1, 2, 3)},
        "pseudo": {c.case_id: (c.pseudo_path, c.pseudo_model) for c in store.cases() if c.pseudo_path is not None},
    }


def _assert_queue_files_intact(store: Datastore) -> None:
    """Every queued training case has its prediction by the queue's model; every pseudo-label file exists."""
    version = store.queue_model()
    assert version is not None
    queued = [record for record, _ in store.queue() if record.split == "train"]
    assert queued
    for record in queued:
        assert store.prediction_path(record.case_id, version).is_file(), f"prediction of queued {record.case_id} gone"
    for case in store.cases():
        if case.pseudo_path is not None:
            assert case.pseudo_path.is_file(), f"pseudo-label of {case.case_id} gone"


def _assert_no_orphans(store: Datastore, recover: bool = True) -> None:
    """Only files the database references are left in models/, predictions/ and pseudo/ (after ``recover()``)."""
    if recover:
        store.recover()
    models_dir = store.meta_dir / "models"
    assert {p.name for p in models_dir.iterdir()} == {m.folder.name for m in store.models()}
    version = store.queue_model()
    queued = {record.case_id for record, _ in store.queue() if record.split == "train"}
    expected = {store.prediction_path(case_id, version).name for case_id in queued} if version is not None else set()
    assert {p.name for p in (store.meta_dir / "predictions").iterdir()} == expected
    referenced = {c.pseudo_path.name for c in store.cases() if c.pseudo_path is not None}
    assert {p.name for p in (store.meta_dir / "pseudo").iterdir()} == referenced


def _kill_job_at_commit(store: Datastore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, route: str,
                        body: dict[str, Any]) -> dict[str, Any]:
    """Start a job over HTTP with the pause hook on, SIGKILL its worker at the pause; return the job's JSON."""
    marker = tmp_path / "paused.pid"
    monkeypatch.setenv(jobs_worker.PAUSE_BEFORE_COMMIT_ENV, str(marker))
    with ServerProcess(store.root) as server, server.client() as client:
        started = client.post(route, json=body)
        assert started.status_code == 202, started.text
        job_id = started.json()["job_id"]
        deadline = time.monotonic() + 300
        while not marker.exists() and time.monotonic() < deadline:
            job = client.get(f"/v1/jobs/{job_id}").json()
            assert job["status"] == "running", job
            time.sleep(0.2)
        time.sleep(0.2)  # the pid is written before the pause; let the write finish
        pid = int(marker.read_text())
        assert pid in _worker_pids(job_id)
        os.kill(pid, signal.SIGKILL)
        job = wait_for_job(client, job_id, timeout=60)
        # The store as the running server shows it, before any recovery.
        models = client.get("/v1/models").json()
    assert job["status"] == "failed", job
    assert models["active"] == store.active_version()
    return job


def test_training_job_killed_before_commit_leaves_the_previous_model_and_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A train-then-rank job: neither its model nor its ranking becomes visible."""
    store = _ranked_store(tmp_path)
    before = _visible_state(store)
    _kill_job_at_commit(store, tmp_path, monkeypatch, "/v1/jobs/train", {"then_rank": True})
    after = _visible_state(store)
    assert after == before, "a failed job changed the store"
    assert store.active_version() == 1 and [m.version for m in store.models()] == [1]
    _assert_queue_files_intact(store)
    _assert_no_orphans(store, recover=False)  # the server removed the dead worker's files when it noticed
    # The store goes on: the next round registers and activates v2 as if the killed job had never run.
    monkeypatch.delenv(jobs_worker.PAUSE_BEFORE_COMMIT_ENV)
    assert train_round(store).version == 2 and store.active_version() == 2


def test_ranking_job_killed_before_commit_keeps_the_previous_queue_and_its_predictions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = _ranked_store(tmp_path)
    assert train_round(store).version == 2  # a new active model whose ranking will be killed
    before = _visible_state(store)
    assert before["queue_model"] == 1
    _kill_job_at_commit(store, tmp_path, monkeypatch, "/v1/jobs/rank", {"write_pseudo": True})
    assert _visible_state(store) == before, "a failed ranking changed the queue, scores or pseudo-labels"
    _assert_queue_files_intact(store)
    _assert_no_orphans(store, recover=False)
    store.recover()
    _assert_queue_files_intact(store)
    # A ranking after recovery commits as usual.
    monkeypatch.delenv(jobs_worker.PAUSE_BEFORE_COMMIT_ENV)
    result = rank_round(store)
    assert store.queue_model() == 2 and store.scores(2)
    for case_id in result.strong:
        assert store.prediction_path(case_id, 2).is_file()
    _assert_no_orphans(store)


def _one_label_and_a_train_job(tmp_path: Path) -> tuple[Datastore, JobTable, JobRecord]:
    """A store with one expert label and a created (not started) training job: (store, job table, job record)."""
    store_root, source = make_store(tmp_path, count=5, config=tiny_config())
    store = Datastore(store_root)
    store.submit_label("phantom_000", read_volume(label_path(source, "phantom_000")), annotator="a")
    table = JobTable(store.meta_dir)
    return store, table, table.create("train", {})


def test_a_job_finished_by_another_process_commits_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server (or the worker's watchdog) records the job interrupted just before the worker commits: the first
    writer wins, so the new model is not registered either."""
    store, table, job = _one_label_and_a_train_job(tmp_path)

    def server_interrupts() -> None:
        assert table.finish(job.job_id, "interrupted", error="interrupted: the server stopped")

    monkeypatch.setattr(jobs_worker, "_before_commit", server_interrupts)
    assert jobs_worker.execute(store.root, job.job_id) == "interrupted"
    assert table.get(job.job_id).status == "interrupted"
    assert store.models() == [] and store.active_version() is None
    assert list((store.meta_dir / "models").iterdir()) == []


def test_a_job_reads_done_only_once_it_has_committed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: the worker wrote progress "done" (fraction 1.0) and then committed, so a client polling in between saw
    a running job at 100 % (the module's loop test caught it under load), and a commit that then failed (disk full)
    had shown 100 % first. Now the final progress is written in the commit's transaction, with the status."""
    store, table, job = _one_label_and_a_train_job(tmp_path)
    seen_before_commit: list[tuple[str, dict]] = []

    def poll_as_a_client() -> None:
        record = table.get(job.job_id)
        seen_before_commit.append((record.status, dict(record.progress)))

    monkeypatch.setattr(jobs_worker, "_before_commit", poll_as_a_client)
    assert jobs_worker.execute(store.root, job.job_id) == "succeeded"
    [(status, progress)] = seen_before_commit
    assert status == "running"
    assert progress.get("phase") != "done" and progress["fraction"] < 1.0, progress
    final = table.get(job.job_id)
    assert final.status == "succeeded"
    assert final.progress["phase"] == "done" and final.progress["fraction"] == 1.0 and final.progress["eta_s"] == 0.0

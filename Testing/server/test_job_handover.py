"""One worker at a time, also during a job hand-over (issue 14 item 9).

A worker records its outcome and then takes seconds to exit (a CUDA process tears down its context); the
server used to start the next job's worker as soon as the outcome was recorded, so two workers coexisted for
2-3 s and held twice the GPU memory. The test hook ``$ACTIVESEG_TEST_LINGER_AFTER_OUTCOME_S`` makes that
teardown last 3 s; a sampler thread watches ``/proc`` for the store's worker processes and records each one's
lifetime (a zombie, already exited, has an empty command line and no longer counts).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from activeseg.jobs.runner import JobRunner, JobTable
from activeseg.jobs.worker import LINGER_AFTER_OUTCOME_ENV
from activeseg.store.datastore import Datastore

from .support import ServerProcess, label_path, make_store, tiny_config, wait_for_job


@dataclass
class Lifetime:
    pid: int
    first_seen: float
    last_seen: float


class WorkerSampler:
    """Polls ``/proc`` every 10 ms for live worker processes of one datastore; their lifetimes, by pid."""

    def __init__(self, store: Path) -> None:
        self.marker = str(store).encode()
        self.lifetimes: dict[int, Lifetime] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def live(self) -> set[int]:
        pids = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"activeseg.jobs.worker" in cmdline and self.marker in cmdline:
                pids.add(int(entry.name))
        return pids

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            for pid in self.live():
                record = self.lifetimes.setdefault(pid, Lifetime(pid, now, now))
                record.last_seen = now
            time.sleep(0.01)

    def __enter__(self) -> WorkerSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def wait_until_none(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.live():
            assert time.monotonic() < deadline, f"workers still alive after {timeout} s: {self.live()}"
            time.sleep(0.05)


def test_a_rank_job_right_after_a_train_job_never_runs_beside_its_worker(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LINGER_AFTER_OUTCOME_ENV, "3")
    store_root, source = make_store(tmp_path, count=6, config=tiny_config())
    server = ServerProcess(store_root).start()
    try:
        with WorkerSampler(store_root) as sampler, server.client() as client:
            for case_id in ("phantom_000", "phantom_001", "phantom_002"):
                response = client.put(f"/v1/cases/{case_id}/label", params={"annotator": "a"},
                                      content=label_path(source, case_id).read_bytes())
                assert response.status_code == 200, response.text
            train = client.post("/v1/jobs/train")
            assert train.status_code == 202, train.text
            assert wait_for_job(client, train.json()["job_id"])["status"] == "succeeded"
            rank = client.post("/v1/jobs/rank")  # at once: the train worker is still tearing down
            assert rank.status_code == 202, rank.text
            assert wait_for_job(client, rank.json()["job_id"])["status"] == "succeeded"
            sampler.wait_until_none(timeout=30)
    finally:
        server.stop()
    lifetimes = sorted(sampler.lifetimes.values(), key=lambda record: record.first_seen)
    assert len(lifetimes) == 2, lifetimes
    first, second = lifetimes
    assert first.last_seen < second.first_seen, f"two workers at once: {first} and {second}"


def test_a_worker_that_does_not_exit_after_its_outcome_is_killed_before_the_next_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The wait is bounded: a worker still alive after ``handover_wait_s`` is killed (its outcome is kept)."""
    monkeypatch.setenv(LINGER_AFTER_OUTCOME_ENV, "120")
    store_root, _ = make_store(tmp_path, count=4, config=tiny_config())
    store = Datastore(store_root)
    table = JobTable(store.meta_dir)
    runner = JobRunner(store.root, table, handover_wait_s=1.0)
    with WorkerSampler(store_root) as sampler:
        try:
            first = runner.start("rank", {})  # no model yet: it fails at once, then lingers
            deadline = time.monotonic() + 120
            while table.get(first.job_id).status == "running":
                assert time.monotonic() < deadline, "the first job never ended"
                time.sleep(0.1)
            assert first.pid in sampler.live()
            started = time.monotonic()
            second = runner.start("rank", {})
            assert time.monotonic() - started < 10
            assert first.pid not in sampler.live() and second.pid != first.pid
            assert table.get(first.job_id).status == "failed"  # killed after its outcome: the outcome stays
            # let the sampler see the second worker before shutdown kills it (it polls every 10 ms; a loaded machine
            # scheduled the kill first once)
            deadline = time.monotonic() + 30
            while second.pid not in sampler.lifetimes:
                assert time.monotonic() < deadline, "the second worker was never seen"
                time.sleep(0.01)
        finally:
            runner.shutdown()
        sampler.wait_until_none(timeout=30)
    lifetimes = sorted(sampler.lifetimes.values(), key=lambda record: record.first_seen)
    assert len(lifetimes) == 2 and lifetimes[0].last_seen < lifetimes[1].first_seen, lifetimes

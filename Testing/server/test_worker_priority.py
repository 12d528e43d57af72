"""A job worker runs below the server's CPU priority, with a core left for it (issue 12 item 15).

The worker is its own session (so a cancel reaches its whole process group); with Linux autogroups the scheduler
shares the CPU between sessions first, so the worker's old ``os.nice(5)`` did not lower it against the server at
all. These tests read the real worker process's nice and autogroup values from ``/proc`` and its log line. The
test hook ``$ACTIVESEG_TEST_LINGER_AFTER_OUTCOME_S`` keeps the worker alive after a job that fails at once (a
rank job without a model), so no training is needed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from activeseg.jobs.priority import BACKGROUND_NICE, PRIORITY_ENV, run_in_background, usable_cores
from activeseg.jobs.runner import JobRecord, JobRunner, JobTable
from activeseg.jobs.worker import LINGER_AFTER_OUTCOME_ENV
from activeseg.store.datastore import Datastore

from .support import make_store, tiny_config

AUTOGROUP = Path("/proc/self/autogroup")


def _nice_of(pid: int) -> int:
    """Field 19 of /proc/PID/stat (after the parenthesised command name)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[16])


def _autogroup_nice_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/autogroup").read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        return None


def _lingering_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threads: int = 0) -> Iterator[tuple[JobRecord, JobTable]]:
    monkeypatch.setenv(LINGER_AFTER_OUTCOME_ENV, "60")
    config = tiny_config()
    config.training.num_threads = threads
    store_root, _ = make_store(tmp_path, count=3, config=config)
    table = JobTable(Datastore(store_root).meta_dir)
    runner = JobRunner(store_root, table)
    try:
        job = runner.start("rank", {})  # no model: fails at once, then lingers with its priority set
        deadline = time.monotonic() + 120
        while table.get(job.job_id).status == "running":
            assert time.monotonic() < deadline, "the job never ended"
            time.sleep(0.1)
        yield table.get(job.job_id), table
    finally:
        runner.shutdown()


@pytest.fixture()
def background_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[JobRecord, JobTable]]:
    monkeypatch.delenv(PRIORITY_ENV, raising=False)
    yield from _lingering_worker(tmp_path, monkeypatch)


def test_worker_runs_below_the_server_in_its_own_autogroup_too(background_worker: tuple[JobRecord, JobTable]) -> None:
    job, table = background_worker
    assert job.pid is not None
    assert _nice_of(job.pid) >= BACKGROUND_NICE
    own_group = _autogroup_nice_of(os.getpid())
    if own_group is not None:  # a kernel with autogroups: the worker's session must be below this one
        assert _autogroup_nice_of(job.pid) is not None
        assert _autogroup_nice_of(job.pid) >= BACKGROUND_NICE > own_group
    log = table.log_path(job.job_id).read_text()
    expected_threads = max(1, usable_cores() - 1)
    assert f"worker priority background: nice {_nice_of(job.pid)}" in log
    assert f"torch threads {expected_threads} of {usable_cores()} core(s)" in log


def test_configured_threads_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PRIORITY_ENV, raising=False)
    for _, table in _lingering_worker(tmp_path, monkeypatch, threads=3):
        job = table.list(limit=1)[0]
        assert "torch threads as configured" in table.log_path(job.job_id).read_text()


def test_normal_priority_leaves_the_worker_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PRIORITY_ENV, "normal")
    for job, table in _lingering_worker(tmp_path, monkeypatch):
        assert job.pid is not None and _nice_of(job.pid) == os.nice(0)
        assert "worker priority normal" in table.log_path(job.job_id).read_text()


def test_unwritable_autogroup_still_lowers_the_process(tmp_path: Path) -> None:
    """A container whose /proc cannot be written: the autogroup stays, the process nice value is still raised and
    the call does not fail (run in a forked child: it changes the calling process for good)."""
    fake = tmp_path / "autogroup"
    fake.write_text("/autogroup-1 nice 0\n")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        try:
            def refuse(*_: object, **__: object) -> int:
                raise PermissionError("read-only /proc")

            Path.write_text = refuse  # type: ignore[method-assign]  # the child only
            result = run_in_background(configured_threads=1, autogroup=fake)
            ok = result.nice >= BACKGROUND_NICE and result.autogroup_nice == 0 and result.torch_threads is None
            os._exit(0 if ok else 1)
        except BaseException:  # noqa: BLE001
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0

"""Data-parallel training rounds end to end: ``activeseg train --nproc 2`` (gloo, 2 CPU processes under torchrun),
a cancel that every rank obeys, and a job whose worker is cancelled or killed leaves no rank running.

Each test launches real torchrun ranks (~15 s of start-up on 2 shared cores), hence ``slow``; the exactness of a
data-parallel step is tested in ``test_distributed_alnt.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from activeseg.config import apply_overrides
from activeseg.errors import TrainingCancelled
from activeseg.io.volumes import read_volume
from activeseg.jobs.runner import JobRunner, JobTable
from activeseg.pipeline.distributed import launch_command, train_distributed, _typed_error, DistributedTrainingError
from activeseg.pipeline.ranking_round import rank_round
from activeseg.pipeline.training_round import train_round
from activeseg.store.datastore import Datastore

from ..tiny import image_pairs, tiny_config
from activeseg.experiments.phantoms import write_phantom_dataset

pytestmark = [pytest.mark.timeout(300)]


def _rank_processes(store_root: Path) -> list[int]:
    """Pids of this store's ranks and torchrun agent (from /proc command lines)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if str(store_root).encode() in cmdline and (b"activeseg.pipeline.distributed" in cmdline or b"torch.distributed.run" in cmdline):
            pids.append(int(entry.name))
    return pids


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _autogroup_nice(pid: int) -> int | None:
    """The autogroup nice value of ``pid``'s session, or None without autogroups."""
    try:
        return int(Path(f"/proc/{pid}/autogroup").read_text().split()[-1])
    except (OSError, ValueError):
        return None


def _wait_until_gone(store_root: Path, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while _rank_processes(store_root) and time.monotonic() < deadline:
        time.sleep(0.2)
    return _rank_processes(store_root)


@pytest.fixture(autouse=True)
def _no_stray_ranks(tmp_path: Path):
    """Whatever a test asserts, its ranks and torchrun agent are killed (by pid) before the next test."""
    yield
    for pid in _rank_processes(tmp_path / "store"):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _store(tmp_path: Path, labelled: int = 4, overrides: tuple[str, ...] = ()) -> tuple[Datastore, Path]:
    source = tmp_path / "phantoms"
    write_phantom_dataset(source, 10, seed=3, shape=(16, 32, 32))
    config = apply_overrides(tiny_config(), list(overrides))
    store, _ = Datastore.create(tmp_path / "store", image_pairs(source), config, seed=1)
    train_ids = [c.case_id for c in store.cases(split="train")][:labelled]
    for case_id in [c.case_id for c in store.cases(split="val")] + train_ids:
        store.submit_label(case_id, read_volume(source / "labelsTr" / f"{case_id}.nii.gz", dtype=np.uint8), no_finding=True)
    return store, source


@pytest.mark.slow
def test_train_nproc_2_runs_alnt_under_ddp_and_registers_rank_0s_model(tmp_path: Path) -> None:
    store, _ = _store(tmp_path, overrides=("training.keep_better_parent=false",))
    train_round(store)  # round 1 in one process, then a ranking writes pseudo-labels
    ranked = rank_round(store)
    assert ranked.weak, "the tiny model pseudo-labels at least one case"
    result = subprocess.run([sys.executable, "-m", "activeseg", "train", "--data", str(store.root), "--quiet", "--nproc", "2"],
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rank 1 of 2 (gloo)" in result.stdout, result.stdout
    assert "registered model v2" in result.stderr, result.stderr
    store = Datastore(store.root)
    assert store.active_version() == 2
    metrics = store.model(2).metrics
    assert metrics["processes"] == 2 and metrics["round"] == 2
    assert metrics["n_pseudo"] == len(ranked.weak)
    assert metrics["alnt"]["sum_weight"] >= 0, "ALNT statistics: the pseudo-labelled crops were re-weighted under DDP"
    assert (store.meta_dir / "plan.json").is_file()
    assert not list(store.meta_dir.glob(".tmp-ddp-*")), "the run folder is removed"
    assert _wait_until_gone(store.root, 10) == []


@pytest.mark.slow
def test_a_cancel_stops_every_rank_and_registers_nothing(tmp_path: Path) -> None:
    """Through a site launcher template (a shell command): the same ranks, the same cancel."""
    launcher = "OMP_NUM_THREADS=1 {python} -m torch.distributed.run --standalone --nproc-per-node={nproc} {entry}"
    store, _ = _store(tmp_path, overrides=("training.steps_per_epoch=400", f"training.launcher={launcher}"))
    events: list[dict] = []

    def progress(event: dict) -> bool:
        events.append(event)
        return not (event.get("phase") == "train" and event.get("step", 0) >= 3)

    with pytest.raises(TrainingCancelled):
        train_distributed(store, 2, progress)
    steps = [e["step"] for e in events if e.get("phase") == "train"]
    assert 3 <= max(steps) < 400, "the ranks stopped soon after rank 0's report asked them to"
    assert store.models() == []
    assert not list(store.meta_dir.glob(".tmp-ddp-*"))
    assert _wait_until_gone(store.root, 10) == []


@pytest.mark.slow
def test_ranks_started_by_hand_register_the_model_themselves(tmp_path: Path) -> None:
    """README's torchrun command (what each node runs): without an owner, rank 0 registers the round's model."""
    store, _ = _store(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
                             "activeseg.pipeline.distributed", str(store.root)], capture_output=True, text=True,
                            timeout=240, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "registered model v1" in result.stdout
    store = Datastore(store.root)
    assert store.active_version() == 1 and store.model(1).metrics["processes"] == 2


def _start_long_job(tmp_path: Path) -> tuple[Datastore, JobRunner, str]:
    store, _ = _store(tmp_path, overrides=("training.steps_per_epoch=2000", "training.processes=2"))
    runner = JobRunner(store.root, JobTable(store.meta_dir), kill_grace_s=5.0)
    job = runner.start("train", {})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        current = runner.table.get(job.job_id)
        assert current.status == "running", current
        if current.progress.get("phase") == "train" and len(_rank_processes(store.root)) >= 3:
            break
        time.sleep(0.3)
    else:
        pytest.fail(f"the ranks did not start training: {runner.table.get(job.job_id)}")
    return store, runner, job.job_id


@pytest.mark.slow
def test_cancelling_a_job_ends_its_worker_torchrun_and_every_rank(tmp_path: Path) -> None:
    store, runner, job_id = _start_long_job(tmp_path)
    for pid in _rank_processes(store.root):  # ranks run in torchrun's new sessions, below the server like the worker
        assert os.getpriority(os.PRIO_PROCESS, pid) >= 10, pid
        groups = _autogroup_nice(pid)
        assert groups is None or groups >= 10 or "torch.distributed.run" in _cmdline(pid), (pid, groups)
    runner.cancel(job_id)
    deadline = time.monotonic() + 60
    while runner.table.get(job_id).status == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert runner.table.get(job_id).status == "cancelled"
    assert _wait_until_gone(store.root, 15) == [], "a rank outlived its cancelled job"
    assert store.models() == []


@pytest.mark.slow
def test_killing_the_workers_process_group_kills_every_rank(tmp_path: Path) -> None:
    """The runner's SIGKILL after the grace period, or a crash: torchrun's ranks live in their own sessions, and die
    with their agent (PR_SET_PDEATHSIG) and their owner."""
    store, runner, job_id = _start_long_job(tmp_path)
    worker = runner.table.get(job_id).pid
    assert worker
    os.killpg(worker, signal.SIGKILL)
    assert _wait_until_gone(store.root, 15) == [], "a rank outlived its killed worker"
    deadline = time.monotonic() + 30
    while runner.table.get(job_id).status == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert runner.table.get(job_id).status == "failed"
    assert store.models() == []


def test_launcher_template_and_default_command(tmp_path: Path) -> None:
    config = tiny_config()
    default = launch_command(config, 3, tmp_path / "store", tmp_path / "run")
    assert default[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=3"]
    assert default[-4:] == ["-m", "activeseg.pipeline.distributed", str(tmp_path / "store"), str(tmp_path / "run")]
    config.training.launcher = "srun --ntasks-per-node=1 ${SITE_PY:-{python}} -m torch.distributed.run --nproc-per-node {nproc} {entry}"
    command = launch_command(config, 4, Path("/data/my store"), Path("/data/my store/run"))
    assert command[:2] == ["/bin/sh", "-c"]
    assert "--nproc-per-node 4 -m activeseg.pipeline.distributed '/data/my store' '/data/my store/run'" in command[2]
    assert "${SITE_PY:-" in command[2], "shell variables survive the template"
    with pytest.raises(Exception, match="entry"):
        apply_overrides(tiny_config(), ["training.launcher=srun torchrun"])


def test_rank_0s_typed_error_is_raised_again_in_the_owner() -> None:
    from activeseg.errors import CaseStateError

    assert isinstance(_typed_error("CaseStateError", "no expert labels"), CaseStateError)
    other = _typed_error("RuntimeError", "boom")
    assert isinstance(other, DistributedTrainingError) and "boom" in str(other)

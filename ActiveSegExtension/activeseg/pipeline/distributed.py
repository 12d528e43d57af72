"""Data-parallel training rounds: one owner process launches the ranks with torchrun and registers rank 0's outcome.

``training.processes`` (or ``activeseg train --nproc N``, or a job's ``processes``) above 1 runs a round on N
processes with :class:`torch.nn.parallel.DistributedDataParallel` (NCCL on GPUs, gloo on the CPU). The process that
asked for the round (the job's worker, or the ``activeseg train`` command) stays its owner:

1. it makes a run folder ``STORE/.activeseg/.tmp-ddp-*`` (removed afterwards; a left-over one goes with the next
   recovery) and starts ``python -m torch.distributed.run --standalone --nproc-per-node N -m
   activeseg.pipeline.distributed STORE RUN`` (or the site's ``training.launcher``) in its own process group;
2. every rank runs :func:`activeseg.pipeline.training_round.run_round` with its
   :class:`~activeseg.model.distributed.DataParallel`; rank 0 prepares the cases, validates, selects the epoch,
   compares with the parent and reports progress as JSON lines in ``RUN/progress.jsonl``;
3. the owner relays those events to its progress callback; when that asks to cancel it creates ``RUN/cancel``,
   which rank 0's next report sees, and every rank stops at its next step (one all-reduce carries the flag);
4. rank 0 writes its outcome (``RUN/outcome.json``, and ``RUN/model.pt`` when it trained weights to register);
   the owner registers them on its own commit exactly as a one-process round would, so a job's effects still
   commit with its status, in the owner.

Every rank dies with its owner: torchrun starts ranks in their own sessions (a signal to the owner's process group
reaches the torchrun agent, which stops them), each rank asks the kernel for SIGKILL when the agent dies
(:func:`activeseg.model.distributed.die_with_parent`), and a rank on the owner's host also watches the owner's pid
(``$ACTIVESEG_DDP_OWNER``), so a killed owner or agent (cancel after its grace, a crashed server) leaves no rank
behind.

A ranking (:func:`rank`: ``activeseg rank --nproc N``, a rank job, a train job's ``then_rank``) uses the same
launch with ``--score WEIGHTS VERSION``: the ranks share the passes
(:func:`activeseg.pipeline.sharded_ranking.score_shared`), rank 0 writes the gathered scores to ``outcome.json``, and
the owner routes, writes and commits them with the one-process code.

A site launcher (``training.launcher``) is a shell command template: ``{entry}`` becomes what torchrun must run
(``-m activeseg.pipeline.distributed STORE RUN``), ``{nproc}`` the process count and ``{python}`` this interpreter;
the ranks need the datastore folder at the same path (a shared file system). See README "Several GPUs and nodes".
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from activeseg.config import Config
from activeseg.errors import ActiveSegError, ConfigError, TrainingCancelled
from activeseg.io.atomic import TEMP_MARKER, atomic_write
from activeseg.pipeline import training_round
from activeseg.pipeline.training_round import (
    ProgressCallback, RoundResult, TrainedRound, finish_round, register_weights, run_round,
)
from activeseg.method.dsal import CaseScore
from activeseg.pipeline.ranking_round import RankResult
from activeseg.store.datastore import Datastore, ModelRecord, StoreCommit

_T = TypeVar("_T")

__all__ = ["DistributedTrainingError", "ENTRY_MODULE", "launch_command", "rank", "train", "train_distributed", "main"]

logger = logging.getLogger(__name__)

ENTRY_MODULE = "activeseg.pipeline.distributed"
#: ``host:pid`` of the owner; a rank on that host exits when the pid is gone.
OWNER_ENV = "ACTIVESEG_DDP_OWNER"
_POLL_S = 0.2
#: Seconds the owner waits for the ranks to stop after asking them to cancel, before it terminates torchrun.
CANCEL_GRACE_S = 30.0
_OWNER_CHECK_S = 1.0


class DistributedTrainingError(ActiveSegError):
    """The training processes failed (a rank crashed, or the launcher could not start them)."""

    code = "distributed_training_failed"
    http_status = 500


def train(store: Datastore, progress: ProgressCallback | None = None, commit: StoreCommit | None = None,
          processes: int | None = None) -> RoundResult:
    """One training round on ``processes`` (default ``training.processes``): in this process when 1, else
    :func:`train_distributed`."""
    if processes is not None and processes < 1:
        raise ConfigError(f"the number of training processes must be >= 1, got {processes}")
    count = int(processes or store.config.training.processes)
    if count <= 1:
        return training_round.train_round(store, progress, commit=commit)
    return train_distributed(store, count, progress, commit)


def launch_command(config: Config, processes: int, store_root: Path, run_dir: Path,
                   extra: tuple[str, ...] = ()) -> list[str]:
    """The command that starts the ranks: torchrun on this machine, or the site's ``training.launcher``.

    Args:
        extra: arguments after ``STORE RUN`` (``--score WEIGHTS VERSION`` for a ranking's passes).

    Returns:
        An argument list; a launcher template runs through ``/bin/sh -c`` (so it may use shell variables) with
        ``{entry}``, ``{nproc}`` and ``{python}`` replaced by shell-quoted values.
    """
    entry = ["-m", ENTRY_MODULE, str(store_root), str(run_dir), *extra]
    template = config.training.launcher.strip()
    if not template:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", *entry]
    text = (template.replace("{entry}", " ".join(shlex.quote(part) for part in entry))
            .replace("{nproc}", str(processes)).replace("{python}", shlex.quote(sys.executable)))
    return ["/bin/sh", "-c", text]


def _check_devices(config: Config, processes: int) -> None:
    """torchrun on this machine with CUDA needs a GPU per process."""
    if config.training.launcher.strip():
        return
    import torch

    from activeseg.model.distributed import backend_for

    if backend_for(config.training.device) == "nccl" and torch.cuda.device_count() < processes:
        raise ConfigError(f"training.processes={processes} but this machine has {torch.cuda.device_count()} GPU(s): "
                          "use at most one process per GPU, or training.device=cpu")


def train_distributed(store: Datastore, processes: int, progress: ProgressCallback | None = None,
                      commit: StoreCommit | None = None) -> RoundResult:
    """Run one round on ``processes`` ranks (module docstring) and register rank 0's outcome like
    :func:`~activeseg.pipeline.training_round.train_round` (same ``commit`` semantics and result).

    ``progress`` receives rank 0's events; returning False (or a ``cancelled`` attribute turning true, as the job
    worker's reporter does on SIGTERM) cancels the round on every rank.

    Raises:
        TrainingCancelled: cancelled (nothing registered).
        DistributedTrainingError: a rank failed or the processes ended without an outcome.
        ConfigError: more processes than GPUs.
        ActiveSegError: rank 0's own typed error (e.g. CaseStateError: no expert labels), raised again here.
    """
    return _run_ranks(store, processes, progress, (),
                      lambda run_dir, code, cancelled: _register_outcome(store, run_dir, code, cancelled, commit))


def rank(store: Datastore, progress: ProgressCallback | None = None, write_pseudo: bool = True,
         commit: StoreCommit | None = None, model: ModelRecord | None = None, processes: int | None = None) -> RankResult:
    """A ranking round (:func:`~activeseg.pipeline.ranking_round.rank_round`, same arguments) whose passes run on
    ``processes`` ranks (default ``training.processes``; 1: in this process).

    The ranks share the candidates without stored scores (:func:`activeseg.pipeline.sharded_ranking.score_shared`)
    and rank 0 hands the scores to this owner, which routes, writes and commits with the one-process code (running
    a pass only for the cases it routes to the queue or a pseudo-label, for their label maps).

    Raises:
        ModelVersionError: no model yet. TrainingCancelled: cancelled. DistributedTrainingError: a rank failed.
    """
    from activeseg.pipeline.ranking_round import _model_or_active, rank_round

    if processes is not None and processes < 1:
        raise ConfigError(f"the number of processes must be >= 1, got {processes}")
    count = int(processes or store.config.training.processes)
    if count <= 1:
        return rank_round(store, progress, write_pseudo, commit, model)
    record = _model_or_active(store, model)

    def finish(run_dir: Path, code: int, cancelled: bool) -> RankResult:
        outcome = _read_outcome(run_dir, code, cancelled, "scoring")
        scores = {case_id: CaseScore(case_id, float(values[0]), float(values[1]), int(values[2]))
                  for case_id, values in outcome["scores"].items()}
        result = rank_round(store, progress, write_pseudo, commit, record, precomputed=scores)
        result.inferred += len(scores)
        return result

    started = time.perf_counter()
    result = _run_ranks(store, count, progress, ("--score", str(record.weights_path), str(record.version)), finish)
    result.seconds = time.perf_counter() - started
    return result


def _run_ranks(store: Datastore, processes: int, progress: ProgressCallback | None, extra: tuple[str, ...],
               finish: Callable[[Path, int, bool], _T]) -> _T:
    """Start the ranks in a fresh run folder, relay their progress until they exit, then ``finish(run folder, exit
    code, cancel asked)``; the run folder is removed afterwards."""
    _check_devices(store.config, processes)
    run_dir = Path(tempfile.mkdtemp(prefix=f"{TEMP_MARKER}ddp-", dir=store.meta_dir))
    try:
        command = launch_command(store.config, processes, store.root, run_dir, extra)
        logger.info("running on %d processes: %s", processes, shlex.join(command))
        env = dict(os.environ, **{OWNER_ENV: f"{socket.gethostname()}:{os.getpid()}"})
        started = time.perf_counter()
        try:
            # Same process group as this owner: the job runner's signal to the worker's group reaches torchrun.
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, env=env)
        except OSError as exc:
            raise DistributedTrainingError(f"could not start the data-parallel processes ({command[0]}): {exc}") from exc
        code, cancelled = _supervise(process, run_dir, progress)
        logger.info("data-parallel processes ended (exit code %d) after %.1f s", code, time.perf_counter() - started)
        return finish(run_dir, code, cancelled)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


class _EventReader:
    """New complete JSON lines of rank 0's progress file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self.offset += end
        return [json.loads(line) for line in data[:end].splitlines() if line.strip()]


def _supervise(process: subprocess.Popen[bytes], run_dir: Path, progress: ProgressCallback | None) -> tuple[int, bool]:
    """Relay rank 0's events until the processes exit; pass a cancel on. Returns (exit code, cancel asked)."""
    reader, cancel_file = _EventReader(run_dir / "progress.jsonl"), run_dir / "cancel"
    cancelled_at: float | None = None
    try:
        while True:
            code = process.poll()
            asked = bool(getattr(progress, "cancelled", False))
            for event in reader.read():
                if progress is not None and progress(event) is False:
                    asked = True
            if asked and cancelled_at is None:
                logger.info("cancelling the training processes")
                cancel_file.touch()
                cancelled_at = time.monotonic()
            if code is not None:
                return code, cancelled_at is not None
            if cancelled_at is not None and time.monotonic() - cancelled_at > CANCEL_GRACE_S:
                logger.warning("the training processes did not stop %.0f s after the cancel; terminating them",
                               CANCEL_GRACE_S)
                process.terminate()  # torchrun's agent stops its ranks on SIGTERM
                cancelled_at = float("inf")
            time.sleep(_POLL_S)
    except BaseException:  # KeyboardInterrupt, or an error relaying: the ranks must not outlive this owner
        _stop(process)
        raise


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate torchrun (it stops its ranks); kill it after a grace period."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10.0)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _read_outcome(run_dir: Path, code: int, cancelled: bool, what: str) -> dict[str, Any]:
    """Rank 0's outcome file; raises its cancel or its (typed) error, or an error when there is none."""
    try:
        outcome = json.loads((run_dir / "outcome.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        outcome = None
    if outcome is None:
        if cancelled:
            raise TrainingCancelled(f"{what} cancelled")
        raise DistributedTrainingError(
            f"the {what} processes ended (exit code {code}) before rank 0 reported an outcome; see the log")
    status = outcome.get("status")
    if status == "cancelled":
        raise TrainingCancelled(f"{what} cancelled")
    if status == "failed":
        raise _typed_error(outcome.get("type", ""), outcome.get("error") or "rank 0 failed")
    if code != 0:
        logger.warning("rank 0 finished but the processes exited with code %d; using its outcome", code)
    return outcome


def _register_outcome(store: Datastore, run_dir: Path, code: int, cancelled: bool, commit: StoreCommit | None) -> RoundResult:
    """Turn rank 0's outcome file into the round's result (registering its weights) or its error."""
    outcome = _read_outcome(run_dir, code, cancelled, "training")
    status = outcome.get("status")
    metrics, parent = outcome["metrics"], outcome.get("parent")
    if status == "kept_parent" and parent is not None:
        return RoundResult(store.model(int(parent)), metrics, registered=False)
    return register_weights(store, run_dir / "model.pt", metrics, parent, outcome.get("plan_record"), commit)


def _typed_error(name: str, message: str) -> ActiveSegError:
    """Rank 0's exception again in the owner: the same class when it is one of :mod:`activeseg.errors`."""
    errors = importlib.import_module("activeseg.errors")
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, ActiveSegError):
        return cls(message)
    return DistributedTrainingError(f"rank 0 failed: {name}: {message}" if name else message)


# ---------------------------------------------------------------------------------------------- the ranks' side


class _FileProgress:
    """Rank 0's progress callback: one JSON line per event; False once the owner created the cancel file."""

    def __init__(self, run_dir: Path) -> None:
        self.cancel_file = run_dir / "cancel"
        self.handle = open(run_dir / "progress.jsonl", "a", encoding="utf-8")  # noqa: SIM115 - closed in main

    def __call__(self, event: dict[str, Any]) -> bool:
        self.handle.write(json.dumps(event, default=str) + "\n")
        self.handle.flush()
        return not self.cancel_file.exists()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, lambda temp: temp.write_text(json.dumps(data, default=str)))


def _write_outcome(run_dir: Path, trained: TrainedRound, config: Config) -> None:
    from activeseg.model.predictor import save_checkpoint

    status = "kept_parent" if trained.kept_parent else "trained"
    if not trained.kept_parent:
        save_checkpoint(trained.model, trained.plan, config.num_classes, config.network.dropout, run_dir / "model.pt")
    _write_json(run_dir / "outcome.json", {
        "status": status, "metrics": json.loads(json.dumps(trained.metrics, default=str)), "parent": trained.parent,
        "plan_record": trained.plan_record,
    })


def _watch_owner() -> None:
    """Exit when the owner named in ``$ACTIVESEG_DDP_OWNER`` is gone (only on the owner's host)."""
    host, _, pid_text = os.environ.get(OWNER_ENV, "").rpartition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return
    pid = int(pid_text)

    def watch() -> None:
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                logger.error("the owner process (pid %d) is gone; this rank stops", pid)
                os._exit(3)
            except PermissionError:
                pass
            time.sleep(_OWNER_CHECK_S)

    threading.Thread(target=watch, name="owner-watch", daemon=True).start()


def _background_like_the_worker(configured_threads: int) -> None:
    """A rank of a server's job runs below the server as its worker does (:mod:`activeseg.jobs.priority`).

    The nice value is inherited, but torchrun starts each rank in a new session, whose Linux autogroup starts at
    nice 0 and would compete with the server as an equal. Torch's threads are left as torchrun or the settings
    chose (one per rank unless ``training.num_threads`` says otherwise).
    """
    from activeseg.jobs.worker import SERVER_PID_ENV

    if SERVER_PID_ENV not in os.environ:  # not a job of a server (activeseg train, or ranks started by hand)
        return
    from activeseg.jobs.priority import run_in_background

    logger.info("%s", run_in_background(max(1, configured_threads)).describe())


def main(argv: list[str] | None = None) -> int:
    """One rank: ``python -m activeseg.pipeline.distributed STORE [RUN]``, started by torchrun.

    With ``RUN`` (the owner's run folder) rank 0 hands its outcome to the owner (module docstring). Without it, the
    ranks were started by hand (``torchrun ... -m activeseg.pipeline.distributed STORE``, e.g. on several nodes) and
    rank 0 registers the round's model itself, as ``activeseg train`` does, and logs what the round did.
    """
    args = sys.argv[1:] if argv is None else argv
    score: tuple[Path, int] | None = None
    if len(args) == 5 and args[2] == "--score":  # a ranking's passes with the model VERSION in file WEIGHTS
        score, args = (Path(args[3]), int(args[4])), args[:2]
    if len(args) not in (1, 2):
        sys.stderr.write("usage: torchrun [torchrun options] -m activeseg.pipeline.distributed STORE [RUN "
                         "[--score WEIGHTS VERSION]]\n")
        return 2
    from activeseg.model.distributed import die_with_parent, initialise

    die_with_parent()
    _watch_owner()
    rank = os.environ.get("RANK", "?")
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format=f"%(asctime)s rank {rank} %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C / torchrun's stop ends a rank at once
    store_root, run_dir = Path(args[0]), (Path(args[1]) if len(args) == 2 else None)
    import torch.distributed as dist

    store = Datastore(store_root)
    _background_like_the_worker(store.config.training.num_threads)
    group = initialise(store.config.training.device, store.config.training.distributed_timeout_s)
    progress = _FileProgress(run_dir) if group.is_main and run_dir is not None else None
    status = 0
    try:
        if score is not None and run_dir is not None:
            from activeseg.pipeline.sharded_ranking import score_shared

            shared = score_shared(store, group, score[0], score[1], progress)
            if shared is not None:
                _write_json(run_dir / "outcome.json", {"status": "scored", "passes_by_rank": shared[1], "scores": {
                    cid: [s.mdsc, s.confidence, s.foreground_voxels] for cid, s in shared[0].items()}})
            return 0
        trained = run_round(store, progress, group=group)
        if trained is not None and run_dir is not None:
            _write_outcome(run_dir, trained, store.config)
        elif trained is not None:
            logger.info("%s", finish_round(store, trained).message)
    except TrainingCancelled:
        logger.info("cancelled")
        if group.is_main and run_dir is not None:
            _write_json(run_dir / "outcome.json", {"status": "cancelled"})
    except Exception as exc:  # noqa: BLE001 - rank 0's error becomes the job's; every rank exits non-zero
        logger.error("training failed: %s\n%s", exc, traceback.format_exc())
        if group.is_main and run_dir is not None:
            _write_json(run_dir / "outcome.json", {"status": "failed", "type": type(exc).__name__, "error": str(exc)})
        status = 1
    finally:
        if progress is not None:
            progress.handle.close()
        if status == 0:
            dist.destroy_process_group()
    return status


if __name__ == "__main__":
    raise SystemExit(main())

"""The child process of one job: ``python -m activeseg.jobs.worker STORE JOBID``.

It runs the job's kind (train, rank, pseudo-label) against the datastore, writes throttled progress into the
job's row and logs into its stdout (the server points that at ``.activeseg/jobs/<job_id>.log``), then records
the outcome. SIGTERM asks it to stop at the next progress report (the engine raises TrainingCancelled and
writes nothing half-done); the server follows with SIGKILL if it does not. A job's effects (a new active model,
a ranking's queue, scores, pseudo-labels and predictions) are staged on one
:class:`~activeseg.store.commit.StoreCommit` and committed in the transaction that marks the job succeeded, so
a job that is killed, fails, or was recorded interrupted first changes nothing visible. It dies with its server: a
watchdog thread compares its parent with the server pid the runner passed (``$ACTIVESEG_SERVER_PID``) every
0.2 s from the start, and when they differ it marks the job interrupted and kills its own process group
(the datastore is crash-safe, so a kill at any point loses nothing acknowledged). So a crashed server leaves
no worker holding the GPU or committing a model nobody asked for any more.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sqlite3
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from activeseg.store.datastore import TRAINED_STATES, Datastore, StoreCommit
from activeseg.errors import ActiveSegError, TrainingCancelled
from activeseg.jobs.priority import run_in_background
from activeseg.jobs.progress import JobPlan, ProgressModel
from activeseg.jobs.runner import JobTable

__all__ = ["ProgressReporter", "execute", "main"]

logger = logging.getLogger("activeseg.jobs.worker")

_MIN_WRITE_INTERVAL_S = 0.5  # at most 2 database writes per second
_HEARTBEAT_S = 2.0  # a phase without events (a long validation or comparison) still refreshes fraction and ETA
_WATCHDOG_INTERVAL_S = 0.2
SERVER_PID_ENV = "ACTIVESEG_SERVER_PID"
# Crash-test hook: a file path; the worker writes its pid there and waits to be killed once the job's work is
# done but before its outcome commits (the one point where a kill used to split job status from store state).
PAUSE_BEFORE_COMMIT_ENV = "ACTIVESEG_TEST_PAUSE_BEFORE_COMMIT"
# Test hook: seconds the worker stays alive after recording its outcome, as a CUDA process takes seconds to tear
# down (the server must not start the next job's worker until this one has exited).
LINGER_AFTER_OUTCOME_ENV = "ACTIVESEG_TEST_LINGER_AFTER_OUTCOME_S"


def server_pid() -> int:
    """The pid of the server that started this worker (``$ACTIVESEG_SERVER_PID``), else the current parent."""
    value = os.environ.get(SERVER_PID_ENV, "")
    return int(value) if value.isdigit() else os.getppid()


def orphaned(expected_parent: int) -> bool:
    """Whether the server died: this process's parent is no longer ``expected_parent``."""
    return os.getppid() != expected_parent


def _before_commit() -> None:
    """The crash-test hook of :data:`PAUSE_BEFORE_COMMIT_ENV` (does nothing unless that variable is set)."""
    marker = os.environ.get(PAUSE_BEFORE_COMMIT_ENV)
    if not marker:
        return
    logger.warning("test hook: pausing before the commit (pid %d written to %s)", os.getpid(), marker)
    Path(marker).write_text(str(os.getpid()))
    while True:
        time.sleep(3600)


def start_watchdog(table: JobTable, job_id: str, expected_parent: int) -> threading.Thread:
    """A daemon thread that ends this worker's process group as soon as its server is gone.

    Before the kill it records the job as interrupted (first writer wins, so a restarted server's recovery
    and this agree).
    """

    def watch() -> None:
        while not orphaned(expected_parent):
            time.sleep(_WATCHDOG_INTERVAL_S)
        logger.error("the server process (pid %d) ended; this worker stops now", expected_parent)
        try:
            table.finish(job_id, "interrupted", error="interrupted: the server stopped while this job was running")
        except Exception:  # noqa: BLE001 - the kill below matters more than the record
            pass
        try:
            if os.getpgrp() == os.getpid():  # its own group (the runner starts it so): data loaders die too
                os.killpg(os.getpgrp(), signal.SIGKILL)
        finally:
            os._exit(3)

    thread = threading.Thread(target=watch, name="server-watchdog", daemon=True)
    thread.start()
    return thread


class ProgressReporter:
    """The progress callback handed to the engine: throttled writes, cancellation by signal or orphaning.

    Every write carries the whole job's ``fraction``, ``eta_s`` and ``phase_label`` from a
    :class:`~activeseg.jobs.progress.ProgressModel` (the engine's own ``eta_s``, which covers its current phase
    only, is kept as ``phase_eta_s``).

    Args:
        table: the job table.
        job_id: this job.
        min_interval_s: least time between two progress writes (a phase change is always written).
        model: the job's progress model (default: one over the phases seen, with no history).
    """

    def __init__(self, table: JobTable, job_id: str, min_interval_s: float = _MIN_WRITE_INTERVAL_S,
                 model: ProgressModel | None = None) -> None:
        self.table = table
        self.job_id = job_id
        self.min_interval_s = min_interval_s
        self.model = model if model is not None else ProgressModel(JobPlan(phases=[]))
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self.latest: dict[str, Any] = {"phase": "starting"}
        self.cancelled = False
        self.orphaned = False
        self._parent = server_pid()
        self._last_write = 0.0
        self._last_epoch: tuple[Any, Any] | None = None
        # Per-epoch (epoch, loss, val_dice) of this job so far: clients draw a live loss/Dice curve from it.
        self.history: list[dict[str, Any]] = []

    def request_cancel(self, *_: Any) -> None:
        """Signal handler: stop at the next progress report."""
        self.cancelled = True

    def __call__(self, event: dict[str, Any]) -> bool:
        """Record ``event``; return False to ask the engine to stop."""
        with self._lock:
            return self._record(event)

    def _record(self, event: dict[str, Any]) -> bool:
        self.model.observe(event)
        event = dict(event)
        if "eta_s" in event:
            event["phase_eta_s"] = event.pop("eta_s")
        phase_changed = event.get("phase") != self.latest.get("phase")
        if phase_changed:
            self.latest = {}
        self.latest.update(event)
        epoch_key = (event.get("phase"), event.get("epoch"))
        if event.get("phase") == "validate" and not event.get("running") and epoch_key != self._last_epoch:
            logger.info(
                "epoch %s/%s: loss %.4f, validation Dice %s",
                event.get("epoch"), event.get("epochs"), float(event.get("loss") or 0.0), event.get("val_dice"),
            )
            self._last_epoch = epoch_key
            self.history.append({"epoch": event.get("epoch"), "loss": event.get("loss"), "val_dice": event.get("val_dice")})
        now = time.monotonic()
        if phase_changed or now - self._last_write >= self.min_interval_s:
            self.flush()
        if os.getppid() != self._parent:
            logger.error("the server process ended; stopping")
            self.cancelled = self.orphaned = True
        return not self.cancelled

    def snapshot(self) -> dict[str, Any]:
        """The progress row for the latest event: the event, the whole job's fraction and ETA, the epoch history."""
        with self._lock:
            snapshot = {**self.latest, **self.model.snapshot()}
            if self.history:
                snapshot["history"] = self.history
            return snapshot

    def done_snapshot(self) -> dict[str, Any]:
        """The final progress row of a job that succeeded (phase ``done``, fraction 1.0, ETA 0). Written only with
        the outcome (:func:`_commit_outcome`), never while the job still reads ``running``: a client must not see
        100 % before the commit, which can still fail."""
        with self._lock:
            self.latest = {"phase": "done"}
            self.model.observe({"phase": "done"})
            return {**self.snapshot(), "fraction": 1.0, "eta_s": 0.0}

    def flush(self) -> None:
        """Write the latest event now, with the whole job's fraction and ETA."""
        with self._lock:
            self._last_write = time.monotonic()
            if not self.table.update_progress(self.job_id, self.snapshot()):
                # The server marked the job interrupted or cancelled: stop working for nobody.
                self.cancelled = True

    def start_heartbeat(self, interval_s: float = _HEARTBEAT_S) -> threading.Thread:
        """Refresh the progress row at least every ``interval_s`` even when the engine reports nothing."""

        def beat() -> None:
            while not self._stop.wait(interval_s):
                if time.monotonic() - self._last_write >= interval_s:
                    try:
                        self.flush()
                    except Exception as exc:  # noqa: BLE001 - a missed refresh must not end the job
                        logger.debug("progress refresh failed: %s", exc)

        thread = threading.Thread(target=beat, name="progress-heartbeat", daemon=True)
        thread.start()
        return thread

    def stop_heartbeat(self) -> None:
        """End the refresh thread."""
        self._stop.set()


def job_plan(store: Datastore, kind: str, params: dict[str, Any]) -> JobPlan:
    """The phases and work counts of a job, as far as the datastore tells before it starts."""
    from activeseg.method.dsal import weak_quota
    from activeseg.pipeline.ranking_round import CANDIDATE_STATES

    cases = store.cases()
    validation = sum(1 for c in cases if c.split == "val" and c.state in TRAINED_STATES and c.label_path is not None)
    candidates = sum(1 for c in cases if c.split == "train" and c.state in CANDIDATE_STATES)
    dsal = store.config.dsal
    active = store.active_version()
    next_round = 1 if active is None else int(store.model(active).metrics.get("round", active)) + 1
    ranks = kind == "rank" or (kind == "train" and bool(params.get("then_rank")))
    quota = weak_quota(next_round if kind == "train" else next_round - 1, dsal) if params.get("write_pseudo", True) else 0
    phases = (["preprocess", "train", "compare_parent"] if kind == "train" else []) + (["rank", "write"] if ranks else [])
    if kind == "pseudo-label":
        phases = ["pseudo-label"]
    return JobPlan(
        phases=phases, validation_cases=validation, compare_parent=kind == "train" and active is not None and validation > 0,
        rank_cases=candidates, write_cases=min(candidates, dsal.strong_per_round + quota),
    )


def timing_history(table: JobTable, kind: str, limit: int = 20) -> dict[str, float]:
    """Seconds per unit measured by recent succeeded jobs (newest first wins per key)."""
    history: dict[str, float] = {}
    for job in table.list(limit):
        if job.status == "succeeded" and isinstance(job.result, dict) and isinstance(job.result.get("timing"), dict):
            for key, value in job.result["timing"].items():
                if isinstance(value, (int, float)):
                    history.setdefault(key, float(value))
    return history


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return value.name
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _rank_summary(result: Any) -> dict[str, Any]:
    return {
        "model_version": getattr(result, "model_version", None),
        "strong": list(getattr(result, "strong", [])),
        "weak": list(getattr(result, "weak", [])),
        "seconds": getattr(result, "seconds", None),
    }


def _run_kind(store: Datastore, kind: str, params: dict[str, Any], progress: ProgressReporter,
              commit: StoreCommit) -> dict[str, Any]:
    """Run one job kind, staging its effects on ``commit``; return its JSON result. Engine modules are imported here
    (torch loads in the child only)."""
    if kind == "train":
        from activeseg.pipeline.distributed import train

        # training.processes (or the job's "processes") > 1: torchrun ranks, this worker their owner (their
        # progress relayed here, their outcome committed here; see activeseg.pipeline.distributed).
        outcome = train(store, progress, commit=commit, processes=params.get("processes"))
        # "registered": False when the new weights lost to the active model on validation: no version was added,
        # and "message" says so (the module shows it instead of a bare "succeeded").
        result: dict[str, Any] = {
            "model_version": outcome.version, "registered": outcome.registered, "message": outcome.message,
            "metrics": _jsonable(outcome.metrics),
        }
        if params.get("then_rank"):
            from activeseg.pipeline.distributed import rank

            # Ranks with the round's model (staged, not yet active: it becomes active with this ranking); its passes
            # on training.processes ranks like the training.
            result["rank"] = _rank_summary(rank(store, progress, write_pseudo=bool(params.get("write_pseudo", True)),
                                                commit=commit, model=outcome.model, processes=params.get("processes")))
        return result
    if kind == "rank":
        from activeseg.pipeline.distributed import rank

        return _rank_summary(rank(store, progress, write_pseudo=bool(params.get("write_pseudo", True)),
                                  commit=commit, processes=params.get("processes")))
    if kind == "pseudo-label":
        from activeseg.pipeline.ranking_round import pseudo_label_round

        written = pseudo_label_round(store, progress, commit=commit)
        return {"pseudo_labelled": sorted(written)}
    raise ActiveSegError(f"unknown job kind {kind!r}")


def _is_cuda_oom(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")
    oom_type = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and "CUDA out of memory" in str(exc)


def execute(store_root: Path, job_id: str) -> str:
    """Run job ``job_id`` of the datastore at ``store_root`` in this process and record its outcome.

    Returns:
        The final status (``succeeded``, ``failed``, ``cancelled``, or ``interrupted`` when the server died).
    """
    store = Datastore(store_root)
    table = JobTable(store.meta_dir)
    job = table.get(job_id)
    try:
        model = ProgressModel(job_plan(store, job.kind, job.params), timing_history(table, job.kind))
    except Exception as exc:  # noqa: BLE001 - estimates are a comfort; the job must run without them
        logger.warning("no whole-job progress estimate: %s", exc)
        model = None
    progress = ProgressReporter(table, job_id, model=model)
    progress.start_heartbeat()
    if threading_is_main() and SERVER_PID_ENV in os.environ:
        start_watchdog(table, job_id, server_pid())
    if threading_is_main():
        signal.signal(signal.SIGTERM, progress.request_cancel)
    logger.info("job %s: %s %s (pid %d)", job_id, job.kind, job.params, os.getpid())
    status, result, error = "failed", None, None
    commit = store.new_commit()
    try:
        result = _run_kind(store, job.kind, job.params, progress, commit)
        result["timing"] = progress.model.timing
        status = "succeeded"
    except TrainingCancelled:
        if progress.orphaned:
            status, error = "interrupted", "interrupted: the server stopped while this job was running"
        else:
            status, error = "cancelled", "cancelled by request"
    except Exception as exc:  # noqa: BLE001 - every failure becomes the job's error text
        error = _error_text(exc)
        logger.error("job %s failed: %s\n%s", job_id, error, traceback.format_exc())
    progress.stop_heartbeat()
    if status == "succeeded":
        _before_commit()
        try:
            status = _commit_outcome(table, job_id, commit, result or {}, progress.done_snapshot())
        except Exception as exc:  # noqa: BLE001 - a refused commit (disk full, lock, version taken) fails the job
            status, error = "failed", _error_text(exc)
            logger.error("job %s failed at its commit: %s\n%s", job_id, error, traceback.format_exc())
    else:
        commit.discard()
    if status != "succeeded":
        table.finish(job_id, status, error=error)  # a no-op when the server recorded the outcome first
    logger.info("job %s %s", job_id, status)
    return status


class _OutcomeTaken(Exception):
    """The job left ``running`` (the server recorded it interrupted, cancelled or failed) before its commit."""


def _commit_outcome(table: JobTable, job_id: str, commit: StoreCommit, result: dict[str, Any],
                    final_progress: dict[str, Any]) -> str:
    """Commit the job's staged effects and mark it succeeded with ``final_progress``, in one transaction; return the
    job's status.

    When the job has already left ``running`` nothing commits (its new files are removed) and the recorded
    status is returned: job status and store state never disagree.
    """

    def mark_succeeded(connection: sqlite3.Connection) -> None:
        if not table.finish_in(connection, job_id, "succeeded", result=result, progress=final_progress):
            raise _OutcomeTaken

    try:
        commit.commit(then=mark_succeeded)
    except _OutcomeTaken:
        status = table.get(job_id).status
        logger.warning("job %s was recorded %s before its commit; its effects are discarded", job_id, status)
        return status
    return "succeeded"


def _error_text(exc: BaseException) -> str:
    """The job's error text for an exception."""
    if _is_cuda_oom(exc):
        return (
            "CUDA out of memory: the GPU has too little free memory for this job; lower training.batch_size "
            f"or training.patch_size, or free the GPU, then retry ({str(exc).splitlines()[0] if str(exc) else ''})"
        )
    if isinstance(exc, ActiveSegError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def threading_is_main() -> bool:
    """Signal handlers can only be installed from the main thread (tests call :func:`execute` from others)."""
    return threading.current_thread() is threading.main_thread()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the child process."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        sys.stderr.write("usage: python -m activeseg.jobs.worker STORE JOBID\n")
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    # Below the server's CPU priority, with a core left for it, so the API stays responsive while training.
    logger.info("%s", run_in_background(Datastore(Path(args[0])).config.training.num_threads).describe())
    execute(Path(args[0]), args[1])
    _linger_after_outcome()
    return 0


def _linger_after_outcome() -> None:
    """The test hook of :data:`LINGER_AFTER_OUTCOME_ENV` (does nothing unless that variable is set)."""
    seconds = float(os.environ.get(LINGER_AFTER_OUTCOME_ENV) or 0)
    if seconds > 0:
        logger.warning("test hook: staying alive %.1f s after the outcome (pid %d)", seconds, os.getpid())
        time.sleep(seconds)


if __name__ == "__main__":
    raise SystemExit(main())

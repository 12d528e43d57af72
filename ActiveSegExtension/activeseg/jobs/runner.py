"""Background jobs (train, rank, pseudo-label): a ``jobs`` table in the datastore's SQLite file and a runner.

Each job runs in its own child process (``python -m activeseg.jobs.worker STORE JOBID``), started in a new
session so that cancelling it can signal the whole process tree (data-loader workers included) and so free
the GPU. The child writes its progress into the ``jobs`` row (throttled) and its log into
``.activeseg/jobs/<job_id>.log``; the server only reads them, so the API stays responsive while torch works.

Job states::

    running -> succeeded | failed | cancelled      (the child, or the server when the child dies)
    running -> interrupted                          (the server stopped or crashed while it ran)

At most one job runs at a time: every kind uses the accelerator and writes the active model, the queue or
the pseudo-label set, so two at once would compete for GPU memory and race on the same rows. That holds for
the processes too: a worker records its outcome and then takes seconds to exit (a CUDA context tears down), so
a new job's worker starts only once the previous workers have exited (:meth:`JobRunner.start` waits for them,
at most ``handover_wait_s``, then kills them).

A job's effects commit in the same SQLite transaction that marks it ``succeeded`` (see
:mod:`activeseg.jobs.worker`); a job in any other final state changed nothing visible. Files its worker wrote
before dying are removed when the server notices (:meth:`JobRunner._watch`, :meth:`JobRunner.recover`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from activeseg.errors import ActiveSegError
from activeseg.store.database import Database
from activeseg.store.recovery import recover_job_outputs
from activeseg.store.sqlite_tx import transaction

__all__ = [
    "FINAL_STATES",
    "JobConflictError",
    "JobFinishedError",
    "UnknownJobError",
    "JobRecord",
    "JobTable",
    "JobRunner",
    "read_log_tail",
]

logger = logging.getLogger(__name__)

FINAL_STATES = ("succeeded", "failed", "cancelled", "interrupted")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id           TEXT PRIMARY KEY,
    kind             TEXT NOT NULL,
    status           TEXT NOT NULL,
    params           TEXT NOT NULL,
    created          REAL NOT NULL,
    started          REAL,
    finished         REAL,
    updated          REAL NOT NULL,
    pid              INTEGER,
    progress         TEXT NOT NULL DEFAULT '{}',
    result           TEXT,
    error            TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status);
"""


class JobConflictError(ActiveSegError):
    """A job was requested while another one runs."""

    code = "job_running"
    http_status = 409


class JobFinishedError(ActiveSegError):
    """An action on a job that has already ended (e.g. cancelling it)."""

    code = "job_finished"
    http_status = 409


class UnknownJobError(ActiveSegError):
    """A job id that the table does not hold."""

    code = "unknown_job"
    http_status = 404


@dataclass(frozen=True)
class JobRecord:
    """One job row.

    Attributes:
        job_id: 32 hex digits.
        kind: ``train``, ``rank`` or ``pseudo-label`` (dispatched by :mod:`activeseg.jobs.worker`).
        status: ``running`` or one of :data:`FINAL_STATES`.
        params: the options it was started with.
        created, started, finished, updated: Unix times, seconds.
        pid: the child's process id (also its process-group id), while known.
        progress: the latest progress event (phase, epoch, step, loss, val_dice, eta_s, ...).
        result: what the job produced (model version, queue, ...) once succeeded.
        error: human-readable failure text.
        cancel_requested: a cancel was asked for.
    """

    job_id: str
    kind: str
    status: str
    params: dict[str, Any]
    created: float
    started: float | None
    finished: float | None
    updated: float
    pid: int | None
    progress: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    cancel_requested: bool


class JobTable:
    """The ``jobs`` table of one datastore's database. Every method is its own short transaction."""

    def __init__(self, meta_dir: Path) -> None:
        """Open (and create if missing) the table in ``meta_dir/activeseg.db``."""
        self.meta_dir = Path(meta_dir)
        self.db_path = self.meta_dir / "activeseg.db"
        self.log_dir = self.meta_dir / "jobs"
        with self._connect(write=True) as connection:
            for statement in filter(str.strip, _SCHEMA.split(";")):
                connection.execute(statement)

    def _connect(self, write: bool = False) -> AbstractContextManager[sqlite3.Connection]:
        """One transaction on the datastore's database (see :func:`activeseg.store.sqlite_tx.transaction`)."""
        return transaction(self.db_path, write)

    @staticmethod
    def _record(row: sqlite3.Row) -> JobRecord:
        return JobRecord(
            job_id=row["job_id"],
            kind=row["kind"],
            status=row["status"],
            params=json.loads(row["params"]),
            created=row["created"],
            started=row["started"],
            finished=row["finished"],
            updated=row["updated"],
            pid=row["pid"],
            progress=json.loads(row["progress"] or "{}"),
            result=json.loads(row["result"]) if row["result"] else None,
            error=row["error"],
            cancel_requested=bool(row["cancel_requested"]),
        )

    def log_path(self, job_id: str) -> Path:
        """The job's log file."""
        return self.log_dir / f"{job_id}.log"

    def create(self, kind: str, params: dict[str, Any]) -> JobRecord:
        """Insert a ``running`` job, unless one already runs (checked under the write lock).

        Raises:
            JobConflictError: another job is running.
        """
        now = time.time()
        job_id = uuid.uuid4().hex
        with self._connect(write=True) as connection:
            row = connection.execute("SELECT job_id, kind FROM jobs WHERE status = 'running' LIMIT 1").fetchone()
            if row is not None:
                raise JobConflictError(f"job {row['job_id']} ({row['kind']}) is running; wait for it or cancel it")
            connection.execute(
                "INSERT INTO jobs (job_id, kind, status, params, created, started, updated, progress)"
                " VALUES (?, ?, 'running', ?, ?, ?, ?, ?)",
                (job_id, kind, json.dumps(params), now, now, now, json.dumps({"phase": "starting"})),
            )
        return self.get(job_id)

    def get(self, job_id: str) -> JobRecord:
        """One job. Raises UnknownJobError."""
        with self._connect() as connection:
            row = connection.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise UnknownJobError(f"unknown job id {job_id!r}")
        return self._record(row)

    def list(self, limit: int = 50) -> list[JobRecord]:
        """Most recent jobs first."""
        with self._connect() as connection:
            rows = connection.execute("SELECT * FROM jobs ORDER BY created DESC LIMIT ?", (int(limit),)).fetchall()
        return [self._record(row) for row in rows]

    def running(self) -> JobRecord | None:
        """The running job, if any."""
        with self._connect() as connection:
            row = connection.execute("SELECT * FROM jobs WHERE status = 'running' LIMIT 1").fetchone()
        return self._record(row) if row else None

    def set_pid(self, job_id: str, pid: int) -> None:
        """Record the child's process id."""
        with self._connect(write=True) as connection:
            connection.execute("UPDATE jobs SET pid = ?, updated = ? WHERE job_id = ?", (pid, time.time(), job_id))

    def update_progress(self, job_id: str, progress: dict[str, Any]) -> bool:
        """Store the latest progress; False when the job is no longer running (nothing written)."""
        with self._connect(write=True) as connection:
            cursor = connection.execute(
                "UPDATE jobs SET progress = ?, updated = ? WHERE job_id = ? AND status = 'running'",
                (json.dumps(progress, default=str), time.time(), job_id),
            )
        return cursor.rowcount == 1

    def finish(self, job_id: str, status: str, result: dict[str, Any] | None = None, error: str | None = None) -> bool:
        """Move a running job to a final state; False if it had already left ``running`` (first writer wins)."""
        with self._connect(write=True) as connection:
            return self.finish_in(connection, job_id, status, result, error)

    @staticmethod
    def finish_in(
        connection: sqlite3.Connection, job_id: str, status: str, result: dict[str, Any] | None = None,
        error: str | None = None, progress: dict[str, Any] | None = None,
    ) -> bool:
        """:meth:`finish` inside a caller's write transaction (a worker marks its job succeeded in the transaction
        that commits the job's effects); ``progress``, when given, replaces the progress row in the same update."""
        if status not in FINAL_STATES:
            raise ValueError(f"not a final job state: {status!r}")
        now = time.time()
        assignments, values = "status = ?, result = ?, error = ?, finished = ?, updated = ?", [
            status, json.dumps(result, default=str) if result is not None else None, error, now, now]
        if progress is not None:
            assignments += ", progress = ?"
            values.append(json.dumps(progress, default=str))
        cursor = connection.execute(f"UPDATE jobs SET {assignments} WHERE job_id = ? AND status = 'running'",
                                    (*values, job_id))
        return cursor.rowcount == 1

    def request_cancel(self, job_id: str) -> JobRecord:
        """Flag a running job for cancellation. Raises UnknownJobError; JobFinishedError if it already ended."""
        with self._connect(write=True) as connection:
            row = connection.execute("SELECT status FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if row is None:
                raise UnknownJobError(f"unknown job id {job_id!r}")
            if row["status"] != "running":
                raise JobFinishedError(f"job {job_id} already ended ({row['status']}); there is nothing to cancel")
            connection.execute("UPDATE jobs SET cancel_requested = 1, updated = ? WHERE job_id = ?", (time.time(), job_id))
        return self.get(job_id)

    def interrupt_running(self, reason: str) -> list[JobRecord]:
        """Mark every ``running`` job ``interrupted`` (server start-up after a crash); return them as they were."""
        with self._connect(write=True) as connection:
            rows = connection.execute("SELECT * FROM jobs WHERE status = 'running'").fetchall()
            now = time.time()
            connection.execute(
                "UPDATE jobs SET status = 'interrupted', error = ?, finished = ?, updated = ? WHERE status = 'running'",
                (reason, now, now),
            )
        return [self._record(row) for row in rows]


def read_log_tail(path: Path, lines: int = 50, max_bytes: int = 65536) -> list[str]:
    """The last ``lines`` lines of a text file (reads at most ``max_bytes`` from its end); [] if missing."""
    if lines <= 0:
        return []
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except FileNotFoundError:
        return []
    text = data.decode("utf-8", errors="replace").splitlines()
    return text[-lines:]


def _is_our_worker(pid: int, job_id: str) -> bool:
    """True when ``pid`` still runs the worker of ``job_id`` (guards against pid reuse; Linux /proc only)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"activeseg.jobs.worker" in cmdline and job_id.encode() in cmdline


def _kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the child is a session leader: its pgid equals its pid
    except (ProcessLookupError, PermissionError):
        pass


class JobRunner:
    """Starts, watches and cancels job processes for one server.

    Args:
        store_root: the datastore folder.
        table: its job table.
        kill_grace_s: seconds between SIGTERM (the worker stops at its next progress report) and SIGKILL.
        handover_wait_s: seconds a new job waits for the previous job's worker, whose outcome is recorded, to
            exit (releasing its GPU memory) before that worker's process group is killed.
    """

    def __init__(self, store_root: Path, table: JobTable, kill_grace_s: float = 5.0,
                 handover_wait_s: float = 30.0) -> None:
        self.store_root = Path(store_root)
        self.table = table
        self.kill_grace_s = kill_grace_s
        self.handover_wait_s = handover_wait_s
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    def recover(self) -> list[JobRecord]:
        """At start-up: jobs left ``running`` by an earlier server become ``interrupted``.

        A worker orphaned by a crashed server may still be alive; it is killed, since nothing would watch it
        and it would hold the GPU.
        """
        interrupted = self.table.interrupt_running("interrupted: the server stopped while this job was running")
        for job in interrupted:
            if job.pid and _is_our_worker(job.pid, job.job_id):
                logger.warning("killing orphaned worker of job %s (pid %d)", job.job_id, job.pid)
                _kill_group(job.pid, signal.SIGKILL)
            logger.warning("job %s (%s) was interrupted by a server stop", job.job_id, job.kind)
        if interrupted:
            self._remove_uncommitted_outputs()
        return interrupted

    def _remove_uncommitted_outputs(self) -> None:
        """Delete what a dead worker wrote and never committed (its staged model folder, prediction set,
        pseudo-labels). Called only while no job runs; never raises."""
        try:
            recover_job_outputs(Database.open(self.store_root))
        except Exception as exc:  # noqa: BLE001 - left-overs are invisible; the next start-up recovery removes them
            logger.warning("could not remove the files of an uncommitted job: %s", exc)

    def start(self, kind: str, params: dict[str, Any]) -> JobRecord:
        """Start a job in a child process, once every earlier worker has exited (:meth:`_await_previous_workers`).

        Raises:
            JobConflictError: a job is running.
        """
        job = self.table.create(kind, params)  # claims the one job slot first: a concurrent start gets 409
        self._await_previous_workers(job.job_id)
        if self.table.get(job.job_id).status != "running":  # cancelled (or the server stopped) while it waited
            logger.info("job %s (%s) ended before its worker started", job.job_id, kind)
            return self.table.get(job.job_id)
        self.table.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.table.log_path(job.job_id)
        # The worker compares its parent with this pid: a server that dies even before the worker has started
        # is noticed (reading the parent only once started would already see init).
        env = dict(os.environ, PYTHONUNBUFFERED="1", ACTIVESEG_SERVER_PID=str(os.getpid()))
        try:
            with open(log_path, "ab") as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", "activeseg.jobs.worker", str(self.store_root), job.job_id],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,  # own process group: cancel signals the whole tree
                    close_fds=True,
                )
        except OSError as exc:
            self.table.finish(job.job_id, "failed", error=f"could not start the worker process: {exc}")
            raise
        with self._lock:
            self._processes[job.job_id] = process
        self.table.set_pid(job.job_id, process.pid)
        threading.Thread(target=self._watch, args=(job.job_id, process), name=f"job-{job.job_id[:8]}", daemon=True).start()
        logger.info("job %s (%s) started, pid %d", job.job_id, kind, process.pid)
        return self.table.get(job.job_id)

    def _await_previous_workers(self, job_id: str) -> None:
        """Wait until the workers of earlier jobs have exited; kill those still alive after ``handover_wait_s``.

        Only workers whose job has already recorded its outcome can still be here (a running job refuses the new
        one), so killing one loses nothing: its effects committed with its status, or not at all.
        """
        with self._lock:
            previous = [(other, process) for other, process in self._processes.items() if other != job_id]
        deadline = time.monotonic() + self.handover_wait_s
        for other, process in previous:
            started = time.monotonic()
            try:
                process.wait(timeout=max(0.0, deadline - started))
            except subprocess.TimeoutExpired:
                logger.warning("worker of job %s (pid %d) still alive %.0f s after its outcome; killing it before "
                               "job %s starts", other, process.pid, self.handover_wait_s, job_id)
                _kill_group(process.pid, signal.SIGKILL)
                try:
                    process.wait(timeout=self.kill_grace_s)
                except subprocess.TimeoutExpired:
                    logger.error("worker pid %d survived SIGKILL for %.0f s; starting job %s anyway", process.pid,
                                 self.kill_grace_s, job_id)
                continue
            if time.monotonic() - started > 0.05:
                logger.info("job %s waited %.1f s for the worker of job %s to exit", job_id,
                            time.monotonic() - started, other)

    def _watch(self, job_id: str, process: subprocess.Popen[bytes]) -> None:
        """Reap the child; if it died without recording an outcome (killed, crashed), record one."""
        code = process.wait()
        with self._lock:
            self._processes.pop(job_id, None)
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        job = self.table.get(job_id)
        if job.status == "running":
            # It died before its commit (which also records its outcome): nothing it did is visible, and no other
            # job can start while this one reads running, so its files can go now.
            self._remove_uncommitted_outputs()
            if job.cancel_requested:
                self.table.finish(job_id, "cancelled", error="cancelled by request")
            else:
                self.table.finish(job_id, "failed", error=f"the worker process ended unexpectedly ({how}); see the log")
            job = self.table.get(job_id)
        # The log also tells how it ended, even when the worker died before writing a line.
        with open(self.table.log_path(job_id), "a", encoding="utf-8") as log:
            log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [server] job {job_id} worker ended ({how}); job {job.status}\n")
        logger.info("job %s worker ended (%s); %s", job_id, how, job.status)

    def cancel(self, job_id: str) -> JobRecord:
        """Ask a running job to stop: SIGTERM to its process group, SIGKILL after the grace period.

        Raises:
            UnknownJobError: no such job. JobFinishedError: it already ended.
        """
        job = self.table.request_cancel(job_id)
        with self._lock:
            process = self._processes.get(job_id)
        if process is None:
            # Not ours (another server instance started it) or already reaped: record the outcome directly.
            if job.pid and _is_our_worker(job.pid, job_id):
                _kill_group(job.pid, signal.SIGKILL)
            self.table.finish(job_id, "cancelled", error="cancelled by request")
            return self.table.get(job_id)
        _kill_group(process.pid, signal.SIGTERM)
        threading.Thread(target=self._kill_later, args=(process,), daemon=True).start()
        return self.table.get(job_id)

    def _kill_later(self, process: subprocess.Popen[bytes]) -> None:
        try:
            process.wait(timeout=self.kill_grace_s)
        except subprocess.TimeoutExpired:
            logger.warning("worker pid %d ignored SIGTERM for %.0f s; killing it", process.pid, self.kill_grace_s)
            _kill_group(process.pid, signal.SIGKILL)

    def shutdown(self) -> None:
        """Server stop: mark running jobs ``interrupted`` and end their process trees."""
        with self._lock:
            processes = dict(self._processes)
        for job_id, process in processes.items():
            self.table.finish(job_id, "interrupted", error="interrupted: the server stopped while this job was running")
            _kill_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.kill_grace_s
        for process in processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill_group(process.pid, signal.SIGKILL)

"""A job worker runs in the background of the machine: training must not starve the API of CPU (issue 12, item 15).

Three things, applied by the worker process to itself at start (:func:`run_in_background`):

* **Nice value**: ``os.nice`` up to :data:`BACKGROUND_NICE` (10), so the server's threads win the CPU whenever
  both want it.
* **Autogroup**: on Linux with ``CONFIG_SCHED_AUTOGROUP`` the scheduler first shares the CPU between *sessions*
  and only then applies nice values inside one. The worker runs in its own session (``start_new_session``, so a
  cancel can signal its whole process group), which made its nice value meaningless against the server: the two
  sessions got equal shares. Writing the nice value to ``/proc/self/autogroup`` lowers the whole session's share;
  where that file is absent or not writable (another kernel, a container) the process nice value still applies.
* **Torch threads**: with ``training.num_threads = 0`` (torch's default, every core) the worker uses one core fewer
  than this process may run on (:func:`os.sched_getaffinity`), at least one, so a core is left for the API;
  a configured ``training.num_threads`` is kept as set.

``$ACTIVESEG_JOB_PRIORITY=normal`` turns all three off (a dedicated training machine nobody annotates on);
the default is ``background``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BACKGROUND_NICE", "PRIORITY_ENV", "AUTOGROUP_PATH", "WorkerPriority", "run_in_background",
           "usable_cores"]

logger = logging.getLogger(__name__)

BACKGROUND_NICE = 10
PRIORITY_ENV = "ACTIVESEG_JOB_PRIORITY"
AUTOGROUP_PATH = Path("/proc/self/autogroup")


@dataclass(frozen=True)
class WorkerPriority:
    """What :func:`run_in_background` set (for the job's log).

    Attributes:
        mode: ``background`` or ``normal``.
        nice: the process nice value afterwards.
        autogroup_nice: the session's autogroup nice value afterwards, or ``None`` where there are no autogroups
            (or they could not be read).
        torch_threads: torch's intra-op CPU threads afterwards, or ``None`` when torch was not touched.
        cores: CPU cores this process may run on.
    """

    mode: str
    nice: int
    autogroup_nice: int | None
    torch_threads: int | None
    cores: int

    def describe(self) -> str:
        """One log line."""
        group = "no autogroup" if self.autogroup_nice is None else f"autogroup nice {self.autogroup_nice}"
        threads = "torch threads as configured" if self.torch_threads is None else f"torch threads {self.torch_threads}"
        return f"worker priority {self.mode}: nice {self.nice}, {group}, {threads} of {self.cores} core(s)"


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` where that is not available)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _read_autogroup_nice(path: Path) -> int | None:
    """The nice value in ``/proc/self/autogroup`` (``/autogroup-123 nice 10``), or None."""
    try:
        parts = path.read_text().split()
    except OSError:
        return None
    if len(parts) >= 3 and parts[-2] == "nice":
        try:
            return int(parts[-1])
        except ValueError:
            return None
    return None


def _lower_autogroup(path: Path, nice: int) -> int | None:
    """Raise the autogroup nice value of this session to ``nice`` (never lower it); return the value after."""
    current = _read_autogroup_nice(path)
    if current is None:
        return None
    if current < nice:
        try:
            path.write_text(f"{nice}\n")
        except OSError as exc:  # read-only /proc, a restricted container: the process nice value still applies
            logger.info("cannot lower this session's autogroup priority (%s)", exc)
        current = _read_autogroup_nice(path)
    return current


def run_in_background(configured_threads: int, autogroup: Path = AUTOGROUP_PATH) -> WorkerPriority:
    """Lower this process's CPU priority and bound torch's threads (see the module docstring).

    Call it in the worker process only (it changes the calling process for good), before any work.

    Args:
        configured_threads: ``training.num_threads`` of the datastore (0 = not configured).
        autogroup: the autogroup file (a parameter for tests).
    """
    cores = usable_cores()
    if os.environ.get(PRIORITY_ENV, "background").strip().lower() == "normal":
        return WorkerPriority("normal", os.nice(0), _read_autogroup_nice(autogroup), None, cores)
    nice = os.nice(0)
    if nice < BACKGROUND_NICE:
        try:
            nice = os.nice(BACKGROUND_NICE - nice)
        except OSError as exc:
            logger.info("cannot lower the worker's priority (%s)", exc)
    group = _lower_autogroup(autogroup, BACKGROUND_NICE)
    threads: int | None = None
    if configured_threads <= 0:
        import torch

        threads = max(1, cores - 1)
        torch.set_num_threads(threads)
    return WorkerPriority("background", nice, group, threads, cores)

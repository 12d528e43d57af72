"""The collectives of data-parallel training (``torch.distributed``): what the training loop and ALNT exchange.

A training round on N processes (ranks) runs one copy of the network per rank; each rank draws its own crops.
:class:`torch.nn.parallel.DistributedDataParallel` averages a plain step's gradients. ALNT's step cannot go through
DDP's backward hooks (its reference gradient comes from ``torch.autograd.grad`` and its dot products from a
forward-mode ``jvp``), so :mod:`activeseg.method.alnt` exchanges exactly what makes it equal to one process on
the union of the ranks' batches, with the helpers here:

* :meth:`DataParallel.mean_` averages tensors in place (one all-reduce over one flat buffer): the expert reference
  gradient ``g`` and the pseudo term's gradient;
* :meth:`DataParallel.gather` concatenates per-sample values in rank order (the same on every rank): the
  ALNT dot products and RGM values, so weights are normalised and rectified over the whole (global) batch;
* :meth:`DataParallel.sync_step` is one tiny all-reduce per step: any rank asking to stop (rank 0's progress
  callback said cancel) and the mean loss.

Every rank must call each collective in the same order (they block until all ranks arrive). Backends: NCCL on
CUDA (one GPU per rank, ``cuda:LOCAL_RANK``), gloo on the CPU. The process group is set up from torchrun's
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) by
:func:`initialise`.
"""

from __future__ import annotations

import ctypes
import datetime
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from activeseg.errors import ConfigError

__all__ = ["DataParallel", "initialise", "die_with_parent", "backend_for"]

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(frozen=True)
class DataParallel:
    """This process's place in a data-parallel job and the collectives it uses.

    Attributes:
        rank: 0 .. world_size - 1; rank 0 validates, selects, checkpoints and reports.
        world_size: number of processes (ranks).
        device: this rank's device (``cuda:LOCAL_RANK`` with NCCL, the CPU with gloo); scalars of
            :meth:`sync_step` live there.
        group: the process group (None: the default group).
    """

    rank: int
    world_size: int
    device: torch.device
    group: dist.ProcessGroup | None = None

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0."""
        return self.rank == 0

    def mean_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Replace each tensor by its mean over the ranks, in place (one all-reduce; same dtype and device).

        Args:
            tensors: any shapes; every rank passes tensors of the same shapes in the same order.
        """
        if not tensors:
            return
        flat = torch.cat([t.detach().reshape(-1) for t in tensors])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
        flat /= self.world_size
        offset = 0
        with torch.no_grad():
            for t in tensors:
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """All ranks' ``values`` concatenated along dim 0 in rank order; every rank gets the same tensor.

        Args:
            values: (b, ...) this rank's rows; every rank passes the same shape.

        Returns:
            (world_size * b, ...).
        """
        parts = [torch.empty_like(values) for _ in range(self.world_size)]
        dist.all_gather(parts, values.detach().contiguous(), group=self.group)
        return torch.cat(parts)

    def local_rows(self, rows: int) -> slice:
        """This rank's rows in a tensor :meth:`gather` built from ``rows`` rows per rank."""
        return slice(self.rank * rows, (self.rank + 1) * rows)

    def sync_step(self, stop: bool, value: float) -> tuple[bool, float]:
        """One small all-reduce: whether any rank asked to stop, and the mean of ``value`` over the ranks."""
        data = torch.tensor([1.0 if stop else 0.0, float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(data, op=dist.ReduceOp.SUM, group=self.group)
        return bool(data[0].item() > 0), float(data[1].item()) / self.world_size

    def barrier(self) -> None:
        """Wait until every rank arrives."""
        if self.device.type == "cuda":
            dist.barrier(group=self.group, device_ids=[self.device.index or 0])
        else:
            dist.barrier(group=self.group)


def backend_for(device_setting: str) -> str:
    """``nccl`` when ``training.device`` resolves to CUDA on this machine, else ``gloo``."""
    return "nccl" if device_setting in ("auto", "cuda") and torch.cuda.is_available() else "gloo"


def initialise(device_setting: str, timeout_s: float) -> DataParallel:
    """Join the process group torchrun (or a site launcher) described in the environment.

    Args:
        device_setting: ``training.device`` (``auto``, ``cpu``, ``cuda``): NCCL and ``cuda:LOCAL_RANK`` on GPUs,
            gloo and the CPU otherwise.
        timeout_s: how long a collective waits for the other ranks, seconds (rank 0 validates while the others
            wait at their next step).

    Raises:
        ConfigError: the environment names no rank (not started by torchrun), or fewer GPUs than local ranks.
    """
    missing = [name for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise ConfigError(f"not started by torchrun: {', '.join(missing)} not set (see README 'Several GPUs and nodes')")
    backend = backend_for(device_setting)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"local rank {local_rank} but only {torch.cuda.device_count()} GPU(s) on this node: "
                              "start at most one process per GPU")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s),
                            **({"device_id": device} if backend == "nccl" else {}))
    group = DataParallel(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)
    logger.info("rank %d of %d (%s) on %s", group.rank, group.world_size, backend, device)
    return group


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when its parent (torchrun's agent) dies (Linux; elsewhere nothing).

    torchrun starts each rank in its own session, so a signal to the job owner's process group does not reach
    the ranks; when the owner and the agent are killed (cancel after its grace period, a crashed server), the
    ranks follow through this. A parent already gone before the call ends this process at once.
    """
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            logger.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d)", ctypes.get_errno())
    except (OSError, AttributeError) as exc:
        logger.warning("cannot ask to die with the parent process: %s", exc)
    if parent == 1 or os.getppid() != parent:
        os._exit(3)

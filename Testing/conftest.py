"""Suite-wide set-up: with pytest-xdist workers (``make test`` runs two), each worker's torch uses one thread.

Two workers whose torch each took every core would oversubscribe the machine (OpenMP threads spin), which made the
in-process ALNT gradient tests several times slower; one thread per worker keeps the cores shared evenly. The
environment variable is set before any test module imports torch, and subprocesses (servers, jobs, ranks) inherit it
unless their configuration sets their own thread count.
"""

from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

"""What the resumable benchmarks share: their JSON-lines results files and the cells of their Markdown tables.

A benchmark that runs for many minutes per seed appends one JSON object per finished seed to its results file, so
an interrupted run resumes where it stopped (the file is read back, finished seeds skipped). Not a benchmark itself
(``run_all`` collects ``bench_*.py`` only).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["read_records", "append_record", "run_missing_seeds", "format_number", "mean_present"]

logger = logging.getLogger("activeseg.bench")


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every record of a JSON-lines results file (none when it does not exist yet)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one finished seed's record (one line, so a run killed mid-seed leaves the earlier seeds whole)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def run_missing_seeds(seeds: Sequence[int], key: str, path: Path,
                      run_seed: Callable[[int], dict[str, Any]]) -> list[dict[str, Any]]:
    """Run the seeds whose record with this ``key`` (the settings a result depends on) is not in ``path`` yet,
    appending each as it finishes; return the records of ``seeds`` with ``key``, old and new."""
    done = {r["seed"] for r in read_records(path) if r.get("key") == key}
    for seed in seeds:
        if seed in done:
            logger.info("seed %d: already in %s, skipped", seed, path)
            continue
        append_record(path, run_seed(seed))
    return [r for r in read_records(path) if r.get("key") == key and r["seed"] in seeds]


def format_number(value: float | None, digits: int = 3) -> str:
    """A table cell: ``-`` for a missing value."""
    return "-" if value is None else f"{value:.{digits}f}"


def mean_present(values: Sequence[float | None]) -> float | None:
    """Mean of the values that are not None; None when none is."""
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None

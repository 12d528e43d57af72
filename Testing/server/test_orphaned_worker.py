"""A job worker dies with its server, even when the server dies right after starting it (issue 12, item 5)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from activeseg.jobs.runner import JobTable
from activeseg.store.datastore import Datastore

from .support import label_path, make_store, tiny_config
from .test_crash import _worker_pids

# A "server" that starts a training job and dies at once (no clean shutdown), as a crash 0.1 s later would.
_START_AND_DIE = """
import os, sys
from pathlib import Path
from activeseg.jobs.runner import JobRunner, JobTable
from activeseg.store.datastore import Datastore
store = Datastore(Path(sys.argv[1]))
job = JobRunner(store.root, JobTable(store.meta_dir)).start("train", {})
print(job.job_id, flush=True)
os._exit(0)
"""


def test_worker_orphaned_right_after_start_stops_and_commits_nothing(tmp_path: Path) -> None:
    """Before: the worker read its parent after its imports (already init), trained to the end, marked the job
    succeeded and activated a model with no server running."""
    config = tiny_config()
    config.training.epochs_first = 3
    store_root, source = make_store(tmp_path, count=6, config=config)
    store = Datastore(store_root)
    for case_id in ("phantom_000", "phantom_001"):
        from activeseg.io.volumes import read_volume

        store.submit_label(case_id, read_volume(label_path(source, case_id)), annotator="a")
    started = subprocess.run([sys.executable, "-c", _START_AND_DIE, str(store_root)], capture_output=True, text=True,
                             timeout=60)
    job_id = started.stdout.strip()
    assert len(job_id) == 32, started.stderr
    deadline = time.monotonic() + 180
    while _worker_pids(job_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _worker_pids(job_id), "the orphaned worker is still running"
    job = JobTable(store.meta_dir).get(job_id)
    assert job.status != "succeeded", job
    assert store.models() == [] and store.active_version() is None

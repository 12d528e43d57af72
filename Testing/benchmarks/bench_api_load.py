"""API latency while training runs (issue 12, item 15): the hot read routes' p50/p99 with N concurrent clients,
idle and during a training job, side by side in one run, as ratios to idle.

The real server (``activeseg serve`` on 127.0.0.1) over a small real datastore: hippocampus MRI volumes from
``../shared/data/hippocampus_mri`` (phantoms where that folder is absent), a few expert labels, the rest queued.
The training job is a real training round of the product's default settings (``training.num_threads=0``, the
default), kept running until cancelled. Three conditions, each measured with the same clients and routes:

* ``idle``: no job;
* ``training``: the worker as shipped (background priority: nice and autogroup 10, torch on one core fewer than
  the machine has, :mod:`activeseg.jobs.priority`);
* ``training, normal priority``: the same job with ``$ACTIVESEG_JOB_PRIORITY=normal`` (the worker at the
  server's priority, torch on every core: the behaviour before item 15), on a second server over the same store.

Each client is a thread of this process with its own keep-alive connection; clients and server share the machine
with the job, so the table's header names the machine and its load. Training steps per second during each
training condition show what the lower priority costs the job. ``make test`` never runs it.

Run alone: ``python -m Testing.benchmarks.run_all --only bench_api_load [--quick]``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from activeseg.config import Config, apply_overrides
from activeseg.io.volumes import read_volume
from activeseg.store.datastore import Datastore
from activeseg.store.initialise import init_datastore

from Testing.server.support import ServerProcess, label_path, make_store, tiny_config

__all__ = ["run", "measure_conditions", "LoadSettings"]

try:
    from activeseg.jobs.priority import PRIORITY_ENV
except ImportError:  # a checkout from before item 15 (PYTHONPATH=<it>/ActiveSegExtension: a before/after table)
    PRIORITY_ENV = "ACTIVESEG_JOB_PRIORITY"

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "hippocampus_mri"
# Training steps before a condition is measured: the first ones are slower (caches, allocator), which made the
# first training condition's steps/s look lower whatever its priority.
WARM_UP_STEPS = 3


@dataclass(frozen=True)
class LoadSettings:
    """Sizes of one run.

    Attributes:
        cases: volumes in the datastore. labelled: how many get expert labels (training cases; validation cases
            are all labelled). client_counts: concurrent clients per measurement. per_client: requests each client
            sends per route. overrides: ``--set`` strings for the store (the job's settings). real_data: use the
            hippocampus MRI volumes (else phantoms). job_start_timeout_s: how long to wait for the training phase.
    """

    cases: int = 40
    labelled: int = 8
    client_counts: tuple[int, ...] = (20, 50)
    per_client: int = 40
    overrides: tuple[str, ...] = ("training.epochs_first=100000", "training.device=cpu")
    real_data: bool = True
    job_start_timeout_s: float = 600.0


@dataclass
class Sample:
    """Latencies (ms) and failures of one (clients, route) measurement."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0

    def percentiles(self) -> tuple[float, float]:
        if not self.latencies:
            return float("nan"), float("nan")
        p50, p99 = np.percentile(self.latencies, [50, 99])
        return float(p50), float(p99)


def _measure(url: str, path: str, per_client: int, clients: int) -> Sample:
    """``clients`` threads, each sending ``per_client`` GETs of ``path`` over its own keep-alive connection."""
    sample = Sample()
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def client_loop() -> None:
        mine: list[float] = []
        errors = 0
        with httpx.Client(base_url=url, timeout=60) as client:
            client.get("/v1/health")  # connect before the clock starts
            barrier.wait()
            for _ in range(per_client):
                started = time.perf_counter()
                try:
                    response = client.get(path)
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                mine.append((time.perf_counter() - started) * 1000.0)
                errors += 0 if ok else 1
        with lock:
            sample.latencies.extend(mine)
            sample.errors += errors

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sample


def _hippocampus_source(folder: Path, count: int) -> Path:
    """A dataset.json of the first ``count`` hippocampus volumes (absolute paths)."""
    source = json.loads((DATA / "dataset.json").read_text())
    entries = sorted(source["training"], key=lambda e: e["image"])[:count]
    source["training"] = [{"image": str(DATA / e["image"]), "label": str(DATA / e["label"])} for e in entries]
    source["numTraining"] = len(entries)
    path = folder / "dataset.json"
    path.write_text(json.dumps(source))
    return path


def build_store(folder: Path, settings: LoadSettings) -> tuple[Path, str]:
    """The datastore: ``labelled`` training cases and every validation case labelled, the rest queued.

    Returns:
        (datastore folder, a description of its data for the table).
    """
    if settings.real_data and (DATA / "dataset.json").is_file():
        subset = _hippocampus_source(folder, settings.cases)
        labels = {Path(e["image"]).name.removesuffix(".nii.gz"): Path(e["label"])
                  for e in json.loads(subset.read_text())["training"]}
        store, _ = init_datastore(folder / "store", subset, config=apply_overrides(Config(), list(settings.overrides)))
        what = f"{settings.cases} hippocampus MRI volumes (MSD Task04), default settings"
    else:
        config = apply_overrides(tiny_config(), list(settings.overrides))
        root, source = make_store(folder, count=settings.cases, config=config)
        store = Datastore(root)
        labels = {record.case_id: label_path(source, record.case_id) for record in store.cases()}
        what = f"{settings.cases} phantom volumes, tiny settings"
    train = [record.case_id for record in store.cases(split="train")]
    for case_id in train[: settings.labelled] + [record.case_id for record in store.cases(split="val")]:
        store.submit_label(case_id, read_volume(labels[case_id], dtype=np.uint8), annotator="bench")
    store.set_queue(train[settings.labelled:])
    return store.root, what


def _steps(job: dict) -> int:
    progress = job.get("progress", {})
    return int(progress.get("epoch") or 0) * int(progress.get("steps") or 0) + int(progress.get("step") or 0)


@contextmanager
def _training(client: httpx.Client, timeout_s: float) -> Iterator[str]:
    """A training job in its training phase for the block's duration; cancelled after it."""
    response = client.post("/v1/jobs/train")
    response.raise_for_status()
    job_id = response.json()["job_id"]
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            job = client.get(f"/v1/jobs/{job_id}").json()
            if job["status"] != "running":
                raise RuntimeError(f"training job ended before the measurement: {job['status']} {job.get('error')}")
            if job["progress"].get("phase") == "train" and _steps(job) >= WARM_UP_STEPS:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("training job did not reach its training phase")
            time.sleep(0.5)
        yield job_id
    finally:
        client.post(f"/v1/jobs/{job_id}/cancel")
        deadline = time.monotonic() + 120
        while client.get(f"/v1/jobs/{job_id}").json()["status"] == "running" and time.monotonic() < deadline:
            time.sleep(0.5)


def _measure_all(url: str, routes: list[str], settings: LoadSettings) -> dict[tuple[int, str], Sample]:
    return {(n, route): _measure(url, route, settings.per_client, n) for n in settings.client_counts for route in routes}


def measure_conditions(folder: Path, settings: LoadSettings) -> dict:
    """Run the three conditions; return their samples, training rates and a description of the store."""
    store_root, what = build_store(folder, settings)
    store = Datastore(store_root)
    queued = store.queue()[0][0].case_id
    routes = ["/v1/queue", "/v1/cases", f"/v1/cases/{queued}"]
    results: dict = {"what": what, "routes": routes, "samples": {}, "steps_per_s": {}}
    saved = os.environ.get(PRIORITY_ENV)
    try:
        for condition, priority in (("idle", None), ("training", "background"), ("training, normal priority", "normal")):
            os.environ[PRIORITY_ENV] = priority or "background"
            with ServerProcess(store_root, log_path=folder / f"server-{priority}.log") as server, \
                    server.client(timeout=60) as client:
                if priority is None:
                    results["samples"][condition] = _measure_all(server.url, routes, settings)
                    continue
                with _training(client, settings.job_start_timeout_s) as job_id:
                    before, started = _steps(client.get(f"/v1/jobs/{job_id}").json()), time.monotonic()
                    results["samples"][condition] = _measure_all(server.url, routes, settings)
                    after = _steps(client.get(f"/v1/jobs/{job_id}").json())
                    results["steps_per_s"][condition] = (after - before) / (time.monotonic() - started)
    finally:
        if saved is None:
            os.environ.pop(PRIORITY_ENV, None)
        else:
            os.environ[PRIORITY_ENV] = saved
    return results


def format_table(results: dict, settings: LoadSettings) -> str:
    """Markdown: one row per (clients, route), idle and both training conditions side by side, p99 ratios."""
    idle, busy, normal = (results["samples"][c] for c in ("idle", "training", "training, normal priority"))
    rates = results["steps_per_s"]
    lines = [
        f"{results['what']}; {settings.per_client} requests per client per route; load average before the run "
        f"{os.getloadavg()[0]:.1f}. Training steps/s while measured: background worker "
        f"{rates['training']:.2f}, normal-priority worker {rates['training, normal priority']:.2f}.",
        "",
        "| clients | route | idle p50 / p99 ms | training p50 / p99 ms | p99 training / idle "
        "| normal-priority worker p50 / p99 ms | p99 normal / idle | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key in idle:
        clients, route = key
        label = route if not route.startswith("/v1/cases/") else "/v1/cases/{id}"
        (i50, i99), (b50, b99), (n50, n99) = idle[key].percentiles(), busy[key].percentiles(), normal[key].percentiles()
        errors = idle[key].errors + busy[key].errors + normal[key].errors
        lines.append(f"| {clients} | `GET {label}` | {i50:.1f} / {i99:.1f} | {b50:.1f} / {b99:.1f} | {b99 / i99:.2f}x "
                     f"| {n50:.1f} / {n99:.1f} | {n99 / i99:.2f}x | {errors} |")
    return "\n".join(lines)


def run(quick: bool) -> str:
    """Return the Markdown table (quick: 16 volumes, 20 clients, 10 requests each per route)."""
    settings = LoadSettings(cases=16, labelled=4, client_counts=(20,), per_client=10) if quick else LoadSettings()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    with tempfile.TemporaryDirectory() as tmp:
        results = measure_conditions(Path(tmp), settings)
    return format_table(results, settings)


if __name__ == "__main__":
    print(run(quick=True))  # noqa: T201 - manual run prints the table

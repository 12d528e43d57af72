"""API latency under load: p50/p99 of the queue and case-list endpoints with 20 concurrent clients, with the
server idle and while a training job runs in its child process. Target: p99 <= 100 ms. Loopback only.

Run alone: ``python -m Testing.benchmarks.run_all --only bench_api [--quick]``.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from activeseg.store.datastore import Datastore
from activeseg.io.volumes import read_volume

from Testing.server.support import ServerProcess, label_path, make_store, tiny_config

__all__ = ["run"]

CLIENTS = 20
ENDPOINTS = ("/v1/queue", "/v1/cases")


def _measure(url: str, path: str, per_client: int) -> list[float]:
    """Latencies (ms) of ``CLIENTS`` threads each sending ``per_client`` GETs over its own keep-alive client."""
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(CLIENTS)

    def client_loop() -> None:
        mine = []
        with httpx.Client(base_url=url, timeout=30) as client:
            client.get("/v1/health")  # connect before the clock starts
            barrier.wait()
            for _ in range(per_client):
                started = time.perf_counter()
                response = client.get(path)
                mine.append((time.perf_counter() - started) * 1000.0)
                response.raise_for_status()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client_loop) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


def _row(condition: str, path: str, values: list[float]) -> str:
    p50, p99 = np.percentile(values, [50, 99])
    verdict = "ok" if p99 <= 100.0 else "over target"
    return f"| {condition} | `GET {path}` | {len(values)} | {p50:.1f} | {p99:.1f} | {max(values):.1f} | {verdict} |"


def run(quick: bool) -> str:
    """Return a Markdown table of latencies (ms)."""
    cases = 12 if quick else 48
    per_client = 10 if quick else 50
    config = tiny_config()
    config.training.epochs_first = 10_000  # runs until cancelled: the load is what matters
    config.training.num_threads = 0  # torch's default: all cores, the worst case for the server
    rows = [
        f"{CLIENTS} concurrent clients, {per_client} requests each per endpoint; {cases} cases in the store.",
        "",
        "| condition | endpoint | requests | p50 ms | p99 ms | max ms | p99 <= 100 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        store_root, source = make_store(Path(tmp), count=cases, config=config)
        store = Datastore(store_root)
        ids = [c.case_id for c in store.cases(split="train")]
        for case_id in ids[:3]:
            store.submit_label(case_id, read_volume(label_path(source, case_id)), annotator="bench")
        store.set_queue(ids[3:])
        with ServerProcess(store_root) as server, server.client() as client:
            for path in ENDPOINTS:
                rows.append(_row("idle", path, _measure(server.url, path, per_client)))
            job = client.post("/v1/jobs/train").json()
            deadline = time.monotonic() + 120
            while client.get(f"/v1/jobs/{job['job_id']}").json()["progress"].get("phase") != "train":
                if time.monotonic() > deadline:
                    raise RuntimeError("training job did not start")
                time.sleep(0.2)
            for path in ENDPOINTS:
                rows.append(_row("training job running", path, _measure(server.url, path, per_client)))
            client.post(f"/v1/jobs/{job['job_id']}/cancel")
    return "\n".join(rows)


if __name__ == "__main__":
    print(run(quick=True))  # noqa: T201 - manual run prints the table

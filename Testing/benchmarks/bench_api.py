"""API latency under load: p50/p99 of the queue and case-list endpoints with 20 and 50 concurrent clients, with
the server idle and while a training job runs in its child process, side by side (issue 12, item 15).
Target: p99 <= 100 ms. Loopback only. Timings are only meaningful on an otherwise idle machine: the table's
header names the machine, and a shared or loaded machine makes both columns noise.

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

CLIENT_COUNTS = (20, 50)
ENDPOINTS = ("/v1/queue", "/v1/cases")


def _measure(url: str, path: str, per_client: int, clients: int) -> list[float]:
    """Latencies (ms) of ``clients`` threads each sending ``per_client`` GETs over its own keep-alive client."""
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

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

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


def _row(clients: int, path: str, idle: list[float], busy: list[float]) -> str:
    """One table row: idle and training latencies side by side, and the p99 ratio."""
    idle_p50, idle_p99 = np.percentile(idle, [50, 99])
    busy_p50, busy_p99 = np.percentile(busy, [50, 99])
    verdict = "ok" if busy_p99 <= 100.0 else "over target"
    return (f"| {clients} | `GET {path}` | {len(idle)} | {idle_p50:.1f} | {idle_p99:.1f} | {busy_p50:.1f} | "
            f"{busy_p99:.1f} | {busy_p99 / max(idle_p99, 1e-9):.1f}x | {verdict} |")


def run(quick: bool) -> str:
    """Return a Markdown table of latencies (ms): idle and with a training job, per client count and endpoint."""
    cases = 12 if quick else 48
    per_client = 10 if quick else 50
    config = tiny_config()
    config.training.epochs_first = 10_000  # runs until cancelled: the load is what matters
    config.training.num_threads = 0  # torch's default: all cores, the worst case for the server
    rows = [
        f"{per_client} requests per client per endpoint; {cases} cases in the store; training with all cores.",
        "",
        "| clients | endpoint | requests | idle p50 ms | idle p99 ms | training p50 ms | training p99 ms "
        "| p99 training/idle | training p99 <= 100 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        store_root, source = make_store(Path(tmp), count=cases, config=config)
        store = Datastore(store_root)
        ids = [c.case_id for c in store.cases(split="train")]
        for case_id in ids[:3]:
            store.submit_label(case_id, read_volume(label_path(source, case_id)), annotator="bench")
        store.set_queue(ids[3:])
        with ServerProcess(store_root) as server, server.client() as client:
            idle = {(n, path): _measure(server.url, path, per_client, n) for n in CLIENT_COUNTS for path in ENDPOINTS}
            job = client.post("/v1/jobs/train").json()
            deadline = time.monotonic() + 120
            while client.get(f"/v1/jobs/{job['job_id']}").json()["progress"].get("phase") != "train":
                if time.monotonic() > deadline:
                    raise RuntimeError("training job did not start")
                time.sleep(0.2)
            try:
                busy = {key: _measure(server.url, key[1], per_client, key[0]) for key in idle}
            finally:
                client.post(f"/v1/jobs/{job['job_id']}/cancel")
        rows += [_row(n, path, idle[(n, path)], busy[(n, path)]) for n, path in idle]
    return "\n".join(rows)


if __name__ == "__main__":
    print(run(quick=True))  # noqa: T201 - manual run prints the table

"""A CT download in the Slicer module, on a worker thread vs by a helper process, with Slicer's GIL-held main thread
modelled and with an idle main thread, side by side (issue 13 item 6).

What is measured: end to end as the module's widget runs it -- ``BackgroundTasks.submit`` of the Logic's
``BackendSession.download("image", case)`` until its ``on_done`` runs on the main thread with the file's bytes --
against the real backend (``activeseg serve`` on 127.0.0.1, bearer token) over a datastore holding one CT-sized
volume (512 x 512 x 300 int16, generated: air, a noisy soft-tissue body, two lungs, a spine; stored as the
``.nii.gz`` a datastore usually holds). ``bulk_transfers="thread"`` is the old path (urllib on a worker thread),
``"process"`` the new one (:mod:`ActiveSegLib.transfer`: a helper process streams the file to disk, the poll
timer notices it exited). One small JSON request (``GET /v1/cases/{id}``) on a worker thread is timed too: it
stays on threads.

The model of Slicer's main thread: PythonQt never enables thread support, so Slicer's main thread keeps the GIL
while Qt idles in its event loop -- blocked in ``poll()``, not computing -- and Python code of other threads runs
only when the main thread executes Python, i.e. when the module's 100 ms ``QTimer`` fires and runs
``BackgroundTasks.poll``: at the interpreter's eval-breaker checks in that slot the waiting worker gets the GIL
(CPython's forced switch) and keeps it for one switch interval (5 ms) or until it blocks in a system call, and the
main thread takes it back for the next 100 ms. The model does exactly that: ``usleep(100 ms)`` called through
``ctypes.PyDLL`` (which, unlike ``ctypes.CDLL``, keeps the GIL during the call), then the real ``poll()``. It holds
the GIL like the Qt loop without burning a core (a ``sum(range(N))`` busy loop holds it the same way but would
take a CPU from the server and the helper on a small machine, which Slicer's idle main thread does not; it is used
only where ``usleep`` is missing). Other Python on Slicer's main thread (other modules' timers, observers) gives
threads more chances, so the thread path's figure under the model is an upper end, as the issue's measurements
inside Slicer (64 MiB: 0.3 s -> 2.6-4.6 s) were. "Idle" sleeps between the same 100 ms polls, releasing the GIL.

Timings mean something only on an otherwise idle machine (the header names it). Run alone:
``python -m Testing.benchmarks.run_all --only bench_gil_transfer [--quick]``.
"""

from __future__ import annotations

import ctypes
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

MODULE_DIR = Path(__file__).resolve().parents[2] / "ActiveSegModule"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

from ActiveSegLib.client import Download  # noqa: E402
from ActiveSegLib.session import BackendSession  # noqa: E402
from ActiveSegLib.worker import BackgroundTasks  # noqa: E402

__all__ = ["run", "hold_gil"]

TOKEN = "bench-gil-token"
TICK_S = 0.1  #: the module's poll timer interval


def _busy_hold(seconds: float) -> None:
    """Hold the GIL for about ``seconds`` in C code that never checks the eval breaker (burns a core)."""
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        sum(range(200_000))  # ~2 ms in C, no eval-breaker check inside; checks happen between chunks


def _usleep_holding_gil() -> Callable[[float], None] | None:
    try:
        usleep = ctypes.PyDLL(None).usleep  # PyDLL: the GIL stays held during the call
    except (AttributeError, OSError, TypeError):
        return None
    usleep.argtypes = [ctypes.c_uint]
    return lambda seconds: usleep(int(seconds * 1e6))


#: Block for a number of seconds without releasing the GIL (Slicer's idle Qt loop under PythonQt).
hold_gil: Callable[[float], None] = _usleep_holding_gil() or _busy_hold


def _run_until(done: Callable[[], bool], tick: Callable[[], Any], gil_held: bool, timeout_s: float = 600.0) -> None:
    """The main thread: every :data:`TICK_S`, ``tick()`` (the QTimer slot); in between hold the GIL or sleep."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError("the transfer did not finish")
        if gil_held:
            hold_gil(TICK_S)
        else:
            time.sleep(TICK_S)
        tick()


def _timed(fn: Callable[[], Any], gil_held: bool) -> tuple[float, Any]:
    """Seconds from submitting ``fn`` to a worker until its (settled) result reaches ``on_done``; the result."""
    tasks = BackgroundTasks(max_workers=2)
    box: list[Any] = []
    try:
        started = time.perf_counter()
        tasks.submit(fn, on_done=box.append, on_error=box.append)
        _run_until(lambda: bool(box), tasks.poll, gil_held)
        elapsed = time.perf_counter() - started
    finally:
        tasks.shutdown()
    if isinstance(box[0], BaseException):
        raise box[0]
    return elapsed, box[0]


def _write_ct(path: Path, slices: int) -> None:
    """A CT-like int16 volume, 512 x 512 x ``slices`` (HU; 0.7 x 0.7 x 1.5 mm), written as ``.nii.gz``."""
    from activeseg.io.volumes import Geometry, write_volume

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:512, 0:512].astype(np.float32)
    body = ((x - 256) / 220) ** 2 + ((y - 256) / 170) ** 2 <= 1
    lungs = ((((x - 170) / 70) ** 2 + ((y - 240) / 95) ** 2) <= 1) | ((((x - 342) / 70) ** 2 + ((y - 240) / 95) ** 2) <= 1)
    spine = ((x - 256) / 28) ** 2 + ((y - 360) / 28) ** 2 <= 1
    template = np.full((512, 512), -1000, np.int16)
    template[body] = 40
    template[lungs] = -850
    template[spine] = 700
    volume = np.empty((slices, 512, 512), np.int16)
    for k in range(slices):
        noise = rng.normal(0, 25, (512, 512)).astype(np.int16)
        volume[k] = template + np.where(body, noise, (noise // 5))
    geometry = Geometry(size=(512, 512, slices), spacing=(0.7, 0.7, 1.5), origin=(-179.0, -179.0, 0.0),
                        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    write_volume(volume, geometry, path)


def run(quick: bool) -> str:
    """Return a Markdown table: seconds per download (median of the repeats), thread vs process path, with the
    GIL-held main-thread model and an idle main thread, and their ratios."""
    from activeseg.store.datastore import Datastore

    from Testing.server.support import ServerProcess, tiny_config

    slices = 40 if quick else 300
    repeats = 1 if quick else 3
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        image = root / "ct_000.nii.gz"
        _write_ct(image, slices)
        store_root = root / "store"
        Datastore.create(store_root, [("ct_000", image)], tiny_config())
        size = image.stat().st_size
        with ServerProcess(store_root, token=TOKEN) as server:
            sessions = {mode: BackendSession(bulk_transfers=mode, transfer_temp_dir=tmp) for mode in ("thread", "process")}
            for session in sessions.values():
                session.connect(server.url, TOKEN)
            seconds: dict[tuple[str, bool], float] = {}
            reference = image.read_bytes()
            for gil_held in (True, False):
                for mode, session in sessions.items():
                    runs = []
                    for _ in range(repeats):
                        elapsed, download = _timed(lambda s=session: s.download("image", "ct_000"), gil_held)
                        if not (isinstance(download, Download) and download.data == reference):
                            raise AssertionError(f"{mode} path did not deliver the stored file")
                        runs.append(elapsed)
                    seconds[(mode, gil_held)] = statistics.median(runs)
                small = [_timed(lambda: sessions["thread"].client.case("ct_000"), gil_held)[0] for _ in range(repeats)]
                seconds[("json", gil_held)] = statistics.median(small)
    hold = "usleep via ctypes.PyDLL" if hold_gil is not _busy_hold else "sum(range) busy loop"
    rows = [
        f"Download of a {slices}-slice 512 x 512 int16 CT ({size / 2**20:.1f} MiB .nii.gz) from `activeseg serve` "
        f"on 127.0.0.1, end to end (submit -> on_done with the bytes), median of {repeats}; poll timer "
        f"{TICK_S * 1000:.0f} ms; GIL held between ticks with {hold}.",
        "",
        "| main thread | thread path s | process path s | thread / process | small JSON request on a thread s |",
        "|---|---|---|---|---|",
    ]
    for gil_held, label in ((True, "GIL held (Slicer model)"), (False, "idle")):
        thread, process = seconds[("thread", gil_held)], seconds[("process", gil_held)]
        rows.append(f"| {label} | {thread:.2f} | {process:.2f} | {thread / process:.1f}x | "
                    f"{seconds[('json', gil_held)]:.2f} |")
    rows.append(f"| GIL held / idle | {seconds[('thread', True)] / seconds[('thread', False)]:.1f}x | "
                f"{seconds[('process', True)] / seconds[('process', False)]:.1f}x | | "
                f"{seconds[('json', True)] / seconds[('json', False)]:.1f}x |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(run(quick="--full" not in sys.argv))  # noqa: T201 - manual run prints the table

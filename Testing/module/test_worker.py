"""BackgroundTasks: work runs on pool threads, callbacks run on the polling thread."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from .conftest import MODULE_DIR

from ActiveSegLib.worker import BackgroundTasks


@pytest.fixture()
def tasks():
    pool = BackgroundTasks(max_workers=2)
    yield pool
    pool.shutdown(wait=True)


def test_result_is_delivered_on_the_polling_thread(tasks: BackgroundTasks) -> None:
    main = threading.get_ident()
    seen: dict[str, object] = {}

    def work(a: int, b: int, *, scale: int) -> int:
        seen["worker"] = threading.get_ident()
        return (a + b) * scale

    def done(result: int) -> None:
        seen["result"] = result
        seen["callback"] = threading.get_ident()

    tasks.submit(work, 2, 3, scale=10, on_done=done)
    assert tasks.wait_idle(5)
    assert seen["result"] == 50
    assert seen["callback"] == main and seen["worker"] != main


def test_nothing_is_delivered_without_poll(tasks: BackgroundTasks) -> None:
    results: list[int] = []
    handle = tasks.submit(lambda: 1, on_done=results.append)
    deadline = time.monotonic() + 5
    while not handle.done and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    assert results == [] and tasks.pending == 1
    assert tasks.poll() == 1 and results == [1] and tasks.pending == 0


def test_poll_never_blocks(tasks: BackgroundTasks) -> None:
    gate = threading.Event()
    tasks.submit(gate.wait, 5)
    started = time.monotonic()
    assert tasks.poll() == 0
    assert time.monotonic() - started < 0.5
    gate.set()


def test_errors_go_to_on_error(tasks: BackgroundTasks) -> None:
    errors: list[BaseException] = []

    def fail() -> None:
        raise ConnectionError("backend unreachable")

    tasks.submit(fail, on_done=lambda _: pytest.fail("on_done must not run"), on_error=errors.append)
    assert tasks.wait_idle(5)
    assert len(errors) == 1 and isinstance(errors[0], ConnectionError)


def test_unhandled_errors_are_logged(tasks: BackgroundTasks, caplog: pytest.LogCaptureFixture) -> None:
    def fail() -> None:
        raise ValueError("bad case id")

    with caplog.at_level(logging.ERROR, logger="ActiveSegLib.worker"):
        tasks.submit(fail, name="fetch case")
        assert tasks.wait_idle(5)
    assert "fetch case" in caplog.text and "bad case id" in caplog.text


def test_a_failing_callback_does_not_stop_the_others(tasks: BackgroundTasks, caplog: pytest.LogCaptureFixture) -> None:
    results: list[int] = []

    def broken(_: int) -> None:
        raise RuntimeError("widget bug")

    tasks.submit(lambda: 1, on_done=broken)
    tasks.submit(lambda: 2, on_done=results.append)
    with caplog.at_level(logging.ERROR):
        assert tasks.wait_idle(5)
    assert results == [2]
    assert "widget bug" in caplog.text


def test_cancel_before_start_skips_the_function(tasks: BackgroundTasks) -> None:
    single = BackgroundTasks(max_workers=1)
    try:
        gate = threading.Event()
        ran: list[str] = []
        single.submit(gate.wait, 5)
        queued = single.submit(lambda: ran.append("ran"), on_done=lambda _: ran.append("done"))
        assert queued.cancel() is True
        gate.set()
        assert single.wait_idle(5)
        assert ran == [] and queued.cancelled
    finally:
        single.shutdown(wait=True)


def test_cancel_while_running_drops_the_callback(tasks: BackgroundTasks) -> None:
    gate = threading.Event()
    started = threading.Event()
    results: list[str] = []

    def work() -> str:
        started.set()
        gate.wait(5)
        return "late"

    handle = tasks.submit(work, on_done=results.append, on_error=results.append)
    assert started.wait(5)
    assert handle.cancel() is False  # already running: cannot be stopped, only ignored
    gate.set()
    assert tasks.wait_idle(5)
    assert results == []


def test_call_soon_from_a_worker_runs_on_poll(tasks: BackgroundTasks) -> None:
    main = threading.get_ident()
    progress: list[tuple[int, int]] = []

    def work() -> str:
        for step in range(3):
            tasks.call_soon(lambda s=step: progress.append((s, threading.get_ident())))
        return "ok"

    tasks.submit(work)
    assert tasks.wait_idle(5)
    tasks.poll()
    assert [p[0] for p in progress] == [0, 1, 2]
    assert all(p[1] == main for p in progress)


def test_poll_max_items(tasks: BackgroundTasks) -> None:
    for n in range(3):
        tasks.call_soon(lambda: None)
    assert tasks.poll(max_items=2) == 2
    assert tasks.poll() == 1


def test_tasks_run_concurrently(tasks: BackgroundTasks) -> None:
    barrier = threading.Barrier(2, timeout=5)
    results: list[str] = []
    tasks.submit(lambda: barrier.wait() is not None and "a", on_done=results.append)
    tasks.submit(lambda: barrier.wait() is not None and "b", on_done=results.append)
    assert tasks.wait_idle(5)
    assert sorted(results) == ["a", "b"]


def test_submit_after_shutdown_raises() -> None:
    pool = BackgroundTasks()
    pool.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(lambda: None)


def test_interpreter_exit_does_not_wait_for_a_running_task(tmp_path: Path) -> None:
    """Closing Slicer must not hang for the HTTP timeout (30-120 s): worker threads are not joined at exit."""
    script = tmp_path / "quit.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(MODULE_DIR)!r})
        from ActiveSegLib.worker import BackgroundTasks
        tasks = BackgroundTasks()
        tasks.submit(time.sleep, 30)   # a request stuck waiting for a slow backend
        time.sleep(0.2)
        tasks.shutdown()               # what the widget's cleanup() does
    """))
    started = time.monotonic()
    subprocess.run([sys.executable, str(script)], check=True, timeout=60)
    assert time.monotonic() - started < 10, "the interpreter waited for the worker thread at exit"

"""Run blocking work (HTTP calls, file decoding) off Slicer's main thread; hand results back on it. Stdlib only.

Worker threads are *daemon* threads of this module's own small pool (not ``concurrent.futures``'s executor, whose
threads the interpreter joins at exit): quitting Slicer never waits for a request stuck on a slow backend.

Qt and MRML objects may only be touched from the main thread, so worker threads never call back directly:
finished tasks land in a :class:`queue.Queue`, and :meth:`BackgroundTasks.poll` (called by the widget from a
``qt.QTimer``, e.g. every 100 ms) runs their ``on_done``/``on_error`` callbacks on the caller's thread. Keeping
Qt out of this file makes it testable with plain pytest.

A task may return a :class:`Deferred` instead of its final value: work that goes on outside this interpreter (a
download by a helper process, :mod:`ActiveSegLib.transfer`) and that :meth:`BackgroundTasks.poll` advances with
``step()`` on the main thread, cheaply, until it is finished; ``on_done`` then gets its ``result()``. Cancelling the
task or shutting the pool down cancels it (the helper is killed, its files removed). Scripts wait with :func:`settle`.

Example (in a widget):
    >>> tasks = BackgroundTasks()                                                   # doctest: +SKIP
    >>> timer = qt.QTimer(); timer.timeout.connect(tasks.poll); timer.start(100)   # doctest: +SKIP
    >>> tasks.submit(client.next_case, on_done=self.showCase, on_error=self.showError)  # doctest: +SKIP
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = ["BackgroundTasks", "Deferred", "TaskHandle", "settle"]

logger = logging.getLogger(__name__)


@dataclass
class TaskHandle:
    """A submitted task.

    Attributes:
        task_id: increasing number, unique per :class:`BackgroundTasks`.
        name: label for logs (the function's name by default).
    """

    task_id: int
    name: str
    _future: concurrent.futures.Future[Any] = field(repr=False)
    _cancelled: threading.Event = field(default_factory=threading.Event, repr=False)

    def cancel(self) -> bool:
        """Drop the task's callbacks; also skip running it if it has not started.

        A running function cannot be interrupted (Python threads cannot be killed); its result is discarded.

        Returns:
            ``True`` if the function will not run at all.
        """
        self._cancelled.set()
        return self._future.cancel()

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._cancelled.is_set()

    @property
    def done(self) -> bool:
        """Whether the function finished (or was cancelled before it ran). Callbacks may still be pending."""
        return self._future.done()


_Callback = Callable[[Any], None]


@runtime_checkable
class Deferred(Protocol):
    """A value still being produced outside this interpreter, advanced by polling (never by blocking).

    ``step`` may be called often (every poll tick) and must return at once; ``result`` is read once ``step``
    returned ``True``; ``cancel`` stops the work and frees what it holds (idempotent).
    """

    def step(self) -> bool:
        """Advance without blocking; ``True`` once :meth:`result` is ready."""

    def result(self) -> Any:
        """The final value (or raise the work's error)."""

    def cancel(self) -> None:
        """Stop the work and clean up."""


def settle(value: Any, interval_s: float = 0.01) -> Any:
    """``value`` itself, or, for a :class:`Deferred`, its result once finished (blocking: scripts and tests).

    An exception (or KeyboardInterrupt) while waiting cancels the deferred work before it propagates.
    """
    if not isinstance(value, Deferred):
        return value
    import time

    try:
        while not value.step():
            time.sleep(interval_s)
        return value.result()
    except BaseException:
        value.cancel()
        raise


class BackgroundTasks:
    """A small thread pool whose results are delivered by :meth:`poll` on the polling thread.

    Args:
        max_workers: threads running tasks at once (network calls: 2-4 is plenty).
        name: thread name prefix, shows in debuggers and logs.
    """

    def __init__(self, max_workers: int = 2, name: str = "activeseg-task") -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers!r}")
        self._max_workers = int(max_workers)
        self._name = name
        self._threads: list[threading.Thread] = []
        self._jobs: queue.Queue[tuple[concurrent.futures.Future[Any], Callable[[], None]] | None] = queue.Queue()
        self._results: queue.Queue[tuple[Callable[..., None] | None, tuple[Any, ...]]] = queue.Queue()
        self._ids = itertools.count(1)
        self._pending: set[int] = set()
        self._lock = threading.Lock()
        self._closed = False
        #: Tasks whose function returned a :class:`Deferred`, stepped by :meth:`poll` (main thread only).
        self._deferred: dict[int, tuple[str, threading.Event, _Callback | None,
                                        Callable[[BaseException], None] | None, Deferred]] = {}

    @property
    def pending(self) -> int:
        """Tasks submitted whose callbacks have not been delivered by :meth:`poll` yet."""
        with self._lock:
            return len(self._pending)

    def submit(self, fn: Callable[..., Any], *args: Any, on_done: _Callback | None = None,
               on_error: Callable[[BaseException], None] | None = None, name: str | None = None,
               **kwargs: Any) -> TaskHandle:
        """Run ``fn(*args, **kwargs)`` on a worker thread.

        Args:
            fn: the blocking function. It must not touch Qt or MRML objects.
            *args, **kwargs: its arguments.
            on_done: called by :meth:`poll` with ``fn``'s return value.
            on_error: called by :meth:`poll` with the exception ``fn`` raised; without it, the error is logged.
            name: label for logs.

        Returns:
            a handle to cancel the task.

        Raises:
            RuntimeError: after :meth:`shutdown`.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("BackgroundTasks is shut down")
            task_id = next(self._ids)
            self._pending.add(task_id)
        label = name or getattr(fn, "__name__", repr(fn))
        cancelled = threading.Event()

        def run() -> None:
            if cancelled.is_set():
                return
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - delivered to on_error, never lost in the pool
                self._results.put((self._deliver_error, (task_id, label, cancelled, on_error, exc)))
            else:
                self._results.put((self._deliver_done, (task_id, label, cancelled, on_done, result, on_error)))

        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._jobs.put((future, run))
        self._spawn_worker()
        handle = TaskHandle(task_id=task_id, name=label, _future=future, _cancelled=cancelled)
        # A task cancelled before it ran never reports: count it as delivered.
        future.add_done_callback(lambda f: self._forget(task_id) if f.cancelled() else None)
        return handle

    def call_soon(self, fn: Callable[..., None], *args: Any) -> None:
        """Schedule ``fn(*args)`` for the next :meth:`poll`; thread-safe (e.g. progress from inside a task)."""
        self._results.put((fn, args))

    def poll(self, max_items: int | None = None) -> int:
        """Deliver finished tasks' callbacks on the calling (main) thread, and step deferred results (each
        ``step()`` returns at once). Never blocks.

        A callback that raises is logged and does not stop the others (a QTimer slot must not raise).

        Args:
            max_items: deliver at most this many (``None``: everything queued now).

        Returns:
            how many callbacks were delivered.
        """
        delivered = 0
        while max_items is None or delivered < max_items:
            try:
                fn, args = self._results.get_nowait()
            except queue.Empty:
                break
            try:
                if fn is not None:
                    fn(*args)
            except Exception:  # noqa: BLE001 - keep the timer alive
                logger.exception("ActiveSeg callback %r failed", getattr(fn, "__name__", fn))
            delivered += 1
        for task_id in list(self._deferred):
            if max_items is not None and delivered >= max_items:
                break
            delivered += self._step_deferred(task_id)
        return delivered

    def wait_idle(self, timeout_s: float = 10.0, interval_s: float = 0.01) -> bool:
        """Poll until no task is pending (for tests and scripts; the GUI relies on its timer instead).

        Returns:
            ``True`` if everything was delivered within ``timeout_s``.
        """
        import time

        deadline = time.monotonic() + timeout_s
        while True:
            self.poll()
            if self.pending == 0:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(interval_s)

    def shutdown(self, wait: bool = False) -> None:
        """Stop accepting tasks and cancel those not started; undelivered results are dropped.

        Args:
            wait: block until running tasks finish (their callbacks are not delivered).
        """
        with self._lock:
            self._closed = True
            self._pending.clear()
            threads = list(self._threads)
        deferred, self._deferred = self._deferred, {}
        for *_, work in deferred.values():  # helper processes killed, their files removed: nothing waits
            self._cancel_quietly(work)
        while True:  # cancel what has not started
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[0].cancel()
        for _ in threads:
            self._jobs.put(None)  # one stop marker per worker
        if wait:
            for thread in threads:
                thread.join()
        while not self._results.empty():
            try:
                self._results.get_nowait()
            except queue.Empty:
                break

    # ------------------------------------------------------------------ workers

    def _spawn_worker(self) -> None:
        """Start another daemon worker while there are fewer than ``max_workers`` and work is waiting."""
        with self._lock:
            busy = sum(1 for t in self._threads if t.is_alive())
            if busy >= self._max_workers:
                return
            thread = threading.Thread(target=self._work, name=f"{self._name}-{len(self._threads) + 1}", daemon=True)
            self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, run = job
            if not future.set_running_or_notify_cancel():
                continue  # cancelled before it started
            try:
                run()  # never raises: run() reports through the results queue
            finally:
                future.set_result(None)

    # ------------------------------------------------------------------ delivery (main thread)

    def _forget(self, task_id: int) -> None:
        with self._lock:
            self._pending.discard(task_id)

    def _deliver_done(self, task_id: int, label: str, cancelled: threading.Event, on_done: _Callback | None,
                      result: Any, on_error: Callable[[BaseException], None] | None = None) -> None:
        if isinstance(result, Deferred):
            if cancelled.is_set() or self._closed:
                self._forget(task_id)
                self._cancel_quietly(result)
                logger.debug("task %s finished after it was cancelled; deferred work cancelled", label)
                return
            self._deferred[task_id] = (label, cancelled, on_done, on_error, result)
            self._step_deferred(task_id)
            return
        self._forget(task_id)
        if cancelled.is_set():
            logger.debug("task %s finished after it was cancelled; result dropped", label)
        elif on_done is not None:
            on_done(result)

    def _step_deferred(self, task_id: int) -> int:
        """Advance one deferred result; deliver it when finished. Returns 1 when a callback was delivered."""
        label, cancelled, on_done, on_error, work = self._deferred[task_id]
        if cancelled.is_set():
            del self._deferred[task_id]
            self._forget(task_id)
            self._cancel_quietly(work)
            logger.debug("task %s cancelled while its deferred work ran", label)
            return 0
        try:
            if not work.step():
                return 0
            value = work.result()
        except Exception as exc:  # noqa: BLE001 - delivered to on_error like a task's own failure
            del self._deferred[task_id]
            self._cancel_quietly(work)
            try:
                self._deliver_error(task_id, label, cancelled, on_error, exc)
            except Exception:  # noqa: BLE001 - keep the timer alive
                logger.exception("ActiveSeg error callback of %s failed", label)
            return 1
        del self._deferred[task_id]
        self._forget(task_id)
        try:
            if on_done is not None:
                on_done(value)
        except Exception:  # noqa: BLE001 - keep the timer alive
            logger.exception("ActiveSeg callback of %s failed", label)
        return 1

    @staticmethod
    def _cancel_quietly(work: Deferred) -> None:
        try:
            work.cancel()
        except Exception:  # noqa: BLE001 - cleanup must not stop the others
            logger.exception("cancelling deferred work %r failed", work)

    def _deliver_error(self, task_id: int, label: str, cancelled: threading.Event,
                       on_error: Callable[[BaseException], None] | None, exc: BaseException) -> None:
        self._forget(task_id)
        if cancelled.is_set():
            logger.debug("task %s failed after it was cancelled: %s", label, exc)
        elif on_error is not None:
            on_error(exc)
        else:
            logger.error("ActiveSeg task %s failed: %s", label, exc, exc_info=exc)

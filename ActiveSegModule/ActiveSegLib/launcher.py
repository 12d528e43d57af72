"""Start and stop a local ActiveSeg backend (``python -m activeseg serve``) from Slicer. Stdlib only.

The backend runs in its own Python (with torch/MONAI), never in Slicer's. It prints one machine-readable line
when it listens, ``ACTIVESEG_SERVER_URL=http://127.0.0.1:PORT``; :meth:`BackendLauncher.start` waits for it.

Process handling, per platform (the way ``slicer.util.launchConsoleProcess`` and SlicerMONAIAuto3DSeg do it):
    * POSIX: the child leads a new session (process group); :meth:`~BackendLauncher.stop` sends SIGTERM to the
      group, SIGKILL after a grace period, and SIGKILL again to any child that outlived the leader.
    * Windows: the child is created without a console window (``CREATE_NO_WINDOW``; Slicer has no console, so
      CTRL_BREAK could never reach it). :meth:`~BackendLauncher.stop` ends the process *tree*: with ``psutil``
      when importable (terminate, then kill what is left after the grace period), else ``taskkill /T /F``.

The bearer token travels in the child's environment (:data:`~ActiveSegLib.protocol.TOKEN_ENV`), never on its
command line, where any user of the machine could read it.

Example:
    >>> launcher = BackendLauncher("/opt/activeseg/bin/python", "/data/lungs")  # doctest: +SKIP
    >>> url = launcher.start(timeout_s=60)                                       # doctest: +SKIP
    >>> launcher.stop()                                                           # doctest: +SKIP
"""

from __future__ import annotations

import collections
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence

from types import ModuleType
from typing import Any

from .errors import BackendStartError
from .protocol import TOKEN_ENV, URL_LINE_PREFIX

__all__ = ["BackendLauncher", "find_free_port", "popen_options", "terminate_tree_windows"]

logger = logging.getLogger(__name__)

# Windows process creation flags (numeric: the names exist only in Windows builds of ``subprocess``).
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NO_WINDOW = 0x08000000

# ``subprocess.run``, looked up at call time so tests on POSIX can stand in for ``taskkill``.
_run = subprocess.run

# Variables that describe the *host* interpreter (Slicer's embedded Python); passed on, they make another
# Python load Slicer's standard library and site-packages.
_HOST_PYTHON_VARIABLES = ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONEXECUTABLE")


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (the OS picks it; another process may still take it).

    Prefer ``port=0`` for the backend itself, which then reports the port it bound.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _resolve_python(python: str) -> str:
    """The interpreter's absolute path, or ``BackendStartError`` naming what was tried."""
    candidate = os.path.expanduser(python)
    if os.sep in candidate or (os.altsep and os.altsep in candidate):
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return os.path.abspath(candidate)
        raise BackendStartError(f"backend Python interpreter not found or not executable: {python!r}")
    found = shutil.which(candidate)
    if found is None:
        raise BackendStartError(f"backend Python interpreter {python!r} not found on PATH")
    return found


def popen_options(platform: str) -> dict[str, Any]:
    """``subprocess.Popen`` keyword arguments that make the child a tree :meth:`BackendLauncher.stop` can end.

    Args:
        platform: ``sys.platform`` (``"win32"``, ``"linux"``, ``"darwin"``).

    Returns:
        Windows: ``creationflags`` with ``CREATE_NO_WINDOW`` (no console window pops up) and
        ``CREATE_NEW_PROCESS_GROUP``. POSIX: ``start_new_session=True`` (the child leads its own process group).
    """
    if platform == "win32":
        return {"creationflags": CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW}
    return {"start_new_session": True}


def _import_psutil() -> ModuleType | None:
    try:
        import psutil  # optional: Slicer does not ship it, a user may have installed it
    except ImportError:
        return None
    return psutil


def terminate_tree_windows(pid: int, grace_s: float, *, psutil: ModuleType | None = None,
                           run: Any = subprocess.run) -> str:
    """End a Windows process and all its descendants (training workers included).

    With ``psutil``: terminate the parent and every descendant, wait up to ``grace_s`` seconds, kill the rest.
    Without: ``taskkill /PID <pid> /T /F`` (the tree, forcibly), with no console window.

    Args:
        pid: the backend's process id.
        grace_s: seconds to wait after terminating before killing.
        psutil: the ``psutil`` module, or ``None`` to use ``taskkill``.
        run: ``subprocess.run`` (replaceable in tests, which cannot run ``taskkill``).

    Returns:
        ``"psutil"`` or ``"taskkill"``: the way it was done.
    """
    if psutil is not None:
        try:
            parent = psutil.Process(pid)
            tree = [*parent.children(recursive=True), parent]
        except psutil.NoSuchProcess:
            return "psutil"
        for process in tree:
            try:
                process.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(tree, timeout=grace_s)
        for process in alive:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5.0)
        return "psutil"
    result = run(["taskkill", "/PID", str(pid), "/T", "/F"], capture_output=True, check=False,
                 creationflags=CREATE_NO_WINDOW)
    if getattr(result, "returncode", 0) not in (0, 128):  # 128: the process had already exited
        logger.warning("taskkill /T /F of pid %d answered %s: %s", pid, result.returncode,
                       (getattr(result, "stdout", b"") or b"")[:200])
    return "taskkill"


class BackendLauncher:
    """A local backend process: start it, learn its URL, read its output, stop its process tree.

    Thread-safe in the ways Slicer needs: :meth:`stop` may be called from the main thread while :meth:`start`
    waits on a worker thread (the start then fails with "stopped while starting" and leaves nothing running),
    and :meth:`wait_ready` lets a second caller join a start in progress.

    Args:
        python: the backend environment's interpreter (path, or a name looked up on ``PATH``).
        data_dir: the datastore folder passed as ``--data``.
        host: interface to listen on (keep ``127.0.0.1`` unless a token is set).
        port: TCP port; 0 lets the backend pick a free one and report it.
        token: bearer token the backend will require, passed in its environment as ``ACTIVESEG_TOKEN``.
        extra_args: more ``serve`` arguments, appended as given.
        env: the child's environment; default: this process's, without host-Python variables such as
            ``PYTHONHOME``/``PYTHONPATH``. Inside Slicer pass ``slicer.util.startupEnvironment()``.
        max_log_lines: how many output lines to keep (older ones are dropped).
        platform: ``sys.platform``; tests pass ``"win32"`` to drive the Windows branches on any system.
    """

    def __init__(self, python: str, data_dir: str, host: str = "127.0.0.1", port: int = 0,
                 token: str | None = None, extra_args: Sequence[str] = (), *,
                 env: Mapping[str, str] | None = None, max_log_lines: int = 2000, platform: str = sys.platform) -> None:
        if not 0 <= int(port) <= 65535:
            raise ValueError(f"port must be in 0..65535, got {port!r}")
        self.python = python
        self.data_dir = data_dir
        self.host = host
        self.port = int(port)
        self.token = token
        self.extra_args = tuple(str(a) for a in extra_args)
        self.env = dict(env) if env is not None else None
        self.platform = platform
        self.kill_wait_s = 10.0  # seconds to wait for the process to vanish after the forced kill
        self._lines: collections.deque[str] = collections.deque(maxlen=max_log_lines)
        self._lock = threading.Lock()  # output lines
        self._state = threading.Lock()  # spawning vs stopping
        self._url_seen = threading.Event()
        self._output_closed = threading.Event()
        self._stop_requested = threading.Event()
        self._finished_start = threading.Event()
        self._start_error: BackendStartError | None = None
        self._starting = False
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._url: str | None = None

    # ------------------------------------------------------------------ state

    @property
    def url(self) -> str | None:
        """The backend's base URL once :meth:`start` returned, else ``None``."""
        return self._url if self._finished_start.is_set() and self._start_error is None else None

    @property
    def running(self) -> bool:
        """Whether the process was started and has not exited."""
        return self._process is not None and self._process.poll() is None

    @property
    def starting(self) -> bool:
        """Whether :meth:`start` is waiting for the backend's URL right now."""
        return self._starting

    @property
    def stop_requested(self) -> bool:
        """Whether :meth:`stop` was called (a stopped launcher is not started again)."""
        return self._stop_requested.is_set()

    @property
    def pid(self) -> int | None:
        """The backend's process id (on POSIX also its process group id), or ``None`` before start."""
        return self._process.pid if self._process is not None else None

    @property
    def returncode(self) -> int | None:
        """The exit status once the process ended, else ``None``."""
        return self._process.poll() if self._process is not None else None

    def command(self) -> list[str]:
        """The command line :meth:`start` runs. It never contains the token (see :meth:`child_env`)."""
        args = [self.python, "-m", "activeseg", "serve", "--data", str(self.data_dir),
                "--host", self.host, "--port", str(self.port)]
        return args + list(self.extra_args)

    def log_tail(self, lines: int = 50) -> str:
        """The last ``lines`` lines the backend printed (stdout and stderr merged), newline-joined."""
        with self._lock:
            tail = list(self._lines)[-lines:] if lines > 0 else []
        return "\n".join(tail)

    # ------------------------------------------------------------------ start / stop

    def child_env(self) -> dict[str, str]:
        """The child's environment: unbuffered output, the token (if any) in ``ACTIVESEG_TOKEN``."""
        if self.env is not None:
            env = dict(self.env)
        else:
            env = {k: v for k, v in os.environ.items() if k not in _HOST_PYTHON_VARIABLES}
        # Unbuffered, or the URL line may sit in the child's stdout buffer until it exits.
        env["PYTHONUNBUFFERED"] = "1"
        env.pop(TOKEN_ENV, None)  # never a token inherited from elsewhere
        if self.token:
            env[TOKEN_ENV] = self.token
        return env

    def _read_output(self, stream: object) -> None:
        """Reader thread: collect every line; note the URL line. Ends when the child closes its output."""
        try:
            for raw in stream:  # type: ignore[attr-defined]
                line = raw.rstrip("\r\n")
                with self._lock:
                    self._lines.append(line)
                if not self._url_seen.is_set() and line.startswith(URL_LINE_PREFIX):
                    self._url = line[len(URL_LINE_PREFIX):].strip()
                    self._url_seen.set()
        except (OSError, ValueError):  # stream closed under us by stop()
            pass
        finally:
            self._output_closed.set()

    def start(self, timeout_s: float = 60.0) -> str:
        """Start the backend and wait until it announces its URL.

        Args:
            timeout_s: seconds to wait for the ``ACTIVESEG_SERVER_URL=`` line.

        Returns:
            the base URL, e.g. ``http://127.0.0.1:41234``.

        Raises:
            BackendStartError: already running or stopped, the interpreter does not exist, the process could not
                be spawned, it exited before announcing a URL, :meth:`stop` was called meanwhile, or
                ``timeout_s`` passed (the process is then stopped). The error carries the last output lines.
        """
        try:
            url = self._start(timeout_s)
        except BackendStartError as exc:
            self._start_error = exc
            raise
        finally:
            self._starting = False
            self._finished_start.set()
        return url

    def _start(self, timeout_s: float) -> str:
        python = _resolve_python(self.python)
        args = self.command()
        args[0] = python
        with self._state:
            if self._stop_requested.is_set():
                raise BackendStartError("backend was stopped before it started")
            if self.running or self._starting:
                raise BackendStartError(f"backend already running or starting (pid {self.pid})")
            self._lines.clear()
            self._url_seen.clear()
            self._output_closed.clear()
            self._finished_start.clear()
            self._start_error = None
            self._url = None
            logger.info("starting backend: %s", " ".join(args))
            try:
                self._process = subprocess.Popen(  # noqa: S603 - arguments are a list, no shell
                    args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                    text=True, encoding="utf-8", errors="replace", bufsize=1, env=self.child_env(),
                    **popen_options(self.platform),
                )
            except OSError as exc:
                raise BackendStartError(f"could not start backend with {python!r}: {exc}") from exc
            self._starting = True
        process = self._process
        self._reader = threading.Thread(target=self._read_output, args=(process.stdout,),
                                        name="activeseg-backend-output", daemon=True)
        self._reader.start()

        deadline = time.monotonic() + timeout_s
        while not self._url_seen.wait(timeout=0.05):
            if self._stop_requested.is_set():
                raise BackendStartError("backend was stopped while it was starting", output=self.log_tail())
            if self._output_closed.is_set() or process.poll() is not None:
                # Give the reader a moment to collect the last lines (the traceback the user needs).
                self._output_closed.wait(timeout=2.0)
                if self._url_seen.is_set():
                    break
                code = process.wait()
                raise BackendStartError(f"backend exited with status {code} before it was ready",
                                        output=self.log_tail(), returncode=code)
            if time.monotonic() > deadline:
                output = self.log_tail()
                self.stop()
                raise BackendStartError(f"backend did not report its URL within {timeout_s:g} s; stopped it",
                                        output=output)
        url = self._url or ""
        if not url.startswith(("http://", "https://")):
            output = self.log_tail()
            self.stop()
            raise BackendStartError(f"backend announced a malformed URL {url!r}", output=output)
        if self._stop_requested.is_set():
            raise BackendStartError("backend was stopped while it was starting", output=self.log_tail())
        logger.info("backend ready at %s (pid %d)", url, process.pid)
        return url

    def wait_ready(self, timeout_s: float = 120.0) -> str:
        """Join a :meth:`start` in progress (from another thread): wait for its outcome.

        Returns:
            the URL the backend announced.

        Raises:
            BackendStartError: the start failed (its error) or did not end within ``timeout_s``.
        """
        if not self._finished_start.wait(timeout=timeout_s):
            raise BackendStartError(f"backend did not become ready within {timeout_s:g} s")
        if self._start_error is not None:
            raise self._start_error
        assert self._url is not None
        return self._url

    def _signal_group(self, sig: int) -> None:
        """POSIX: send ``sig`` to the backend's process group."""
        assert self._process is not None
        try:
            os.killpg(self._process.pid, sig)  # pgid == pid: start_new_session made it a group leader
        except ProcessLookupError:
            pass  # already gone (group empty)

    def stop(self, grace_s: float = 5.0) -> int | None:
        """Stop the backend's whole process tree; never leaves it running silently.

        POSIX: SIGTERM to the group, SIGKILL after ``grace_s`` seconds, then SIGKILL to any straggler in the group.
        Windows: :func:`terminate_tree_windows` (psutil, else ``taskkill /T /F``). Safe to call more than once, on
        a process that already exited, and while :meth:`start` is waiting on another thread.

        Returns:
            the exit status, or ``None`` if it was never started.

        Raises:
            BackendStartError: the process was still running after the forced kill (its pid is in the message).
        """
        with self._state:
            self._stop_requested.set()
            process = self._process
        if process is None:
            return None
        if process.poll() is None:
            logger.info("stopping backend (pid %d)", process.pid)
            if self.platform == "win32":
                terminate_tree_windows(process.pid, grace_s, psutil=_import_psutil(), run=_run)
            else:
                self._signal_group(signal.SIGTERM)
                try:
                    process.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    logger.warning("backend (pid %d) ignored SIGTERM for %g s; killing it", process.pid, grace_s)
                    self._signal_group(signal.SIGKILL)
            try:
                process.wait(timeout=self.kill_wait_s)
            except subprocess.TimeoutExpired as exc:
                raise BackendStartError(f"backend (pid {process.pid}) is still running after it was killed; "
                                        "end it with the system's task manager") from exc
        # Children that outlived the leader (e.g. a training job) still hold the group: end them too.
        if self.platform != "win32":
            self._signal_group(signal.SIGKILL)
        if self._reader is not None:
            self._reader.join(timeout=2.0)
        if process.stdout is not None:
            try:
                process.stdout.close()
            except OSError:
                pass
        return process.returncode

    def __enter__(self) -> BackendLauncher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

"""Start and stop a local ActiveSeg backend (``python -m activeseg serve``) from Slicer. Stdlib only.

The backend runs in its own Python (with torch/MONAI), never in Slicer's. It prints one machine-readable line
when it listens, ``ACTIVESEG_SERVER_URL=http://127.0.0.1:PORT``; :meth:`BackendLauncher.start` waits for it.
The child gets its own process group (POSIX session / Windows process group) so that :meth:`~BackendLauncher.stop`
ends the whole tree, training workers included.

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

from .errors import BackendStartError

__all__ = ["URL_PREFIX", "BackendLauncher", "find_free_port"]

logger = logging.getLogger(__name__)

#: The line prefix the backend prints once it listens.
URL_PREFIX = "ACTIVESEG_SERVER_URL="

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


class BackendLauncher:
    """A local backend process: start it, learn its URL, read its output, stop its process tree.

    Args:
        python: the backend environment's interpreter (path, or a name looked up on ``PATH``).
        data_dir: the datastore folder passed as ``--data``.
        host: interface to listen on (keep ``127.0.0.1`` unless a token is set).
        port: TCP port; 0 lets the backend pick a free one and report it.
        token: bearer token the backend will require (``--token``), or ``None``.
        extra_args: more ``serve`` arguments, appended as given.
        env: the child's environment; default: this process's, without host-Python variables such as
            ``PYTHONHOME``/``PYTHONPATH``. Inside Slicer pass ``slicer.util.startupEnvironment()``.
        max_log_lines: how many output lines to keep (older ones are dropped).
    """

    def __init__(self, python: str, data_dir: str, host: str = "127.0.0.1", port: int = 0,
                 token: str | None = None, extra_args: Sequence[str] = (), *,
                 env: Mapping[str, str] | None = None, max_log_lines: int = 2000) -> None:
        if not 0 <= int(port) <= 65535:
            raise ValueError(f"port must be in 0..65535, got {port!r}")
        self.python = python
        self.data_dir = data_dir
        self.host = host
        self.port = int(port)
        self.token = token
        self.extra_args = tuple(str(a) for a in extra_args)
        self.env = dict(env) if env is not None else None
        self._lines: collections.deque[str] = collections.deque(maxlen=max_log_lines)
        self._lock = threading.Lock()
        self._url_seen = threading.Event()
        self._output_closed = threading.Event()
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._url: str | None = None

    # ------------------------------------------------------------------ state

    @property
    def url(self) -> str | None:
        """The backend's base URL once :meth:`start` returned, else ``None``."""
        return self._url

    @property
    def running(self) -> bool:
        """Whether the process was started and has not exited."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The backend's process id (also its process group id), or ``None`` before start."""
        return self._process.pid if self._process is not None else None

    @property
    def returncode(self) -> int | None:
        """The exit status once the process ended, else ``None``."""
        return self._process.poll() if self._process is not None else None

    def command(self) -> list[str]:
        """The command line :meth:`start` runs (it contains the token: mask it before showing or logging)."""
        args = [self.python, "-m", "activeseg", "serve", "--data", str(self.data_dir),
                "--host", self.host, "--port", str(self.port)]
        if self.token:
            args += ["--token", self.token]
        return args + list(self.extra_args)

    def log_tail(self, lines: int = 50) -> str:
        """The last ``lines`` lines the backend printed (stdout and stderr merged), newline-joined."""
        with self._lock:
            tail = list(self._lines)[-lines:] if lines > 0 else []
        return "\n".join(tail)

    # ------------------------------------------------------------------ start / stop

    def _child_env(self) -> dict[str, str]:
        if self.env is not None:
            env = dict(self.env)
        else:
            env = {k: v for k, v in os.environ.items() if k not in _HOST_PYTHON_VARIABLES}
        # Unbuffered, or the URL line may sit in the child's stdout buffer until it exits.
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _read_output(self, stream: object) -> None:
        """Reader thread: collect every line; note the URL line. Ends when the child closes its output."""
        try:
            for raw in stream:  # type: ignore[attr-defined]
                line = raw.rstrip("\r\n")
                with self._lock:
                    self._lines.append(line)
                if not self._url_seen.is_set() and line.startswith(URL_PREFIX):
                    self._url = line[len(URL_PREFIX):].strip()
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
            BackendStartError: already running, the interpreter does not exist, the process could not be
                spawned, it exited before announcing a URL, or ``timeout_s`` passed (the process is then
                stopped). The error carries the process's last output lines.
        """
        if self.running:
            raise BackendStartError(f"backend already running (pid {self.pid}) at {self._url}")
        python = _resolve_python(self.python)
        args = self.command()
        args[0] = python
        self._lines.clear()
        self._url_seen.clear()
        self._output_closed.clear()
        self._url = None
        popen_kwargs: dict[str, object] = {}
        if sys.platform == "win32":
            popen_kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
        else:
            popen_kwargs["start_new_session"] = True
        logger.info("starting backend: %s", " ".join(a if a != self.token else "***" for a in args))
        try:
            self._process = subprocess.Popen(  # noqa: S603 - arguments are a list, no shell
                args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, encoding="utf-8", errors="replace", bufsize=1, env=self._child_env(),
                **popen_kwargs,  # type: ignore[arg-type]
            )
        except OSError as exc:
            raise BackendStartError(f"could not start backend with {python!r}: {exc}") from exc
        self._reader = threading.Thread(target=self._read_output, args=(self._process.stdout,),
                                        name="activeseg-backend-output", daemon=True)
        self._reader.start()

        deadline = time.monotonic() + timeout_s
        while not self._url_seen.wait(timeout=0.05):
            if self._output_closed.is_set() or self._process.poll() is not None:
                # Give the reader a moment to collect the last lines (the traceback the user needs).
                self._output_closed.wait(timeout=2.0)
                if self._url_seen.is_set():
                    break
                code = self._process.wait()
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
        logger.info("backend ready at %s (pid %d)", url, self._process.pid)
        return url

    def _signal_group(self, sig: int) -> None:
        assert self._process is not None
        if sys.platform == "win32":
            # No process groups to signal: CTRL_BREAK reaches the group; kill() is TerminateProcess.
            if sig == signal.SIGTERM:
                self._process.send_signal(signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
            else:
                subprocess.run(["taskkill", "/F", "/T", "/PID", str(self._process.pid)],  # noqa: S603,S607
                               capture_output=True, check=False)
            return
        try:
            os.killpg(self._process.pid, sig)  # pgid == pid: start_new_session made it a group leader
        except ProcessLookupError:
            pass  # already gone (group empty)

    def stop(self, grace_s: float = 5.0) -> int | None:
        """Stop the backend's whole process group: SIGTERM, then SIGKILL after ``grace_s`` seconds.

        Safe to call more than once and on a process that already exited.

        Returns:
            the exit status, or ``None`` if it was never started.
        """
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            logger.info("stopping backend (pid %d)", process.pid)
            self._signal_group(signal.SIGTERM)
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                logger.warning("backend (pid %d) ignored SIGTERM for %g s; killing it", process.pid, grace_s)
                self._signal_group(signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM)
                process.wait(timeout=10.0)
        # Children that outlived the leader (e.g. a training job) still hold the group: end them too.
        if sys.platform != "win32":
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

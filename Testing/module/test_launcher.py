"""BackendLauncher with fake backends: a tiny ``activeseg`` package put first on the child's PYTHONPATH.

These pin the process handling: URL discovery, early exit, timeout, that stop() ends the whole process tree (also
while start() is still waiting), that the token never appears on the command line, and, driven directly because
they cannot run here, the Windows branches (no console window; the tree ended with psutil or ``taskkill /T /F``).
That the URL line and the token variable match what the real ``activeseg serve`` prints and reads is checked
against the backend's own constants in ``test_protocol_agreement.py``.
"""

from __future__ import annotations

import os
import socket
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ActiveSegLib import BackendStartError, launcher as launcher_module
from ActiveSegLib.launcher import (
    CREATE_NO_WINDOW,
    BackendLauncher,
    find_free_port,
    popen_options,
    terminate_tree_windows,
)

from .backend_support import alive

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="process-group handling is tested on POSIX")

FAKES = {
    # Announces a URL built from its --port argument, starts a grandchild, then serves "forever".
    "ok": """
        import os, subprocess, sys, time
        args = sys.argv[1:]
        port = args[args.index("--port") + 1]
        print("argv:", " ".join(args))
        print("token from environment:", os.environ.get("ACTIVESEG_TOKEN"))
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        open(args[args.index("--data") + 1] + "/grandchild.pid", "w").write(str(child.pid))
        print("starting up", file=sys.stderr)
        print("ACTIVESEG_SERVER_URL=http://127.0.0.1:" + (port if port != "0" else "43210"))
        time.sleep(120)
    """,
    "fail": """
        import sys
        print("loading datastore")
        print("Error: data folder has no images", file=sys.stderr)
        sys.exit(1)
    """,
    "silent": """
        import time
        print("thinking...")
        time.sleep(120)
    """,
    "stubborn": """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ACTIVESEG_SERVER_URL=http://127.0.0.1:5555", flush=True)
        time.sleep(120)
    """,
    "plain": """
        import time
        print("ACTIVESEG_SERVER_URL=http://127.0.0.1:5556", flush=True)
        time.sleep(120)
    """,
    "bad_url": """
        import time
        print("ACTIVESEG_SERVER_URL=localhost:1")
        time.sleep(120)
    """,
}


def fake_backend(tmp_path: Path, kind: str) -> dict[str, str]:
    """Write a fake ``activeseg`` package; return the environment that makes ``python -m activeseg`` run it."""
    package = tmp_path / "fakes" / kind / "activeseg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(textwrap.dedent(FAKES[kind]))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(package.parent)
    return env




def wait_dead(pid: int, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.02)
    return False


def test_start_reads_url_and_stop_ends_the_process_tree(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    launcher = BackendLauncher(sys.executable, str(data), port=8123, token="s3cret",
                               env=fake_backend(tmp_path, "ok"))
    url = launcher.start(timeout_s=30)
    try:
        assert url == "http://127.0.0.1:8123" == launcher.url
        assert launcher.running and launcher.pid is not None
        tail = launcher.log_tail()
        assert f"argv: serve --data {data} --host 127.0.0.1 --port 8123\n" in tail + "\n"
        assert "s3cret" not in " ".join(launcher.command()) and "--token" not in tail  # not on the command line
        assert "token from environment: s3cret" in tail
        assert "starting up" in tail  # stderr is merged into the log
        grandchild = int((data / "grandchild.pid").read_text())
        assert alive(grandchild)
    finally:
        launcher.stop(grace_s=5)
    assert not launcher.running
    assert wait_dead(launcher.pid)
    assert wait_dead(grandchild), "stop() must end the backend's children too"
    assert launcher.stop() is not None  # idempotent


def test_command_line(tmp_path: Path) -> None:
    launcher = BackendLauncher("python3", "/d", port=0, extra_args=("--log-level", "debug"))
    assert launcher.command() == ["python3", "-m", "activeseg", "serve", "--data", "/d", "--host", "127.0.0.1",
                                  "--port", "0", "--log-level", "debug"]


def test_missing_interpreter_is_a_start_error(tmp_path: Path) -> None:
    with pytest.raises(BackendStartError, match="not found"):
        BackendLauncher(str(tmp_path / "no" / "python"), str(tmp_path)).start(timeout_s=5)
    with pytest.raises(BackendStartError, match="not found on PATH"):
        BackendLauncher("no-such-python-3.99", str(tmp_path)).start(timeout_s=5)


def test_early_exit_is_a_start_error_with_the_output(tmp_path: Path) -> None:
    launcher = BackendLauncher(sys.executable, str(tmp_path), env=fake_backend(tmp_path, "fail"))
    with pytest.raises(BackendStartError) as info:
        launcher.start(timeout_s=30)
    assert "status 1" in str(info.value)
    assert "Error: data folder has no images" in str(info.value)
    assert "loading datastore" in info.value.output
    assert info.value.returncode == 1
    assert not launcher.running


def test_timeout_stops_the_process(tmp_path: Path) -> None:
    launcher = BackendLauncher(sys.executable, str(tmp_path), env=fake_backend(tmp_path, "silent"))
    started = time.monotonic()
    with pytest.raises(BackendStartError, match="within 1 s") as info:
        launcher.start(timeout_s=1)
    assert time.monotonic() - started < 10
    assert "thinking..." in str(info.value)
    assert not launcher.running
    assert wait_dead(launcher.pid)


def test_stop_kills_a_backend_that_ignores_sigterm(tmp_path: Path) -> None:
    launcher = BackendLauncher(sys.executable, str(tmp_path), env=fake_backend(tmp_path, "stubborn"))
    launcher.start(timeout_s=30)
    started = time.monotonic()
    code = launcher.stop(grace_s=0.5)
    assert time.monotonic() - started < 5
    assert code is not None and code != 0
    assert not launcher.running


def test_malformed_url_is_a_start_error(tmp_path: Path) -> None:
    launcher = BackendLauncher(sys.executable, str(tmp_path), env=fake_backend(tmp_path, "bad_url"))
    with pytest.raises(BackendStartError, match="malformed URL"):
        launcher.start(timeout_s=30)
    assert not launcher.running


def test_context_manager_stops(tmp_path: Path) -> None:
    with BackendLauncher(sys.executable, str(tmp_path), env=fake_backend(tmp_path, "plain")) as launcher:
        assert launcher.start(timeout_s=30).startswith("http://")
    assert not launcher.running


def test_default_environment_drops_host_python_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONHOME", "/opt/Slicer/lib/Python")
    monkeypatch.setenv("PYTHONPATH", "/opt/Slicer/lib/Python/site-packages")
    monkeypatch.setenv("ACTIVESEG_TEST_MARKER", "kept")
    monkeypatch.setenv("ACTIVESEG_TOKEN", "inherited-from-somewhere")
    env = BackendLauncher(sys.executable, str(tmp_path)).child_env()
    assert "PYTHONHOME" not in env and "PYTHONPATH" not in env
    assert env["ACTIVESEG_TEST_MARKER"] == "kept" and env["PYTHONUNBUFFERED"] == "1"
    assert "ACTIVESEG_TOKEN" not in env  # only the launcher's own token is passed on
    assert BackendLauncher(sys.executable, str(tmp_path), token="t0k").child_env()["ACTIVESEG_TOKEN"] == "t0k"


def test_log_is_bounded(tmp_path: Path) -> None:
    launcher = BackendLauncher(sys.executable, str(tmp_path), max_log_lines=3)
    for n in range(10):
        launcher._lines.append(f"line {n}")
    assert launcher.log_tail(50) == "line 7\nline 8\nline 9"
    assert launcher.log_tail(1) == "line 9"


def test_find_free_port_is_bindable() -> None:
    port = find_free_port()
    assert 0 < port < 65536
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_bad_port_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="port"):
        BackendLauncher(sys.executable, str(tmp_path), port=70000)


# ----------------------------------------------------------------------------------------- stop during start


def test_stop_while_start_waits_ends_the_process(tmp_path: Path) -> None:
    launcher = BackendLauncher(sys.executable, str(tmp_path), env=fake_backend(tmp_path, "silent"))
    outcome: dict[str, Any] = {}

    def start() -> None:
        try:
            launcher.start(timeout_s=60)
        except BackendStartError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=start)
    thread.start()
    deadline = time.monotonic() + 30
    while launcher.pid is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert launcher.starting and launcher.running
    started = time.monotonic()
    launcher.stop(grace_s=2)
    thread.join(timeout=10)
    assert not thread.is_alive() and time.monotonic() - started < 10
    assert "stopped while it was starting" in str(outcome["error"])
    assert wait_dead(launcher.pid) and launcher.url is None and not launcher.starting
    with pytest.raises(BackendStartError, match="stopped before it started"):
        launcher.start(timeout_s=5)  # a stopped launcher is not started again


def test_wait_ready_joins_a_start_in_progress(tmp_path: Path) -> None:
    launcher = BackendLauncher(sys.executable, str(tmp_path), env=fake_backend(tmp_path, "plain"))
    joined: dict[str, str] = {}
    thread = threading.Thread(target=lambda: joined.setdefault("url", launcher.wait_ready(timeout_s=30)))
    thread.start()
    try:
        assert launcher.start(timeout_s=30) == "http://127.0.0.1:5556"
        thread.join(timeout=10)
        assert joined["url"] == "http://127.0.0.1:5556"
    finally:
        launcher.stop()


# ----------------------------------------------------------------------------------------- Windows, driven directly


def test_windows_child_gets_no_console_window() -> None:
    options = popen_options("win32")
    assert options["creationflags"] & CREATE_NO_WINDOW and "start_new_session" not in options
    assert popen_options("linux") == {"start_new_session": True}


class _FakeProcess:
    """A psutil.Process stand-in: records terminate/kill; ``stubborn`` ones survive terminate."""

    def __init__(self, pid: int, log: list[str], stubborn: bool = False, children: list[Any] | None = None) -> None:
        self.pid, self.log, self.stubborn, self._children = pid, log, stubborn, children or []
        self.alive = True

    def children(self, recursive: bool = False) -> list[Any]:
        assert recursive, "the whole tree, not just direct children"
        return list(self._children)

    def terminate(self) -> None:
        self.log.append(f"terminate {self.pid}")
        self.alive = self.alive and self.stubborn

    def kill(self) -> None:
        self.log.append(f"kill {self.pid}")
        self.alive = False


def _fake_psutil(tree: dict[int, _FakeProcess]) -> Any:
    class NoSuchProcess(Exception):
        pass

    def process(pid: int) -> _FakeProcess:
        if pid not in tree:
            raise NoSuchProcess(pid)
        return tree[pid]

    def wait_procs(procs: list[_FakeProcess], timeout: float) -> tuple[list[_FakeProcess], list[_FakeProcess]]:
        return [p for p in procs if not p.alive], [p for p in procs if p.alive]

    return SimpleNamespace(Process=process, NoSuchProcess=NoSuchProcess, wait_procs=wait_procs)


def test_windows_tree_is_terminated_with_psutil_and_stragglers_killed() -> None:
    log: list[str] = []
    grandchild = _FakeProcess(12, log, stubborn=True)
    child = _FakeProcess(11, log, children=[])
    parent = _FakeProcess(10, log, children=[child, grandchild])
    assert terminate_tree_windows(10, 0.1, psutil=_fake_psutil({10: parent})) == "psutil"
    assert log == ["terminate 11", "terminate 12", "terminate 10", "kill 12"]
    assert not any(p.alive for p in (parent, child, grandchild))
    assert terminate_tree_windows(99, 0.1, psutil=_fake_psutil({})) == "psutil"  # already gone: no error


def test_windows_tree_is_killed_with_taskkill_without_psutil() -> None:
    calls: list[tuple[list[str], dict[str, Any]]] = []

    def run(args: list[str], **kwargs: Any) -> Any:
        calls.append((args, kwargs))
        return SimpleNamespace(returncode=0, stdout=b"")

    assert terminate_tree_windows(4321, 1.0, psutil=None, run=run) == "taskkill"
    (args, kwargs), = calls
    assert args == ["taskkill", "/PID", "4321", "/T", "/F"]
    assert kwargs["creationflags"] & CREATE_NO_WINDOW and kwargs["check"] is False


def test_stop_on_windows_ends_the_tree_and_never_raises_timeout(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The Windows branch of stop(), on a real child: taskkill (stood in for by a process-group kill here) ends
    the tree; stop() returns the exit status instead of raising TimeoutExpired as it used to."""
    import signal

    data = tmp_path / "data"
    data.mkdir()
    launcher = BackendLauncher(sys.executable, str(data), env=fake_backend(tmp_path, "ok"))
    launcher.start(timeout_s=30)
    grandchild = int((data / "grandchild.pid").read_text())
    launcher.platform = "win32"  # from here on, the Windows code path
    taskkills: list[list[str]] = []

    def taskkill(args: list[str], **kwargs: Any) -> Any:
        taskkills.append(args)
        os.killpg(int(args[2]), signal.SIGKILL)  # what taskkill /T /F does to the tree
        return SimpleNamespace(returncode=0, stdout=b"")

    monkeypatch.setattr(launcher_module, "_import_psutil", lambda: None)
    monkeypatch.setattr(launcher_module, "_run", taskkill)
    code = launcher.stop(grace_s=0.5)
    assert taskkills == [["taskkill", "/PID", str(launcher.pid), "/T", "/F"]]
    assert code is not None and not launcher.running
    assert wait_dead(grandchild)


def test_stop_on_windows_says_so_when_the_tree_survives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    launcher = BackendLauncher(sys.executable, str(tmp_path), env=fake_backend(tmp_path, "plain"))
    launcher.start(timeout_s=30)
    launcher.platform, launcher.kill_wait_s = "win32", 0.3
    monkeypatch.setattr(launcher_module, "_import_psutil", lambda: None)
    monkeypatch.setattr(launcher_module, "_run", lambda args, **kw: SimpleNamespace(returncode=1, stdout=b"denied"))
    try:
        with pytest.raises(BackendStartError, match=f"pid {launcher.pid}.* still running"):
            launcher.stop(grace_s=0.1)
    finally:
        launcher.platform = sys.platform
        launcher.stop()
    assert not launcher.running

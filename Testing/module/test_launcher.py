"""BackendLauncher with fake backends: a tiny ``activeseg`` package put first on the child's PYTHONPATH.

The real ``activeseg serve`` gets its own tests once it exists; these pin the process handling: URL discovery,
early exit, timeout, and that stop() ends the whole process tree.
"""

from __future__ import annotations

import os
import socket
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ActiveSegLib import BackendStartError
from ActiveSegLib.launcher import URL_PREFIX, BackendLauncher, find_free_port

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="process-group handling is tested on POSIX")

FAKES = {
    # Announces a URL built from its --port argument, starts a grandchild, then serves "forever".
    "ok": """
        import subprocess, sys, time
        args = sys.argv[1:]
        port = args[args.index("--port") + 1]
        print("argv:", " ".join(args))
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


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as dead: in a container nobody may reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


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
        assert f"--data {data} --host 127.0.0.1 --port 8123 --token s3cret" in tail
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
    env = BackendLauncher(sys.executable, str(tmp_path))._child_env()
    assert "PYTHONHOME" not in env and "PYTHONPATH" not in env
    assert env["ACTIVESEG_TEST_MARKER"] == "kept" and env["PYTHONUNBUFFERED"] == "1"


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


def test_url_prefix_matches_the_protocol() -> None:
    assert URL_PREFIX == "ACTIVESEG_SERVER_URL="


def test_bad_port_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="port"):
        BackendLauncher(sys.executable, str(tmp_path), port=70000)

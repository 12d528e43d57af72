"""Bearer token on every request; no unauthenticated serving beyond loopback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from activeseg.errors import ConfigError
from activeseg.api.server import check_bind_address

from .support import ServerProcess, make_store


def test_token_required_on_every_request(tmp_path: Path) -> None:
    store, _ = make_store(tmp_path, count=5)
    with ServerProcess(store, token="s3cret") as server:
        for path in ("/v1/health", "/v1/cases", "/v1/openapi.json", "/v1/nothing"):
            missing = httpx.get(server.url + path, timeout=30)
            assert missing.status_code == 401, path
            assert missing.json()["error"]["code"] == "unauthorized"
            assert missing.headers["www-authenticate"] == "Bearer"
            wrong = httpx.get(server.url + path, headers={"Authorization": "Bearer s3cre"}, timeout=30)
            assert wrong.status_code == 401
            assert httpx.get(server.url + path, headers={"Authorization": "s3cret"}, timeout=30).status_code == 401
        with server.client() as client:
            assert client.get("/v1/health").status_code == 200
            assert client.get("/v1/info").json()["auth_required"] is True
            assert client.put("/v1/cases/phantom_000/label", params={"annotator": "a"}, content=b"x").status_code == 422


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_refuses_non_loopback_without_token(tmp_path: Path, host: str) -> None:
    store, _ = make_store(tmp_path, count=5)
    result = subprocess.run(
        [sys.executable, "-m", "activeseg", "serve", "--data", str(store), "--host", host, "--port", "0"],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert "ACTIVESEG_SERVER_URL" not in result.stdout
    assert "without a token" in result.stderr


def test_bind_check() -> None:
    check_bind_address("127.0.0.1", None)
    check_bind_address("localhost", None)
    check_bind_address("::1", None)
    check_bind_address("0.0.0.0", "token")
    with pytest.raises(ConfigError):
        check_bind_address("0.0.0.0", None)
    with pytest.raises(ConfigError):
        check_bind_address("8.8.8.8", "")

"""Fixtures of the server tests: a tiny datastore and a real server subprocess on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from .support import ServerProcess, make_store


@dataclass
class LiveServer:
    """A running server over a fresh tiny datastore."""

    server: ServerProcess
    store: Path
    source: Path
    client: httpx.Client


def _live(root: Path) -> Iterator[LiveServer]:
    store, source = make_store(root)
    server = ServerProcess(store).start()
    client = server.client()
    try:
        yield LiveServer(server, store, source, client)
    finally:
        client.close()
        server.stop()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server per test module (tests in a module may share its state; each says what it assumes)."""
    yield from _live(tmp_path_factory.mktemp("live"))


@pytest.fixture()
def fresh(tmp_path: Path) -> Iterator[LiveServer]:
    """A server over a datastore of its own, for tests that need a known starting state."""
    yield from _live(tmp_path)

"""Fixtures of the integration tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.servers import Server


@pytest.fixture
def server_factory(tiny_bundle: Path, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def make(data_dir: Path, **env: str) -> Server:
        server = Server(tiny_bundle, data_dir, tmp_path / "server.log", **env)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()

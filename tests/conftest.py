"""Shared fixtures: live servers in subprocesses, redis-server, clients."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest

from tests.support.redis_server import RedisServer
from tests.support.server import LiveServer, start_server
from tests.support.socketio_fixtures import node_clients, py_clients  # noqa: F401 - fixtures
from tests.support.wsclient import Client


@pytest.fixture(scope="session")
def server() -> Iterator[LiveServer]:
    """The default live server: development mode, tokens required, memory broker."""
    live = start_server(name="default")
    yield live
    live.stop()


@pytest.fixture
def server_factory() -> Iterator[Callable[..., LiveServer]]:
    """Start live servers with custom settings; all are stopped after the test."""
    with contextlib.ExitStack() as stack:

        def start(overrides: dict[str, str] | None = None, **kwargs) -> LiveServer:
            live = start_server(overrides, **kwargs)
            stack.callback(live.stop)
            return live

        yield start


@pytest.fixture
def clients() -> Iterator[Callable[..., Client]]:
    """Open WebSocket clients that are closed after the test."""
    opened: list[Client] = []

    def connect(url: str, **kwargs) -> Client:
        client = Client(url, **kwargs)
        opened.append(client)
        return client

    yield connect
    for client in opened:
        client.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server for the whole session (tests flush what they need)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()

"""Shared fixtures: live servers in subprocesses, redis-server, clients."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator

import pytest
from hypothesis import settings as hypothesis_settings

from tests.support import server as live_servers
from tests.support.redis_server import RedisServer
from tests.support.server import LiveServer, start_server
from tests.support.socketio_fixtures import node_clients, py_clients  # noqa: F401 - fixtures
from tests.support.wsclient import Client

# CI replays the same property-test cases every run (a red CI run is then a
# change in the code, not a new draw); a local run keeps exploring new cases.
hypothesis_settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")


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


_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if any live server's log holds a secret or a token (docs/operations.md)."""
    leaks = []
    for path in live_servers.LOGS_WRITTEN:
        if not path.exists():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            found = [s for s in live_servers.SECRETS_USED if s in line]
            if found or _JWT.search(line):
                leaks.append(f"{path.name}:{number}: {line[:160]}")
    if leaks:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("SECRETS OR TOKENS IN SERVER LOGS:", red=True, bold=True)
            for leak in leaks[:20]:
                reporter.write_line(f"  {leak}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

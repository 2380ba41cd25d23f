"""Fixtures and helpers shared by the Socket.IO tests (docs/protocol.md §9)."""

from __future__ import annotations

import json
import queue
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
import socketio

from tests.support.sioclient import NodeSocketIO, node_ready
from tests.support.tokens import emulator_token


def new_user(name: str = "user") -> str:
    return f"{name}-{uuid.uuid4().hex[:10]}@example.com"


def event_body(user: str, call_id: str, status: str, **data: Any) -> dict[str, Any]:
    """Build a publish body; the call id is made unique to the user (calls have one owner)."""
    return {"callId": f"{call_id}-{user}", "userId": user, "status": status, "data": data}


SEPARATOR = "\x1e"


class Polling:
    """One Engine.IO long-polling session, spoken by hand."""

    def __init__(self, http: str) -> None:
        self.base = f"{http}/socket.io/?EIO=4&transport=polling"
        opened = requests.get(self.base, timeout=5)
        assert opened.status_code == 200 and opened.text.startswith("0{")
        self.sid = json.loads(opened.text[1:])["sid"]
        self.url = f"{self.base}&sid={self.sid}"

    def post(self, body: str | bytes) -> requests.Response:
        return requests.post(self.url, data=body, timeout=5,
                             headers={"Content-Type": "text/plain;charset=UTF-8"})

    def get(self) -> list[str]:
        answer = requests.get(self.url, timeout=10)
        assert answer.status_code == 200, answer.text
        return answer.text.split(SEPARATOR)

    def join(self, user: str) -> None:
        """Connect to namespace ``/`` as ``user`` and read up to the ``connected`` event."""
        assert self.post("40" + json.dumps({"token": emulator_token(user)})).status_code == 200
        packets = []
        while not any(p.startswith('42["connected"') for p in packets):
            packets += self.get()
        assert packets[0].startswith("40{")

    def events(self) -> list[list]:
        return [json.loads(p[2:]) for p in self.get() if p.startswith("42")]


@pytest.fixture
def node_clients() -> Iterator[Callable[[], NodeSocketIO]]:
    """Start real socket.io-client processes (Node), closed after the test."""
    reason = node_ready()
    if reason is not None:
        pytest.skip(reason)
    started: list[NodeSocketIO] = []

    def start() -> NodeSocketIO:
        client = NodeSocketIO()
        started.append(client)
        return client

    yield start
    for client in started:
        client.close()


class PyClient:
    """python-socketio's client, with everything it receives kept in order."""

    def __init__(self) -> None:
        self.sio = socketio.Client(reconnection=False)
        self.received: queue.Queue[tuple[str, tuple[Any, ...]]] = queue.Queue()
        self.sio.on("*", lambda event, *args: self.received.put((event, args)))
        self.sio.on("disconnect", lambda reason=None: self.received.put(("disconnect", (reason,))))
        self.sio.on("connect_error",
                    lambda data=None: self.received.put(("connect_error", (data,))))

    def connect(self, url: str, **options: Any) -> PyClient:
        self.sio.connect(url, wait_timeout=5, **options)
        return self

    def next(self, name: str | None = None, timeout: float = 5.0) -> tuple[str, Any]:
        """Return (event, first argument) of the next event (named ``name``), skipping others."""
        while True:
            try:
                event, args = self.received.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"no {name or 'event'} within {timeout}s") from None
            if name is None or event == name:
                return event, (args[0] if args else None)

    def event(self, name: str, timeout: float = 5.0) -> Any:
        return self.next(name, timeout)[1]

    def nothing_within(self, seconds: float) -> list[tuple[str, Any]]:
        got = []
        try:
            while True:
                got.append(self.received.get(timeout=seconds))
        except queue.Empty:
            return got

    def close(self) -> None:
        self.sio.shutdown()


@pytest.fixture
def py_clients() -> Iterator[Callable[[], PyClient]]:
    """python-socketio clients, disconnected after the test."""
    made: list[PyClient] = []

    def make() -> PyClient:
        client = PyClient()
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()

"""Connection limits against the real server (docs/protocol.md §8, docs/stack-notes.md).

One server with small limits serves most tests: init deadline 1 s, frames up
to 4 KiB, three connections per user, a send queue of 20, 2 s write timeout.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import requests
import websocket

from tests.support.rawws import OP_CLOSE, OP_PING, OP_TEXT, RawWebSocket, close_code
from tests.support.server import LiveServer, start_server
from tests.support.tokens import emulator_token
from tests.support.wsclient import Client, ConnectionClosedError

INIT_TIMEOUT = 1.0
MAX_FRAME = 4096
PER_USER = 3
SEND_QUEUE = 20
INVALID = {"type": "error", "message": "Invalid message format"}


@pytest.fixture(scope="module")
def tight() -> Iterator[LiveServer]:
    server = start_server(
        {
            "WS_INIT_TIMEOUT": str(INIT_TIMEOUT),
            "WS_MAX_MESSAGE_BYTES": str(MAX_FRAME),
            "WS_MAX_CONNECTIONS_PER_USER": str(PER_USER),
            "WS_SEND_QUEUE": str(SEND_QUEUE),
            "WS_WRITE_TIMEOUT": "2",
        },
        name="limits",
    )
    yield server
    server.stop()


def new_user(name: str = "user") -> str:
    return f"{name}-{uuid.uuid4().hex[:10]}@example.com"


def connect(server: LiveServer, clients, email: str) -> Client:
    client = clients(server.ws)
    assert client.init(email, token=emulator_token(email))["type"] == "connected"
    return client


def count_of(server: LiveServer, email: str) -> int:
    response = requests.get(f"{server.http}/api/v6/call/websocket/clients",
                            headers={"Authorization": f"Bearer {emulator_token(email)}"},
                            timeout=5)
    return response.json()["data"]["totalConnections"]


def wait_count(server: LiveServer, email: str, expected: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while count_of(server, email) != expected:
        assert time.monotonic() < deadline, f"{email} never reached {expected} connections"
        time.sleep(0.05)


def publish_test(server: LiveServer, target: str, text: str) -> dict:
    response = requests.post(
        f"{server.http}/api/v6/call/websocket/test",
        json={"targetUserId": target, "message": text},
        headers={"Authorization": f"Bearer {emulator_token(new_user('sender'))}"},
        timeout=5,
    )
    assert response.status_code == 200, response.text
    return response.json()


# -- init deadline ---------------------------------------------------------------------------


def test_a_socket_that_never_inits_is_closed_with_1008(tight, clients):
    silent = clients(tight.ws)
    late = clients(tight.ws)
    started = time.monotonic()
    time.sleep(INIT_TIMEOUT / 2)
    email = new_user()
    assert late.init(email, token=emulator_token(email))["type"] == "connected"
    answer = silent.recv_json(timeout=5)
    assert answer["type"] == "error"
    assert "init" in answer["message"].lower()
    code, _ = silent.wait_closed(5)
    elapsed = time.monotonic() - started
    assert code == 1008
    assert INIT_TIMEOUT - 0.1 <= elapsed <= INIT_TIMEOUT + 1.5
    # An initialised socket is past the deadline for good.
    time.sleep(max(0.0, started + INIT_TIMEOUT + 0.3 - time.monotonic()))
    late.send_json({"type": "ping"})
    assert late.recv_json() == {"type": "pong"}


def test_pings_and_bad_frames_do_not_count_as_init(tight, clients):
    client = clients(tight.ws)
    started = time.monotonic()
    answers = []
    code = None
    while code is None:
        assert time.monotonic() - started < INIT_TIMEOUT + 2, "never closed"
        client.send_json({"type": "ping"})
        client.send_raw("not json")
        try:
            while True:
                answers.append(client.recv_json(timeout=3))
                if answers[-1] == INVALID:
                    break  # the pong and this are both in: next round
        except ConnectionClosedError as closed:
            code = closed.code
        else:
            time.sleep(0.2)
    assert code == 1008
    assert time.monotonic() - started <= INIT_TIMEOUT + 1.5
    assert answers.count({"type": "pong"}) >= 2
    assert answers.count(INVALID) >= 2
    assert answers[-1]["type"] == "error"
    assert answers[-1]["message"].lower().startswith("init"), answers


# -- frame size ----------------------------------------------------------------------------


def test_frame_limit_is_inclusive_and_oversized_frames_close_with_1009(tight, clients):
    bystander = connect(tight, clients, email := new_user("bystander"))
    client = clients(tight.ws)
    at_limit = json.dumps({"type": "ping", "pad": ""})
    at_limit = at_limit.replace('""', '"' + "x" * (MAX_FRAME - len(at_limit)) + '"')
    assert len(at_limit.encode()) == MAX_FRAME
    client.send_raw(at_limit)
    assert client.recv_json() == {"type": "pong"}
    client.send_raw("x" * (MAX_FRAME + 1))
    assert client.wait_closed(5)[0] == 1009

    binary = clients(tight.ws)
    binary.send_raw(b"\x00" * (MAX_FRAME * 4))
    assert binary.wait_closed(5)[0] == 1009

    # The server goes on serving everyone else.
    message = publish_test(tight, email, "still serving")
    assert bystander.recv_json() == message["data"]


# -- connections per user --------------------------------------------------------------------


def test_the_connection_over_the_limit_is_refused_and_nobody_is_evicted(tight, clients):
    email = new_user()
    existing = [connect(tight, clients, email) for _ in range(PER_USER)]
    extra = clients(tight.ws)
    extra.send_json({"type": "init", "payload": {"userId": email,
                                                 "token": emulator_token(email)}})
    answer = extra.recv_json()
    assert answer["type"] == "error"
    assert "too many connections" in answer["message"].lower()
    assert extra.wait_closed(5)[0] == 1008
    # The existing ones were not evicted and still receive.
    message = publish_test(tight, email, "to all three")
    assert message["delivered"] == PER_USER
    for client in existing:
        assert client.recv_json() == message["data"]
    # Another user is not limited by this one.
    connect(tight, clients, new_user("other"))
    # A freed slot can be used again.
    existing[0].close()
    wait_count(tight, email, PER_USER - 1)
    connect(tight, clients, email)


# -- slow clients ------------------------------------------------------------------------------


class Reader(threading.Thread):
    """Read a websocket-client connection as fast as possible, stamping each message."""

    def __init__(self, ws: websocket.WebSocket) -> None:
        super().__init__(daemon=True)
        self.ws = ws
        self.messages: list[tuple[float, dict]] = []
        self.closed: int | None = None
        self.failure: Exception | None = None

    def run(self) -> None:
        try:
            while True:
                opcode, data = self.ws.recv_data()
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    self.closed = close_code(data) or 0
                    return
                self.messages.append((time.monotonic(), json.loads(data)))
        except Exception as failure:  # noqa: BLE001 - the test inspects it
            self.failure = failure


def fast_socket(server: LiveServer, email: str, **options) -> websocket.WebSocket:
    ws = websocket.create_connection(server.ws, timeout=10, skip_utf8_validation=True,
                                     **options)
    ws.send(json.dumps({"type": "init", "payload": {"token": emulator_token(email)}}))
    assert json.loads(ws.recv())["type"] == "connected"
    return ws


def slow_drops(server: LiveServer) -> float:
    metrics = requests.get(f"{server.http}/metrics", timeout=5).text
    counts = re.findall(r"^callwire_slow_clients_dropped_total\{[^}]*\} (\S+)$", metrics, re.M)
    return sum(map(float, counts))


def test_a_client_that_stops_reading_is_dropped_and_nobody_else_waits(tight):
    alice, bob = new_user("alice"), new_user("bob")
    # The slow one: a tiny receive buffer, and it never reads after init.
    slow = fast_socket(tight, alice, sockopt=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)])
    fast_ws, bob_ws = fast_socket(tight, alice), fast_socket(tight, bob)
    fast, bobs = Reader(fast_ws), Reader(bob_ws)
    fast.start()
    bobs.start()
    sent_alice: dict[str, float] = {}
    sent_bob: dict[str, float] = {}

    def publish(alice_events: int, size: int) -> None:
        items = [{"callId": f"a-{uuid.uuid4().hex}", "userId": alice, "status": "initiated",
                  "data": {"blob": "y" * size}} for _ in range(alice_events)]
        started = time.monotonic()
        assert tight.publish(items).status_code == 200
        sent_alice.update((item["callId"], started) for item in items)
        call_id = f"b-{uuid.uuid4().hex}"
        sent_bob[call_id] = time.monotonic()
        assert tight.publish({"callId": call_id, "userId": bob, "status": "ringing"}).ok

    try:
        drops_before = slow_drops(tight)
        overflowed_at = None
        for _ in range(40):  # large events in batches, until the slow queue overflows
            publish(10, 64_000)
            if slow_drops(tight) > drops_before:
                overflowed_at = time.monotonic()
                break
        assert overflowed_at is not None, "the queue of the client that stops reading never filled"
        # Traffic goes on while the server drops it.
        while count_of(tight, alice) != 1:
            assert time.monotonic() - overflowed_at < 6, "the slow client was never dropped"
            publish(1, 100)
            time.sleep(0.05)
        dropped_after = time.monotonic() - overflowed_at
        assert dropped_after < 4, dropped_after
        for _ in range(3):
            publish(5, 1000)

        # Everyone else got everything, in order, promptly.
        deadline = time.monotonic() + 10
        while (len(fast.messages) < len(sent_alice) or len(bobs.messages) < len(sent_bob)) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fast.closed is None and fast.failure is None
        assert [m["callId"] for _, m in fast.messages] == list(sent_alice)
        assert [m["callId"] for _, m in bobs.messages] == list(sent_bob)
        bob_latency = [at - sent_bob[m["callId"]] for at, m in bobs.messages]
        alice_latency = [at - sent_alice[m["callId"]] for at, m in fast.messages]
        assert statistics.median(bob_latency) < 0.05, bob_latency
        assert max(bob_latency) < 0.5, bob_latency
        assert max(alice_latency) < 1.0, alice_latency

        # The slow one was closed: 4008 after the frames it had, or the TCP connection dropped.
        slow.settimeout(10)
        code: int | str | None = None
        try:
            while True:
                opcode, data = slow.recv_data(control_frame=True)
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    code = close_code(data)
                    break
        except (websocket.WebSocketConnectionClosedException, ConnectionError):
            code = "dropped"
        assert code in (4008, "dropped")
        assert slow_drops(tight) == drops_before + 1
    finally:
        for ws in (slow, fast_ws, bob_ws):
            ws.shutdown()


# -- heartbeat --------------------------------------------------------------------------------


def test_a_peer_that_does_not_answer_pings_is_dropped(server_factory, clients):
    live = server_factory({"WS_PING_INTERVAL": "1"}, name="heartbeat")
    email = new_user()
    good = connect(live, clients, email)
    raw = RawWebSocket(live.port)
    try:
        raw.send_json({"type": "init", "payload": {"token": emulator_token(email)}})
        assert raw.read_frame()[0] == OP_TEXT
        started = time.monotonic()
        result: dict = {}

        def watch() -> None:
            result["frames"] = raw.read_until_gone(8)
            result["elapsed"] = time.monotonic() - started

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        while watcher.is_alive():  # the good client answers pings while it reads
            with contextlib.suppress(websocket.WebSocketTimeoutException):
                good.recv_json(timeout=0.2)
        frames = result["frames"]
    finally:
        raw.close()
    opcodes = [opcode for opcode, _ in frames]
    # Pings at 1 s and 2 s go unanswered: two misses, dropped at the third (3 s).
    assert opcodes.count(OP_PING) >= 2
    assert 2.5 <= result["elapsed"] <= 4.5, result["elapsed"]
    if opcodes[-1] == OP_CLOSE:
        assert close_code(frames[-1][1]) == 1008
    # The one that answered is still there.
    good.send_json({"type": "ping"})
    assert good.recv_json(timeout=5) == {"type": "pong"}
    # The log says why it was dropped, not "peer closed".
    deadline = time.monotonic() + 5
    while "(closed 1008: no pong to two pings)" not in live.log():
        assert time.monotonic() < deadline, live.log()[-1500:]
        time.sleep(0.05)

"""The in-process registry: add, remove, per-user limit, copies, delivery counts."""

from __future__ import annotations

import gevent
import gevent.event
import pytest
from prometheus_client import REGISTRY

from webapp.connection import CLOSE_TOO_SLOW, Connection
from webapp.hub import Hub, TooManyConnections
from webapp.protocol import encode

ALICE = "alice@example.com"
BOB = "bob@example.com"


class FakeConnection(Connection):
    """A connection whose transport records frames; it can be made to stall."""

    transport_name = "fake"

    def __init__(self, user_id: str | None = None, *, send_queue: int = 100) -> None:
        super().__init__(send_queue=send_queue)
        self.written: list[str] = []
        self.woken = 0
        self.gate = gevent.event.Event()
        self.gate.set()
        if user_id is not None:
            self.mark_initialised(user_id)

    def _write(self, frame: str) -> None:
        self.gate.wait()
        self.written.append(frame)

    def _wake_session(self) -> None:
        self.woken += 1


def settle() -> None:
    """Let writer greenlets run."""
    gevent.sleep(0.01)


def test_add_and_list_by_user():
    hub = Hub(max_connections_per_user=5)
    a1, a2, b1 = FakeConnection(ALICE), FakeConnection(ALICE), FakeConnection(BOB)
    hub.add(a1, ALICE)
    hub.add(a2, ALICE)
    hub.add(b1, BOB)
    assert set(hub.connections_of(ALICE)) == {a1, a2}
    assert hub.connections_of(BOB) == [b1]
    assert hub.connections_of("nobody@example.com") == []
    assert set(hub.all_connections()) == {a1, a2, b1}


def test_adding_the_same_connection_twice_counts_once():
    hub = Hub(max_connections_per_user=1)
    a1 = FakeConnection(ALICE)
    hub.add(a1, ALICE)
    hub.add(a1, ALICE)  # no TooManyConnections: it is already there
    assert hub.connections_of(ALICE) == [a1]


def test_remove_is_idempotent_and_forgets_empty_users():
    hub = Hub(max_connections_per_user=5)
    a1, a2 = FakeConnection(ALICE), FakeConnection(ALICE)
    hub.add(a1, ALICE)
    hub.add(a2, ALICE)
    hub.remove(a1)
    hub.remove(a1)
    hub.remove(FakeConnection(BOB))  # never added
    assert hub.connections_of(ALICE) == [a2]
    hub.remove(a2)
    assert hub.connections_of(ALICE) == []
    assert hub.all_connections() == []
    assert hub.connection_infos() == []


def test_limit_refuses_the_next_connection_and_keeps_the_others():
    hub = Hub(max_connections_per_user=3)
    existing = [FakeConnection(ALICE) for _ in range(3)]
    for connection in existing:
        hub.add(connection, ALICE)
    extra = FakeConnection()
    with pytest.raises(TooManyConnections) as refusal:
        hub.add(extra, ALICE)
    assert "Too many connections" in str(refusal.value)
    assert "3" in str(refusal.value)
    assert set(hub.connections_of(ALICE)) == set(existing)
    assert extra not in hub.all_connections()
    # Other users are not affected by alice's limit.
    hub.add(FakeConnection(BOB), BOB)
    # A slot freed by a close can be used again.
    hub.remove(existing[0])
    hub.add(extra, ALICE)
    assert extra in hub.connections_of(ALICE)


def test_a_limit_of_one():
    hub = Hub(max_connections_per_user=1)
    hub.add(FakeConnection(ALICE), ALICE)
    with pytest.raises(TooManyConnections):
        hub.add(FakeConnection(ALICE), ALICE)


def test_lists_are_copies():
    hub = Hub(max_connections_per_user=5)
    a1 = FakeConnection(ALICE)
    hub.add(a1, ALICE)
    mine = hub.connections_of(ALICE)
    everyone = hub.all_connections()
    mine.clear()
    everyone.append(FakeConnection(BOB))
    assert hub.connections_of(ALICE) == [a1]
    assert hub.all_connections() == [a1]
    # A copy taken before a change does not see it.
    before = hub.connections_of(ALICE)
    hub.add(FakeConnection(ALICE), ALICE)
    assert before == [a1]


def test_deliver_reaches_every_connection_of_the_user_only():
    hub = Hub(max_connections_per_user=5)
    tabs = [FakeConnection(ALICE) for _ in range(3)]
    bob = FakeConnection(BOB)
    for tab in tabs:
        hub.add(tab, ALICE)
    hub.add(bob, BOB)
    message = {"event": "test.event", "callId": "test_call", "status": "test", "data": {"n": 1}}
    assert hub.deliver(ALICE, message) == 3
    settle()
    for tab in tabs:
        assert tab.written == [encode(message)]
    assert bob.written == []
    assert hub.deliver("nobody@example.com", message) == 0


def test_deliver_counts_only_connections_that_took_the_message():
    hub = Hub(max_connections_per_user=5)
    open_tab, closed_tab = FakeConnection(ALICE), FakeConnection(ALICE)
    hub.add(open_tab, ALICE)
    hub.add(closed_tab, ALICE)
    closed_tab.mark_closed()
    event = {"event": "call.status.changed", "callId": "c1", "status": "ringing", "data": {},
             "id": "0000000000000010", "timestamp": "2030-01-01T00:00:00.000Z"}
    assert hub.deliver(ALICE, event) == 1
    # The same event id again is already there: nobody takes it twice.
    assert hub.deliver(ALICE, event) == 0
    newer = {**event, "status": "in-progress", "id": "0000000000000011"}
    assert hub.deliver(ALICE, newer) == 1
    settle()
    assert open_tab.written == [encode(event), encode(newer)]
    assert closed_tab.written == []


def test_delivery_preserves_order():
    hub = Hub(max_connections_per_user=5)
    tab = FakeConnection(ALICE)
    hub.add(tab, ALICE)
    messages = [{"event": "test.event", "n": n} for n in range(50)]
    for message in messages:
        hub.deliver(ALICE, message)
    settle()
    assert tab.written == [encode(m) for m in messages]


def test_a_stalled_connection_is_closed_with_4008_without_hurting_the_others():
    hub = Hub(max_connections_per_user=5)
    stalled = FakeConnection(ALICE, send_queue=5)
    healthy = FakeConnection(ALICE, send_queue=5)
    stalled.gate.clear()  # its transport never finishes a write
    hub.add(stalled, ALICE)
    hub.add(healthy, ALICE)
    counts = [hub.deliver(ALICE, {"event": "test.event", "n": n}) for n in range(20)]
    settle()
    assert stalled.close_requested == (CLOSE_TOO_SLOW, "Too slow: outgoing queue is full")
    assert stalled.woken == 1
    # One frame in flight plus a full queue, then it is refused.
    assert counts[:6] == [2] * 6
    assert counts[-1] == 1
    assert len(healthy.written) == 20
    stalled.gate.set()


def test_a_burst_larger_than_the_queue_does_not_close_a_client_that_keeps_up():
    hub = Hub(max_connections_per_user=5)
    tab = FakeConnection(ALICE, send_queue=3)
    hub.add(tab, ALICE)
    for n in range(50):  # one publisher, no pause: like a batch
        assert hub.deliver(ALICE, {"event": "test.event", "n": n}) == 1
    settle()
    assert tab.close_requested is None
    assert len(tab.written) == 50


def test_connection_infos_and_gauge():
    hub = Hub(max_connections_per_user=5)
    a1, b1 = FakeConnection(ALICE), FakeConnection(BOB)

    def gauge() -> float:
        return REGISTRY.get_sample_value("callwire_connections", {"transport": "fake"}) or 0.0

    before = gauge()
    hub.add(a1, ALICE)
    hub.add(b1, BOB)
    infos = {info.id: info for info in hub.connection_infos()}
    assert infos[a1.id].user_id == ALICE
    assert infos[a1.id].transport == "fake"
    assert infos[a1.id].connected_at.endswith("Z")
    assert gauge() == before + 2
    hub.remove(a1)
    hub.remove(a1)  # twice: counted once
    assert gauge() == before + 1

"""One suite, every broker: the same history, ordering, idempotency and ownership rules.

Each test runs against the in-process broker and the Redis broker (a real
redis-server, flushed per test). Delivery through Redis pub/sub is
asynchronous, so tests wait for deliveries with a short bounded deadline,
and prove that *nothing* was delivered by waiting for a later transient
"barrier" message to arrive first (pub/sub keeps publish order).

The node is a recording test double of our own :class:`~webapp.brokers.base.Node`;
the attach tests at the end use the real :class:`~webapp.realtime.Realtime`
with a connection whose transport records frames.
"""

from __future__ import annotations

import importlib
import itertools
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import gevent
import pytest

from tests.test_events import verdict_table
from webapp.brokers.base import Broker, ConnectionInfo, Replay, Snapshot
from webapp.brokers.memory import MemoryBroker
from webapp.config import Settings
from webapp.connection import Connection
from webapp.events import (
    CallState,
    EventDraft,
    OwnershipConflict,
    PublishResult,
    UnknownOwner,
)
from webapp.protocol import encode
from webapp.realtime import Realtime

WAIT_SECONDS = 3.0
ALICE = "alice@contract.example"
BOB = "bob@contract.example"

_barriers = itertools.count(1)


# -- test doubles ------------------------------------------------------------------------------


class RecordingNode:
    """A Node that records every delivery; ``connections`` says how many sockets each user has."""

    def __init__(self, connections: dict[str, int] | None = None) -> None:
        self.connections = dict(connections or {})
        self.deliveries: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def deliver(self, user_id: str, message: dict[str, Any]) -> int:
        with self._lock:
            self.deliveries.append((user_id, message))
        return self.connections.get(user_id, 0)

    def deliver_frame(self, user_id: str, frame: str, event_id: str) -> int:
        message = json.loads(frame)
        # The text clients get is the one the hub would have encoded from the message.
        assert (message["id"], frame) == (event_id, encode(message))
        return self.deliver(user_id, message)

    def local_connections(self) -> list[ConnectionInfo]:
        return [
            ConnectionInfo(id=f"{user}#{n}", user_id=user, connected_at="2025-01-01T00:00:00.000Z")
            for user, count in self.connections.items()
            for n in range(count)
        ]

    def messages(self, user_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [m for u, m in self.deliveries if u == user_id]

    def events(self, user_id: str) -> list[dict[str, Any]]:
        """Delivered messages that carry an id (status events), without barriers."""
        return [m for m in self.messages(user_id) if "id" in m]

    def wait_for_events(self, user_id: str, count: int) -> list[dict[str, Any]]:
        """Wait until ``count`` events reached ``user_id``; return exactly those seen."""
        deadline = time.monotonic() + WAIT_SECONDS
        while len(events := self.events(user_id)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{user_id}: {len(events)} of {count} events delivered")
            gevent.sleep(0.005)
        return events

    def settle(self, broker: Broker, user_id: str) -> None:
        """Return once everything published for ``user_id`` so far has been delivered."""
        marker = {"barrier": next(_barriers)}
        broker.publish_transient(user_id, marker)
        deadline = time.monotonic() + WAIT_SECONDS
        while marker not in self.messages(user_id):
            if time.monotonic() > deadline:
                raise AssertionError(f"barrier for {user_id} never arrived")
            gevent.sleep(0.005)


def load_redis_broker() -> type[Broker]:
    """Return RedisBroker; skip (fail under CI) while webapp/brokers/redis.py does not exist."""
    try:
        module = importlib.import_module("webapp.brokers.redis")
    except ModuleNotFoundError as missing:
        if missing.name != "webapp.brokers.redis":
            raise
        if os.environ.get("CI"):
            pytest.fail("webapp/brokers/redis.py is missing")
        pytest.skip("webapp/brokers/redis.py does not exist yet")
    return module.RedisBroker


def wait_ready(broker: Broker) -> None:
    """Wait until a started broker listens (Redis subscribes in the background)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not broker.is_ready():
        assert time.monotonic() < deadline, "broker never became ready"
        gevent.sleep(0.01)


# -- fixtures ----------------------------------------------------------------------------------


MakeBroker = Callable[..., Broker]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def make_broker(request: pytest.FixtureRequest) -> Iterator[MakeBroker]:
    """Build brokers of one kind; started ones are stopped after the test."""
    kind = request.param
    if kind == "redis":
        broker_class = load_redis_broker()
        redis_server = request.getfixturevalue("redis_server")
        redis_server.flush()
    started: list[Broker] = []

    def make(
        node: Any = None,
        *,
        history_size: int = 50,
        history_ttl_seconds: int = 3600,
        idempotency_ttl_seconds: int = 3600,
    ) -> Broker:
        limits = {
            "history_size": history_size,
            "history_ttl_seconds": history_ttl_seconds,
            "idempotency_ttl_seconds": idempotency_ttl_seconds,
        }
        if kind == "memory":
            broker: Broker = MemoryBroker(**limits)
        else:
            broker = broker_class(redis_server.url, **limits)
        if node is not None:
            broker.start(node)
            started.append(broker)
            wait_ready(broker)
        return broker

    yield make
    for broker in started:
        broker.stop()


@pytest.fixture
def node() -> RecordingNode:
    return RecordingNode({ALICE: 1, BOB: 1})


@pytest.fixture
def broker(make_broker: MakeBroker, node: RecordingNode) -> Broker:
    return make_broker(node)


def publish(broker: Broker, call_id: str, status: str, user_id: str | None = ALICE,
            **extra: Any) -> PublishResult:
    return broker.publish(EventDraft(call_id, status, user_id, **extra))


def ids(messages: list[dict[str, Any]]) -> list[str]:
    return [m["id"] for m in messages]


# -- ids and delivery --------------------------------------------------------------------------


def test_accepted_events_get_increasing_string_ids_per_user(broker, node):
    results: dict[str, list[PublishResult]] = {ALICE: [], BOB: []}
    for n in range(15):
        for user in (ALICE, BOB):
            results[user].append(publish(broker, f"{user}-call-{n}", "initiated", user))
    for user, answers in results.items():
        answer_ids = [r.id for r in answers]
        assert all(isinstance(i, str) and len(i) == 16 and i.isdigit() for i in answer_ids)
        assert answer_ids == sorted(answer_ids) and len(set(answer_ids)) == 15
        assert all(r.dropped is None for r in answers)
        delivered = node.wait_for_events(user, 15)
        assert ids(delivered) == answer_ids


def test_delivered_message_is_the_seed_event_plus_id_and_timestamp(broker, node):
    data = {"type": "status-update", "customerNumber": "+15550100"}
    result = publish(broker, "call-shape", "ringing", data=data,
                     timestamp="2025-01-26T18:41:38.130Z")
    [message] = node.wait_for_events(ALICE, 1)
    assert message == {
        "event": "call.status.changed", "callId": "call-shape", "status": "ringing",
        "data": data, "id": result.id, "timestamp": "2025-01-26T18:41:38.130Z",
    }


def test_timestamp_defaults_to_the_time_of_publishing(broker, node):
    before = time.time()
    publish(broker, "call-now", "ringing")
    [message] = node.wait_for_events(ALICE, 1)
    stamp = datetime.fromisoformat(message["timestamp"].replace("Z", "+00:00")).timestamp()
    assert message["timestamp"].endswith("Z")
    assert before - 1 <= stamp <= time.time() + 1


def test_publish_answers_the_number_of_connections_reached(make_broker):
    node = RecordingNode({ALICE: 2})
    broker = make_broker(node)
    assert publish(broker, "call-count", "ringing").delivered == 2
    assert publish(broker, "call-nobody", "ringing", "nobody@contract.example").delivered == 0


def test_concurrent_publishers_get_unique_ids_delivered_in_id_order(broker, node):
    answers: list[str] = []
    lock = threading.Lock()

    def publisher(worker: int) -> None:
        for n in range(40):
            result = publish(broker, f"call-{worker}-{n}", "initiated")
            with lock:
                answers.append(result.id)

    threads = [threading.Thread(target=publisher, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(answers) == 160 and len(set(answers)) == 160
    delivered = ids(node.wait_for_events(ALICE, 160))
    # Connections drop an id that is not newer than the last one: order is not cosmetic.
    assert delivered == sorted(answers)


def test_user_ids_are_used_exactly_as_given(broker, node):
    # Normalising emails is the caller's job (the REST layer and webhooks do it).
    result = publish(broker, "call-case", "ringing", "Carol@Contract.EXAMPLE")
    node.settle(broker, "Carol@Contract.EXAMPLE")
    assert ids(node.events("Carol@Contract.EXAMPLE")) == [result.id]
    assert broker.call_state("call-case").owner == "Carol@Contract.EXAMPLE"


# -- ordering and dedup ------------------------------------------------------------------------


def test_reordered_and_repeated_statuses_become_a_clean_forward_sequence(broker, node):
    arriving = ["ringing", "initiated", "ringing", "in-progress", "ended", "in-progress", "ended"]
    answers = [publish(broker, "call-webhooks", status) for status in arriving]
    assert [(r.dropped, r.delivered) for r in answers] == [
        (None, 1), ("stale", 0), ("duplicate", 0), (None, 1), (None, 1), ("stale", 0),
        ("duplicate", 0),
    ]
    assert [r.id is None for r in answers] == [False, True, True, False, False, True, True]
    node.settle(broker, ALICE)
    delivered = node.events(ALICE)
    assert [m["status"] for m in delivered] == ["ringing", "in-progress", "ended"]
    assert ids(delivered) == [r.id for r in answers if r.id]
    assert broker.call_state("call-webhooks").status == "ended"


def test_every_pair_of_statuses(broker, node):
    expected: dict[tuple[str, str], str] = {}
    verdicts: dict[tuple[str, str], str] = {}
    accepted: list[str] = []
    for n, (current, arriving, verdict) in enumerate(verdict_table()):
        call_id = f"pair-{n}"
        accepted.append(publish(broker, call_id, current).id)
        second = publish(broker, call_id, arriving)
        verdicts[(current, arriving)] = second.dropped or "accept"
        expected[(current, arriving)] = verdict
        if second.id is not None:
            accepted.append(second.id)
        else:
            assert second.delivered == 0
        assert broker.call_state(call_id).status == (arriving if verdict == "accept" else current)
    assert verdicts == expected
    node.settle(broker, ALICE)
    assert ids(node.events(ALICE)) == accepted
    first = accepted[0]
    assert ids(broker.history_since(ALICE, first).events) == accepted[1:]


def test_provider_sequence_numbers_are_honoured(broker, node):
    assert publish(broker, "call-seq", "ringing", sequence=2).dropped is None
    assert publish(broker, "call-seq", "in-progress", sequence=1).dropped == "stale"
    assert publish(broker, "call-seq", "in-progress", sequence=3).dropped is None
    assert broker.call_state("call-seq").status == "in-progress"


# -- idempotency -------------------------------------------------------------------------------


def test_a_retried_idempotency_key_answers_the_first_answer_with_delivered_0(broker, node):
    first = publish(broker, "call-idem", "ringing", idempotency_key="key-1")
    assert first.id is not None and first.delivered == 1
    retry = publish(broker, "call-idem", "ringing", idempotency_key="key-1")
    assert (retry.id, retry.delivered, retry.dropped) == (first.id, 0, None)

    moved_on = publish(broker, "call-idem", "in-progress", idempotency_key="key-2")
    assert moved_on.id is not None and moved_on.id > first.id  # a new key is a new publish
    late_retry = publish(broker, "call-idem", "ringing", idempotency_key="key-1")
    assert (late_retry.id, late_retry.delivered, late_retry.dropped) == (first.id, 0, None)
    # The key decides, not the body: even a different body gets the first answer.
    odd_retry = publish(broker, "call-idem", "ended", idempotency_key="key-2")
    assert (odd_retry.id, odd_retry.delivered, odd_retry.dropped) == (moved_on.id, 0, None)

    node.settle(broker, ALICE)
    assert ids(node.events(ALICE)) == [first.id, moved_on.id]
    assert ids(broker.history_since(ALICE, first.id).events) == [moved_on.id]
    assert broker.call_state("call-idem").status == "in-progress"


def test_a_retried_key_of_a_dropped_publish_answers_dropped_again(broker, node):
    publish(broker, "call-idem-drop", "in-progress")
    first = publish(broker, "call-idem-drop", "ringing", idempotency_key="key-stale")
    assert (first.id, first.delivered, first.dropped) == (None, 0, "stale")
    retry = publish(broker, "call-idem-drop", "ringing", idempotency_key="key-stale")
    assert (retry.id, retry.delivered, retry.dropped) == (None, 0, "stale")


def test_an_idempotency_key_is_forgotten_after_its_ttl(make_broker, node):
    broker = make_broker(node, idempotency_ttl_seconds=1)
    first = publish(broker, "call-idem-ttl", "ringing", idempotency_key="key-ttl")
    assert first.id is not None
    assert publish(broker, "call-idem-ttl", "ringing", idempotency_key="key-ttl").id == first.id
    time.sleep(1.2)
    again = publish(broker, "call-idem-ttl", "ringing", idempotency_key="key-ttl")
    assert (again.id, again.dropped) == (None, "duplicate")  # judged anew


# -- ownership ---------------------------------------------------------------------------------


def test_first_event_registers_the_owner_and_later_events_may_omit_it(broker, node):
    first = publish(broker, "call-owned", "initiated", ALICE)
    later = publish(broker, "call-owned", "ringing", None)
    assert later.id is not None and later.id > first.id and later.delivered == 1
    node.settle(broker, ALICE)
    assert ids(node.events(ALICE)) == [first.id, later.id]
    state = broker.call_state("call-owned")
    assert (state.owner, state.status) == (ALICE, "ringing")


@pytest.mark.parametrize("status", ["ringing", "in-progress"])  # a duplicate and a forward move
def test_another_owner_is_refused_and_nothing_is_stored_or_delivered(broker, node, status):
    first = publish(broker, "call-conflict", "ringing", ALICE)
    with pytest.raises(OwnershipConflict) as refused:
        publish(broker, "call-conflict", status, BOB)
    assert refused.value.status == 409
    node.settle(broker, ALICE)
    node.settle(broker, BOB)
    assert node.events(BOB) == [] and ids(node.events(ALICE)) == [first.id]
    assert broker.history_since(ALICE, first.id) == Replay([], True, first.id)
    assert broker.snapshot(BOB).events == []
    state = broker.call_state("call-conflict")
    assert (state.owner, state.status, state.event["id"]) == (ALICE, "ringing", first.id)


def test_idempotency_keys_are_scoped_by_owner_so_two_users_never_collide(broker, node):
    """Issue 11 #6: B reusing A's key got A's answer and B's event was lost."""
    first = publish(broker, "call-key-alice", "ringing", ALICE, idempotency_key="shared")
    second = publish(broker, "call-key-bob", "ringing", BOB, idempotency_key="shared")
    assert second.id is not None and second.id != first.id and second.dropped is None
    # Without userId, the key is scoped by the call's known owner.
    retry = publish(broker, "call-key-bob", "ringing", None, idempotency_key="shared")
    assert (retry.id, retry.delivered) == (second.id, 0)
    node.settle(broker, BOB)
    assert ids(node.events(BOB)) == [second.id]
    assert broker.call_state("call-key-bob").owner == BOB
    # Owner and key are kept apart however they are spelled (no concatenation collision).
    odd = publish(broker, "call-key-odd-1", "ringing", "a", idempotency_key="b:idem:c")
    other = publish(broker, "call-key-odd-2", "ringing", "a:idem:b", idempotency_key="c")
    assert odd.id is not None and other.id is not None and other.dropped is None


def test_a_refused_publish_does_not_consume_its_idempotency_key(broker, node):
    publish(broker, "call-conflict-key", "ringing", ALICE)
    with pytest.raises(OwnershipConflict):
        publish(broker, "call-conflict-key", "in-progress", BOB, idempotency_key="key-c")
    answer = publish(broker, "call-conflict-key", "in-progress", ALICE, idempotency_key="key-c")
    assert answer.id is not None and answer.dropped is None


def test_unknown_call_without_user_id_is_refused(broker, node):
    with pytest.raises(UnknownOwner) as refused:
        publish(broker, "call-orphan", "ringing", None)
    assert refused.value.status == 409  # the body was valid; the call's state refuses it
    assert broker.call_state("call-orphan") is None
    node.settle(broker, ALICE)
    assert node.events(ALICE) == []


# -- history -----------------------------------------------------------------------------------


def test_history_since_returns_exactly_the_newer_events_in_order(broker, node):
    answers = [publish(broker, f"call-h{n}", "ringing") for n in range(5)]
    delivered = node.wait_for_events(ALICE, 5)
    replay = broker.history_since(ALICE, answers[1].id)
    assert replay == Replay(delivered[2:], True, answers[-1].id)
    assert broker.history_since(ALICE, answers[0].id).events == delivered[1:]


def test_history_since_the_latest_id_is_empty_and_recovered(broker, node):
    answers = [publish(broker, f"call-l{n}", "ringing") for n in range(3)]
    assert broker.history_since(ALICE, answers[-1].id) == Replay([], True, answers[-1].id)


@pytest.mark.parametrize("unknown", ["0000000000000001", "9999999999999999", "abc", ""])
def test_history_since_an_unknown_id_is_not_recovered(broker, node, unknown):
    answers = [publish(broker, f"call-u{n}", "ringing") for n in range(3)]
    replay = broker.history_since(ALICE, unknown)
    assert (replay.events, replay.recovered, replay.latest_id) == ([], False, answers[-1].id)


def test_history_since_for_a_user_without_history(broker, node):
    assert broker.history_since("nobody@contract.example", "1737916898130000") == Replay(
        [], False, None
    )


def test_history_is_bounded_by_history_size(make_broker, node):
    broker = make_broker(node, history_size=5)
    answers = [publish(broker, f"call-b{n}", "ringing") for n in range(8)]
    kept = [r.id for r in answers[3:]]
    # The id just before the oldest kept event: still exact, so still recovered.
    assert ids(broker.history_since(ALICE, answers[3].id).events) == kept[1:]
    for gone in answers[:3]:  # older than history: the client must refetch
        replay = broker.history_since(ALICE, gone.id)
        assert (replay.events, replay.recovered) == ([], False)
    assert broker.history_since(ALICE, answers[-1].id) == Replay([], True, answers[-1].id)


def test_history_expires_after_history_ttl(make_broker, node):
    broker = make_broker(node, history_ttl_seconds=1)
    answers = [publish(broker, f"call-t{n}", "ringing") for n in range(3)]
    assert ids(broker.history_since(ALICE, answers[0].id).events) == [answers[1].id, answers[2].id]
    assert len(broker.snapshot(ALICE).events) == 3
    time.sleep(1.2)
    replay = broker.history_since(ALICE, answers[0].id)
    assert (replay.events, replay.recovered) == ([], False)
    assert broker.snapshot(ALICE).events == []
    later = publish(broker, "call-t-later", "ringing")
    assert later.id > answers[-1].id  # ids keep increasing after history expired
    assert broker.history_since(ALICE, later.id) == Replay([], True, later.id)


# -- snapshot ----------------------------------------------------------------------------------


def test_snapshot_is_the_stored_latest_event_of_each_open_call_oldest_first(broker, node):
    steps = [
        ("call-a", "ringing"), ("call-b", "initiated"), ("call-c", "ringing"),
        ("call-b", "in-progress"), ("call-c", "ended"), ("call-d", "initiated"),
        ("call-d", "failed"), ("call-e", "in-progress"), ("call-a", "ringing"),  # duplicate
    ]
    answers: dict[str, PublishResult] = {}
    for call_id, status in steps:
        answers.setdefault(f"{call_id}:{status}", publish(broker, call_id, status))
    assert answers["call-a:ringing"].id is not None
    publish(broker, "call-bob", "ringing", BOB)
    node.settle(broker, ALICE)
    delivered = {m["id"]: m for m in node.events(ALICE)}
    snapshot = broker.snapshot(ALICE)
    assert [(m["callId"], m["status"]) for m in snapshot.events] == [
        ("call-a", "ringing"), ("call-b", "in-progress"), ("call-e", "in-progress"),
    ]
    assert ids(snapshot.events) == [
        answers["call-a:ringing"].id, answers["call-b:in-progress"].id,
        answers["call-e:in-progress"].id,
    ]
    assert snapshot.events == [delivered[i] for i in ids(snapshot.events)]
    assert snapshot.latest_id == answers["call-e:in-progress"].id


def test_snapshot_of_a_user_without_calls_is_empty(broker, node):
    publish(broker, "call-other", "ringing", BOB)
    assert broker.snapshot(ALICE) == Snapshot([], None)


def test_snapshot_leaves_out_calls_whose_latest_event_left_history(make_broker, node):
    broker = make_broker(node, history_size=3)
    publish(broker, "call-old", "ringing")
    publish(broker, "call-new", "initiated")
    publish(broker, "call-new", "ringing")
    newest = publish(broker, "call-new", "in-progress")
    assert ids(broker.snapshot(ALICE).events) == [newest.id]
    moved = publish(broker, "call-old", "in-progress")  # back in history: back in the snapshot
    assert ids(broker.snapshot(ALICE).events) == [newest.id, moved.id]


# -- call state and transient messages ---------------------------------------------------------


def test_call_state_is_the_latest_accepted_event(broker, node):
    publish(broker, "call-state", "ringing")
    latest = publish(broker, "call-state", "ended", data={"endedReason": "customer-ended-call"},
                     timestamp="2025-01-26T18:41:38.130Z")
    publish(broker, "call-state", "ringing")  # stale: changes nothing
    node.settle(broker, ALICE)
    state = broker.call_state("call-state")
    assert isinstance(state, CallState)
    assert (state.call_id, state.owner, state.status) == ("call-state", ALICE, "ended")
    assert state.updated_at == "2025-01-26T18:41:38.130Z"
    assert state.event == node.events(ALICE)[-1]
    assert state.event["id"] == latest.id
    assert broker.call_state("call-unknown") is None


def test_transient_messages_are_delivered_live_only(broker, node):
    kept = publish(broker, "call-before", "ringing")
    message = {"event": "test.event", "callId": "test_call", "status": "test",
               "data": {"message": "hi"}}
    assert broker.publish_transient(ALICE, message) == 1
    node.settle(broker, ALICE)
    assert message in node.messages(ALICE)
    assert "id" not in message
    assert broker.history_since(ALICE, kept.id) == Replay([], True, kept.id)
    assert ids(broker.snapshot(ALICE).events) == [kept.id]
    assert broker.call_state("test_call") is None


def test_presence_lists_the_connections_of_every_node(broker, node):
    assert broker.is_ready()
    deadline = time.monotonic() + WAIT_SECONDS
    while broker.connection_count(ALICE) != 1 and time.monotonic() < deadline:
        gevent.sleep(0.02)
    assert broker.connection_count(ALICE) == 1
    assert broker.connection_count("nobody@contract.example") == 0
    assert sorted(c.user_id for c in broker.presence()) == [ALICE, BOB]


# -- attach: the resume / snapshot seam, with every broker -------------------------------------


class RecordingConnection(Connection):
    """A connection whose transport is a list of the frames written to it."""

    transport_name = "test"

    def __init__(self) -> None:
        super().__init__(send_queue=10_000)
        self.frames: list[dict[str, Any]] = []

    def _enqueue(self, frame: str, queued_at: float | None) -> bool:
        # Written at once: Redis delivers from its listener thread, where no
        # gevent loop would ever run a writer greenlet.
        self.frames.append(json.loads(frame))
        return True

    def _wake_session(self) -> None:
        pass

    def written(self) -> list[dict[str, Any]]:
        return list(self.frames)


class RecordingRealtime(Realtime):
    """The real node, noting which event ids reached it (to wait for pub/sub)."""

    def __init__(self, broker: Broker) -> None:
        super().__init__(Settings(), broker, verifier=None)  # type: ignore[arg-type]
        self.seen: list[dict[str, Any]] = []

    def deliver(self, user_id: str, message: dict[str, Any]) -> int:
        delivered = super().deliver(user_id, message)
        self.seen.append(message)
        return delivered

    def deliver_frame(self, user_id: str, frame: str, event_id: str) -> int:
        delivered = super().deliver_frame(user_id, frame, event_id)
        self.seen.append(json.loads(frame))
        return delivered

    def wait_seen(self, event_ids: list[str], transient: dict[str, Any] | None = None) -> None:
        deadline = time.monotonic() + WAIT_SECONDS
        while not (set(event_ids) <= {m.get("id") for m in self.seen}
                   and (transient is None or transient in self.seen)):
            assert time.monotonic() < deadline, "messages never reached the node"
            gevent.sleep(0.005)


class ConcurrentPublishes:
    """Wrap a broker so events are published while history is being read (the seam)."""

    def __init__(self, inner: Broker) -> None:
        self.inner = inner
        self.node: RecordingRealtime | None = None
        self.before_read: list[EventDraft] = []
        self.after_read: list[EventDraft] = []
        self.transient_after_read: dict[str, Any] | None = None
        self.published: list[PublishResult] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def history_since(self, user_id: str, last_event_id: str) -> Replay:
        return self._around(lambda: self.inner.history_since(user_id, last_event_id))

    def snapshot(self, user_id: str) -> Snapshot:
        return self._around(lambda: self.inner.snapshot(user_id))

    def _around(self, read: Callable[[], Any]) -> Any:
        fresh = [self.inner.publish(d) for d in self.before_read]
        result = read()
        fresh += [self.inner.publish(d) for d in self.after_read]
        self.before_read, self.after_read = [], []
        if self.transient_after_read is not None:
            self.inner.publish_transient(ALICE, self.transient_after_read)
        self.published += fresh
        self.node.wait_seen([r.id for r in fresh if r.id], self.transient_after_read)
        return result


@pytest.fixture
def seam(make_broker: MakeBroker) -> ConcurrentPublishes:
    wrapper = ConcurrentPublishes(make_broker())
    wrapper.node = RecordingRealtime(wrapper)  # type: ignore[arg-type]
    wrapper.node.ensure_started()
    wait_ready(wrapper.inner)
    yield wrapper
    wrapper.inner.stop()


def drafts(*steps: tuple[str, str]) -> list[EventDraft]:
    return [EventDraft(call_id, status, ALICE) for call_id, status in steps]


def test_resume_replays_history_then_live_with_nothing_repeated_at_the_seam(seam):
    before = [seam.inner.publish(d) for d in drafts(*[(f"call-r{n}", "ringing") for n in range(3)])]
    seam.before_read = drafts(("call-r3", "ringing"))  # in history and held live
    seam.after_read = drafts(("call-r4", "ringing"), ("call-r0", "in-progress"))  # only held
    connection = RecordingConnection()
    seam.node.attach(connection, ALICE, before[0].id)
    live_after = seam.inner.publish(EventDraft("call-r1", "in-progress", ALICE))
    seam.node.wait_seen([live_after.id])
    frames = connection.written()
    assert frames[0] == {
        "type": "connected", "userId": ALICE,
        "message": "Successfully connected to WebSocket server", "recovered": True,
    }
    expected = [r.id for r in before[1:]] + [r.id for r in seam.published] + [live_after.id]
    assert ids(frames[1:]) == expected
    assert connection.last_event_id == live_after.id


def test_snapshot_seam_sends_the_snapshot_then_only_newer_live_events(seam):
    a1, b1 = (seam.inner.publish(d) for d in drafts(("call-a", "ringing"), ("call-b", "ringing")))
    # Published while the snapshot is read: the snapshot already sums these up
    # (call-c ended, so it is not in it; call-a shows in-progress).
    seam.before_read = drafts(("call-c", "initiated"), ("call-c", "ended"),
                              ("call-a", "in-progress"))
    seam.after_read = drafts(("call-b", "ended"))  # newer than the snapshot: sent live
    connection = RecordingConnection()
    seam.node.attach(connection, ALICE, None)
    frames = connection.written()
    assert frames[0]["type"] == "connected" and "recovered" not in frames[0]
    events = frames[1:]
    _, _, a_moved, b_ended = seam.published
    assert [(m["callId"], m["status"]) for m in events] == [
        ("call-b", "ringing"), ("call-a", "in-progress"), ("call-b", "ended"),
    ]
    assert ids(events) == [b1.id, a_moved.id, b_ended.id]
    assert connection.last_event_id == b_ended.id


def test_unrecovered_resume_is_followed_by_the_snapshot(seam):
    a1 = seam.inner.publish(EventDraft("call-a", "ringing", ALICE))
    seam.inner.publish(EventDraft("call-b", "ringing", ALICE))
    b2 = seam.inner.publish(EventDraft("call-b", "ended", ALICE))
    connection = RecordingConnection()
    seam.node.attach(connection, ALICE, "0000000000000001")
    frames = connection.written()
    assert frames[0]["recovered"] is False
    assert ids(frames[1:]) == [a1.id]
    assert connection.last_event_id == b2.id


def test_transient_message_during_the_seam_is_delivered_after_history(seam):
    first = seam.inner.publish(EventDraft("call-t", "ringing", ALICE))
    seam.transient_after_read = {"event": "test.event", "callId": "test_call", "status": "test",
                                 "data": {}}
    connection = RecordingConnection()
    seam.node.attach(connection, ALICE, None)
    frames = connection.written()
    assert [f.get("type") or f.get("event") for f in frames] == [
        "connected", "call.status.changed", "test.event",
    ]
    assert frames[1]["id"] == first.id and "id" not in frames[2]


# -- batches: every rule of a single publish, per draft, in order -------------------------------


def kind(outcome: PublishResult | Exception) -> str:
    """Name an outcome so batch and single publishes can be compared."""
    if isinstance(outcome, Exception):
        return type(outcome).__name__
    if outcome.dropped:
        return outcome.dropped
    # Every user here holds a connection: only a retried key answers delivered 0.
    return "accepted" if outcome.delivered else "cached"


def single_outcome(broker: Broker, draft: EventDraft) -> PublishResult | Exception:
    try:
        return broker.publish(draft)
    except (OwnershipConflict, UnknownOwner) as refusal:
        return refusal


def test_a_batch_answers_each_draft_as_if_published_alone(broker, node):
    drafts = [
        EventDraft("b-1", "initiated", ALICE),
        EventDraft("b-1", "initiated", ALICE),  # duplicate
        EventDraft("b-1", "ringing", BOB),  # another owner: refused, nothing stored
        EventDraft("b-orphan", "ringing", None),  # unknown owner
        EventDraft("b-1", "ringing", None, idempotency_key="bk-1"),  # owner known by now
        EventDraft("b-1", "ringing", None, idempotency_key="bk-1"),  # retried key
        EventDraft("b-1", "initiated", ALICE),  # stale
        EventDraft("b-2", "initiated", BOB),
        EventDraft("b-1", "ended", ALICE),
    ]
    outcomes = broker.publish_batch(drafts)
    assert [kind(o) for o in outcomes] == [
        "accepted", "duplicate", "OwnershipConflict", "UnknownOwner", "accepted", "cached",
        "stale", "accepted", "accepted",
    ]
    assert outcomes[2].status == 409 and outcomes[3].status == 409
    assert (outcomes[5].id, outcomes[5].delivered) == (outcomes[4].id, 0)
    accepted_alice = [outcomes[i].id for i in (0, 4, 8)]
    assert accepted_alice == sorted(accepted_alice) and all(o.delivered == 1 for o in
                                                            (outcomes[0], outcomes[7]))
    assert ids(node.wait_for_events(ALICE, 3)) == accepted_alice
    assert ids(node.wait_for_events(BOB, 1)) == [outcomes[7].id]
    node.settle(broker, ALICE)
    assert len(node.events(ALICE)) == 3
    state = broker.call_state("b-1")
    assert (state.owner, state.status, state.event["id"]) == (ALICE, "ended", outcomes[8].id)
    assert broker.call_state("b-orphan") is None


def test_a_batch_and_the_same_drafts_one_by_one_agree(make_broker, node):
    """A seeded mix of statuses, owners, sequence numbers and keys, both ways."""
    import random

    rng = random.Random(10)
    statuses = ["initiated", "ringing", "in-progress", "ended", "failed"]
    plan = []
    for _ in range(240):  # more than one chunk of the Redis broker
        plan.append((
            f"mix-{rng.randrange(12)}", rng.choice(statuses),
            rng.choice([ALICE, ALICE, BOB, None]),
            rng.choice([None, None, rng.randrange(5)]),
            rng.choice([None, None, None, f"key-{rng.randrange(8)}"]),
        ))

    def drafts(prefix: str) -> list[EventDraft]:
        return [EventDraft(f"{prefix}{call}", status, user,
                           idempotency_key=f"{prefix}{key}" if key else None, sequence=seq)
                for call, status, user, seq, key in plan]

    one_by_one = make_broker(node)
    singles = [single_outcome(one_by_one, d) for d in drafts("single-")]
    batched = make_broker(RecordingNode({ALICE: 1, BOB: 1})).publish_batch(drafts("batch-"))
    assert [kind(o) for o in batched] == [kind(o) for o in singles]
    assert len({kind(o) for o in singles}) >= 5  # the plan does exercise the rules


def test_a_long_batch_keeps_its_order(broker, node):
    drafts = [EventDraft(f"long-{n}", "ringing", ALICE) for n in range(230)]
    outcomes = broker.publish_batch(drafts)
    assert all(o.dropped is None for o in outcomes)
    answered = [o.id for o in outcomes]
    assert answered == sorted(answered) and len(set(answered)) == 230
    assert ids(node.wait_for_events(ALICE, 230)) == answered
    assert [m["callId"] for m in node.events(ALICE)] == [d.call_id for d in drafts]

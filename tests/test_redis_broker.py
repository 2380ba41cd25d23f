"""The Redis broker against a real redis-server: what only Redis has to get right.

The shared behaviour (ordering, history, snapshot, idempotency, ownership)
is in ``test_broker_contract.py``, run against both brokers. Here: several
brokers on one Redis standing in for several processes, keys that expire,
state that outlives a process, the Lua forward-only rule against
``webapp.events.judge``, outages, recovery of what pub/sub missed, and TLS.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
import redis

from tests.support.net import free_port, wait_for_port
from tests.support.redis_server import RedisServer
from tests.support.tools import require_tool
from webapp.brokers.base import BrokerBusy, BrokerUnavailable, ConnectionInfo, Replay
from webapp.brokers.redis import RedisBroker
from webapp.events import STATUSES, CallState, EventDraft, OwnershipConflict, judge

pytestmark = pytest.mark.redis

WAIT_SECONDS = 5.0
ALICE = "alice@example.com"
BOB = "bob@example.com"


class Process:
    """A node standing in for one worker: its connections, and what reached them.

    Like real connections it drops an event whose id is not newer than the
    last one it has, so a replay never shows up twice.
    """

    def __init__(self, connections: dict[str, int] | None = None) -> None:
        self.connections = dict(connections or {})
        self.received: dict[str, list[dict[str, Any]]] = {}
        self._last: dict[str, int] = {}

    def deliver(self, user_id: str, message: dict[str, Any]) -> int:
        count = self.connections.get(user_id, 0)
        if not count:
            return 0
        if "id" in message:
            if int(message["id"]) <= self._last.get(user_id, -1):
                return 0
            self._last[user_id] = int(message["id"])
        self.received.setdefault(user_id, []).append(message)
        return count

    def deliver_frame(self, user_id: str, frame: str, event_id: str) -> int:
        message = json.loads(frame)
        assert message["id"] == event_id
        return self.deliver(user_id, message)

    def local_connections(self) -> list[ConnectionInfo]:
        return [
            ConnectionInfo(f"c{user}{n}", user, "2026-01-01T00:00:00.000Z")
            for user, count in self.connections.items() for n in range(count)
        ]

    def ids(self, user_id: str) -> list[str]:
        return [m["id"] for m in self.received.get(user_id, []) if "id" in m]

    def wait(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + WAIT_SECONDS
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            gevent.sleep(0.005)  # deliveries run on this thread's gevent hub

    def wait_ids(self, user_id: str, expected: list[str]) -> None:
        self.wait(lambda: len(self.ids(user_id)) >= len(expected), f"{len(expected)} events")
        assert self.ids(user_id) == expected


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    redis_server.flush()
    return redis_server.url


@pytest.fixture
def brokers() -> Iterator[Callable[..., RedisBroker]]:
    """Build Redis brokers (started on a node if one is given); all stopped afterwards."""
    made: list[RedisBroker] = []

    def make(url: str, node: Process | None = None, **limits: Any) -> RedisBroker:
        broker = RedisBroker(url, **limits)
        made.append(broker)
        if node is not None:
            broker.start(node)
            wait_until(broker.is_ready, "the listener to subscribe")
        return broker

    yield make
    for broker in made:
        broker.stop()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        gevent.sleep(0.01)


def ringing(call_id: str, user_id: str | None = ALICE, **extra: Any) -> EventDraft:
    return EventDraft(call_id, "ringing", user_id, **extra)


# -- several processes on one Redis ------------------------------------------------------


def test_an_event_published_anywhere_reaches_every_process_once(redis_url, brokers):
    first, second = Process({ALICE: 1}), Process({ALICE: 2, BOB: 1})
    one, two = brokers(redis_url, first), brokers(redis_url, second)
    answers = [one.publish(ringing("call-1")), two.publish(ringing("call-2")),
               two.publish(ringing("call-3", BOB))]
    first.wait_ids(ALICE, [answers[0].id, answers[1].id])
    second.wait_ids(ALICE, [answers[0].id, answers[1].id])
    second.wait_ids(BOB, [answers[2].id])
    assert BOB not in first.received
    # Live-only messages take the same way, without an id.
    assert one.publish_transient(ALICE, {"event": "test.event", "n": 1}) == 3
    for process in (first, second):
        process.wait(lambda p=process: {"event": "test.event", "n": 1} in p.received[ALICE],
                     "the transient message")


def test_delivered_and_presence_count_connections_of_every_live_process(redis_url, brokers):
    first, second = Process({ALICE: 2}), Process({ALICE: 1, BOB: 1})
    one, two = brokers(redis_url, first), brokers(redis_url, second)
    assert one.publish(ringing("call-count")).delivered == 3
    assert two.publish(ringing("call-count-bob", BOB)).delivered == 1
    assert one.connection_count(ALICE) == two.connection_count(ALICE) == 3
    listed = one.presence()
    assert sorted(c.user_id for c in listed) == [ALICE, ALICE, ALICE, BOB]
    assert len({c.id for c in listed}) == 4  # unique across processes

    # A connection that closes is reported soon (the node says so).
    second.connections = {BOB: 1}
    two.presence_changed()
    wait_until(lambda: one.connection_count(ALICE) == 2, "the closed connection to vanish")
    # A process that stops takes its connections with it.
    two.stop()
    assert one.publish(ringing("call-bob-gone", BOB)).delivered == 0
    assert one.connection_count(ALICE) == 2


def test_presence_of_many_connections_takes_a_bounded_share_of_the_process(redis_url, brokers):
    """Each presence write lists every connection: in a reconnect storm (a change every
    few milliseconds) the writes must leave the worker time to serve inits (issue 12)."""
    node = Process({f"user{n}@example.com": 1 for n in range(4000)})
    broker = brokers(redis_url, node)
    writes: list[tuple[float, float]] = []
    write = broker._write_presence

    def timed_write() -> None:
        started = time.monotonic()
        write()
        writes.append((started, time.monotonic()))

    broker._write_presence = timed_write
    deadline = time.monotonic() + 15
    while len(writes) < 2 and time.monotonic() < deadline:
        broker.presence_changed()  # connections come and go all the time
        gevent.sleep(0.01)
    assert len(writes) >= 2, writes
    for (start, end), (following, _) in itertools.pairwise(writes):
        # Before: the next write 0.2 s after the last one, which took ~0.1 s here.
        assert following - end >= min(4.5, 10 * (end - start)), writes
    assert broker.connection_count("user7@example.com") == 1


def test_ids_increase_per_user_whichever_process_publishes(redis_url, brokers):
    watcher = Process({ALICE: 1})
    brokers(redis_url, watcher)
    publishers = [brokers(redis_url) for _ in range(3)]
    answers: list[str] = []
    lock = threading.Lock()

    def publish_from(broker: RedisBroker, name: int) -> None:
        for n in range(40):
            result = broker.publish(ringing(f"call-{name}-{n}"))
            with lock:
                answers.append(result.id)

    threads = [threading.Thread(target=publish_from, args=(b, n)) for n, b in enumerate(publishers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(set(answers)) == 120
    # The order of pub/sub delivery is the order of ids: a watcher that drops
    # anything not newer than what it has still sees every one.
    watcher.wait_ids(ALICE, sorted(answers))


def test_state_outlives_the_process_that_wrote_it(redis_url, brokers):
    before = brokers(redis_url)
    first = before.publish(ringing("call-restart", idempotency_key="key-restart"))
    second = before.publish(EventDraft("call-restart", "in-progress", ALICE))
    before.stop()

    after = brokers(redis_url)
    state = after.call_state("call-restart")
    assert (state.owner, state.status, state.event["id"]) == (ALICE, "in-progress", second.id)
    assert after.history_since(ALICE, first.id) == Replay([second.event], True, second.id)
    assert [m["id"] for m in after.snapshot(ALICE).events] == [second.id]
    retry = after.publish(ringing("call-restart", idempotency_key="key-restart"))
    assert (retry.id, retry.delivered) == (first.id, 0)
    with pytest.raises(OwnershipConflict):
        after.publish(EventDraft("call-restart", "ended", BOB))
    assert after.publish(EventDraft("call-restart", "ended", None)).id > second.id


def test_every_key_expires_and_history_stays_bounded(redis_url, brokers):
    broker = brokers(redis_url, Process({ALICE: 1}), history_size=5,
                     history_ttl_seconds=600, idempotency_ttl_seconds=300)
    for n in range(12):
        broker.publish(ringing(f"call-bound-{n}", idempotency_key=f"key-{n}"))
    broker.publish(EventDraft("call-bound-0", "ended", ALICE))
    broker.publish_transient(ALICE, {"event": "test.event"})
    client = redis.Redis.from_url(redis_url)
    keys = sorted(k.decode() for k in client.scan_iter("*"))
    assert keys and all(k.startswith("callwire:") for k in keys)
    ttls = {key: client.ttl(key) for key in keys}
    assert all(0 < ttl <= 600 for ttl in ttls.values()), ttls
    assert all(ttls[k] <= 300 for k in keys if k.startswith("callwire:idem:"))
    assert all(ttls[k] <= 60 for k in keys if k.startswith(("callwire:w:", "callwire:workers")))
    assert client.zcard(f"callwire:u:{ALICE}:h") == 5
    client.close()


# -- the forward-only rule in Lua is webapp.events.judge ----------------------------------------


def test_the_lua_rule_agrees_with_judge_including_sequence_numbers(redis_url, brokers):
    broker = brokers(redis_url)
    sequences = (None, 4, 5, 6)
    cases = itertools.product(STATUSES, (None, 5), STATUSES, sequences)
    for n, (before, before_seq, status, seq) in enumerate(cases):
        call_id = f"judge-{n}"
        broker.publish(EventDraft(call_id, before, ALICE, sequence=before_seq))
        previous = CallState(call_id, ALICE, before, "", {}, before_seq)
        draft = EventDraft(call_id, status, ALICE, sequence=seq)
        result = broker.publish(draft)
        assert (result.dropped or "accept") == judge(previous, draft), (before, before_seq,
                                                                        status, seq)


# -- outages -------------------------------------------------------------------------------


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone, which it may kill and restart."""
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def test_a_redis_outage_answers_unavailable_fast_and_delivery_resumes(own_redis, brokers,
                                                                     caplog):
    caplog.set_level(logging.INFO, logger="webapp.brokers.redis")
    process = Process({ALICE: 1})
    broker = brokers(own_redis.url, process)
    before = broker.publish(ringing("call-before"))
    process.wait_ids(ALICE, [before.id])

    own_redis.stop()
    wait_until(lambda: not broker.is_ready(), "readiness to fail")
    operations = {
        "publish": lambda: broker.publish(ringing("call-down")),
        "publish_transient": lambda: broker.publish_transient(ALICE, {"event": "x"}),
        "history_since": lambda: broker.history_since(ALICE, before.id),
        "snapshot": lambda: broker.snapshot(ALICE),
        "call_state": lambda: broker.call_state("call-before"),
        "presence": broker.presence,
        "connection_count": lambda: broker.connection_count(ALICE),
    }
    for name, operation in operations.items():
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable):
            operation()
        assert time.monotonic() - started < 1.5, f"{name} waited for a dead Redis"
    gevent.sleep(0.5)  # the listener retries meanwhile, and must not give up

    own_redis.start()  # same port, empty (no persistence)
    wait_until(broker.is_ready, "the listener to resubscribe", timeout=10)
    after = broker.publish(ringing("call-after"))
    process.wait_ids(ALICE, [before.id, after.id])
    assert "retrying in" in caplog.text


def test_a_full_pool_waits_for_a_connection_and_is_busy_not_down(redis_url, brokers):
    """Thousands of inits at once wait for a pooled connection; a healthy Redis is never
    reported down because this process ran out of connections (issue 12)."""
    broker = brokers(redis_url, max_connections=4, pool_wait_seconds=0.5)
    pool = broker._redis.connection_pool
    held = [pool.get_connection() for _ in range(4)]
    # All four busy: a command waits, then gives up as busy, not as Redis down.
    started = time.monotonic()
    with pytest.raises(BrokerBusy):
        broker.snapshot(ALICE)
    assert 0.4 < time.monotonic() - started < 1.5
    assert broker.is_ready()
    # A connection freed during the wait serves the waiting command.
    result: list[Any] = []
    waiter = threading.Thread(target=lambda: result.append(broker.snapshot(ALICE)))
    waiter.start()
    time.sleep(0.1)
    pool.release(held.pop())
    waiter.join(2)
    assert result and result[0].events == []
    for connection in held:
        pool.release(connection)
    # Many more concurrent commands than connections all succeed.
    answers: list[Any] = []
    threads = [threading.Thread(target=lambda: answers.append(broker.snapshot(ALICE)))
               for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert len(answers) == 40
    assert len(pool._connections) <= 4


def test_events_published_while_a_subscription_is_down_are_recovered(own_redis, brokers,
                                                                    caplog):
    caplog.set_level(logging.INFO, logger="webapp.brokers.redis")
    watcher = Process({ALICE: 1})
    brokers(own_redis.url, watcher)
    publisher = brokers(own_redis.url)
    admin = redis.Redis.from_url(own_redis.url)
    answers = []
    for n in range(30):
        if n % 5 == 0:
            # Drop every subscription: events published right after are never
            # seen live by the watcher, only in history.
            admin.client_kill_filter(_type="pubsub")
        answers.append(publisher.publish(ringing(f"call-gap-{n}")).id)
    watcher.wait_ids(ALICE, answers)
    admin.close()
    assert "replayed" in caplog.text and "redis listener: connection lost" in caplog.text


def test_a_node_holding_nobody_costs_no_recovery(redis_url, brokers, caplog):
    caplog.set_level(logging.INFO, logger="webapp.brokers.redis")
    broker = brokers(redis_url, Process())
    broker.publish(ringing("call-nobody"))
    assert "replayed" not in caplog.text


# -- TLS (rediss://, Heroku style self-signed certificate) -----------------------------------


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "redis.internal")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "redis.crt", directory / "redis.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    return cert_path, key_path


@pytest.fixture
def tls_redis_port(tmp_path: Path) -> Iterator[int]:
    binary = require_tool("redis-server")
    cert, key = self_signed_certificate(tmp_path)
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key),
         "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield port
    finally:
        process.kill()
        process.wait(timeout=10)


def test_rediss_url_with_a_self_signed_certificate(tls_redis_port, brokers):
    port = tls_redis_port
    strict = brokers(f"rediss://127.0.0.1:{port}/0")
    with pytest.raises(BrokerUnavailable):  # verification is on unless the URL says otherwise
        strict.publish(ringing("call-tls"))
    process = Process({ALICE: 1})
    broker = brokers(f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=none", process)
    answer = broker.publish(ringing("call-tls"))
    process.wait_ids(ALICE, [answer.id])
    assert broker.history_since(ALICE, answer.id) == Replay([], True, answer.id)


def test_unix_socket_url(tmp_path, brokers):
    binary = require_tool("redis-server")
    path = tmp_path / "redis.sock"
    process = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", str(path), "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(path.exists, "the unix socket")
        node = Process({ALICE: 1})
        broker = brokers(f"unix://{path}?db=0", node)
        answer = broker.publish(ringing("call-unix"))
        node.wait_ids(ALICE, [answer.id])
    finally:
        process.kill()
        process.wait(timeout=10)


# -- a batch when Redis goes away part way -------------------------------------------------


def test_a_batch_cut_off_by_an_outage_says_which_drafts_were_answered(redis_url, brokers):
    from tests.support.tcp_proxy import CuttingProxy
    from webapp.brokers.base import BatchInterrupted
    from webapp.brokers.redis import BATCH_CHUNK

    direct = redis.Redis.from_url(redis_url)
    proxy = CuttingProxy(int(redis_url.rsplit(":", 1)[1].split("/")[0]))
    try:
        broker = brokers(proxy.url)  # not started: only publishes use the proxy
        broker.publish(ringing("cut-warm-up"))  # loads the script
        drafts = [ringing(f"cut-{n}", idempotency_key=f"cut-key-{n}")
                  for n in range(2 * BATCH_CHUNK + 50)]
        proxy.cut_after(b"accept")  # Redis vanishes right after answering the first chunk
        with pytest.raises(BatchInterrupted) as interrupted:
            broker.publish_batch(drafts)
        assert proxy.wait_cut(1)
        answered = interrupted.value.outcomes
        assert len(answered) == BATCH_CHUNK
        assert all(o.id is not None and o.dropped is None for o in answered)
        # Exactly the answered drafts are stored, in order; nothing after them ran.
        stored = [m.decode() for m in direct.zrange("callwire:u:alice@example.com:h", 0, -1)]
        assert len(stored) == 1 + BATCH_CHUNK
        assert direct.hget("callwire:call:cut-99", "status") == b"ringing"
        assert not direct.exists("callwire:call:cut-100")
        with pytest.raises(BrokerUnavailable):  # still down: a new batch fails whole
            broker.publish_batch(drafts[BATCH_CHUNK:])

        # Back up, the client retries the whole batch: its keys answer the first part
        # with what it answered then, and the rest is published now.
        proxy.restore()
        retried = broker.publish_batch(drafts)
        assert [o.id for o in retried[:BATCH_CHUNK]] == [o.id for o in answered]
        assert all(o.delivered == 0 for o in retried[:BATCH_CHUNK])
        rest = [o.id for o in retried[BATCH_CHUNK:]]
        assert None not in rest and rest == sorted(rest) and rest[0] > answered[-1].id
    finally:
        proxy.close()
        direct.close()

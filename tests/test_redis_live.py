"""Live: three gunicorn masters (1 + 1 + 3 workers) on one real Redis, real sockets.

Any socket receives what is published through any process; a resume may land
on another process; Redis killed and restarted under a steady publisher
loses nothing that was acknowledged, and no socket is closed meanwhile.
"""

from __future__ import annotations

import contextlib
import itertools
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
import requests

from tests.support.net import wait_for_port
from tests.support.redis_server import RedisServer
from tests.support.server import LiveServer, start_server
from tests.support.tokens import emulator_token
from tests.support.wsclient import Client, ConnectionClosedError

pytestmark = pytest.mark.redis

ADMIN = "admin@example.com"
WAIT_SECONDS = 10.0
WORKERS = 5  # A and B with one worker each, C with three


class DurableRedisServer(RedisServer):
    """A redis-server that writes each change to its append-only file before answering.

    Without persistence a Redis killed by SIGKILL forgets its history, and an
    event acknowledged in the last instant may never have been sent to the
    subscribers either: nothing could recover it. Production Redis that must
    not lose acknowledged events runs like this (see docs/redis.md).
    """

    def start(self) -> DurableRedisServer:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)
        wait_until(self._answers, "redis-server to load its data")
        return self

    def _answers(self) -> bool:
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()


@dataclass
class Cluster:
    redis: DurableRedisServer
    a: LiveServer
    b: LiveServer
    c: LiveServer

    @property
    def servers(self) -> tuple[LiveServer, LiveServer, LiveServer]:
        return self.a, self.b, self.c

    def subscribers(self) -> int:
        """How many workers are subscribed to the event channel right now."""
        client = redis.Redis.from_url(self.redis.url, socket_timeout=1)
        try:
            return dict(client.pubsub_numsub("callwire:events"))[b"callwire:events"]
        except redis.ConnectionError:
            return 0
        finally:
            client.close()

    def wait_all_subscribed(self) -> None:
        wait_until(lambda: self.subscribers() == WORKERS, "every worker to subscribe")


def wait_until(condition: Callable[[], Any], what: str, timeout: float = WAIT_SECONDS) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return result


def wait_healthy(server: LiveServer) -> None:
    """Wait until a server started with ``wait=False`` answers /healthz."""
    wait_for_port(server.port)

    def healthy() -> bool:
        assert server.process.poll() is None, f"server exited:\n{server.log()}"
        with contextlib.suppress(requests.RequestException):
            return requests.get(f"{server.http}/healthz", timeout=1).status_code == 200
        return False
    # Five workers booting at once on a busy shared machine can take 20 s and more.
    wait_until(healthy, f"{server.http} to serve", timeout=60)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with contextlib.ExitStack() as stack:
        store = DurableRedisServer(tmp_path_factory.mktemp("redis-live")).start()
        stack.callback(store.stop)
        common = {"REDIS_URL": store.url, "ADMIN_EMAILS": ADMIN}
        servers = []
        for name, workers in (("redis-a", "1"), ("redis-b", "1"), ("redis-c", "3")):
            server = start_server({**common, "WEB_CONCURRENCY": workers}, name=name, wait=False)
            stack.callback(server.stop)
            servers.append(server)
        for server in servers:
            wait_healthy(server)
        live = Cluster(store, *servers)
        live.wait_all_subscribed()
        yield live


@pytest.fixture
def user() -> str:
    return f"user-{uuid.uuid4().hex[:10]}@example.com"


class Collector:
    """A socket whose messages are read by a thread, so none is missed while the test acts."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.messages: list[dict[str, Any]] = []
        self.closed: str | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                message = self.client.recv_json(timeout=60)
            except ConnectionClosedError as closed:
                self.closed = f"closed {closed.code}"
                return
            except Exception as error:  # noqa: BLE001 - any end of the socket is recorded
                self.closed = repr(error)
                return
            self.messages.append(message)

    def events(self) -> list[dict[str, Any]]:
        return [m for m in list(self.messages) if m.get("event") == "call.status.changed"]

    def event_ids(self) -> list[str]:
        return [m["id"] for m in self.events()]

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], what: str) -> None:
        wait_until(lambda: any(predicate(m) for m in list(self.messages)), what)

    def wait_events(self, count: int) -> list[str]:
        wait_until(lambda: len(self.event_ids()) >= count, f"{count} events")
        return self.event_ids()

    def round_trip(self) -> None:
        """Prove the socket is open and served: ping, then wait for the pong."""
        before = sum(1 for m in list(self.messages) if m.get("type") == "pong")
        self.client.send_json({"type": "ping"})
        wait_until(
            lambda: sum(1 for m in list(self.messages) if m.get("type") == "pong") > before,
            "pong",
        )


@pytest.fixture
def connect() -> Iterator[Callable[..., Collector]]:
    opened: list[Client] = []

    def open_socket(server: LiveServer, user_id: str, last_event_id: str | None = None,
                    expect_recovered: bool | None = None) -> Collector:
        client = Client(server.ws, timeout=10)
        opened.append(client)
        answer = client.init(user_id, token=emulator_token(user_id), last_event_id=last_event_id)
        assert answer["type"] == "connected", answer
        if expect_recovered is not None:
            assert answer["recovered"] is expect_recovered
        return Collector(client)

    yield open_socket
    for client in opened:
        client.close()


def publish(server: LiveServer, user_id: str, call_id: str, status: str = "ringing") -> dict:
    answer = server.publish({"callId": call_id, "userId": user_id, "status": status})
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]


def send_test_message(server: LiveServer, user_id: str, text: str) -> requests.Response:
    return requests.post(
        f"{server.http}/api/v6/call/websocket/test",
        json={"targetUserId": user_id, "message": text},
        headers={"Authorization": f"Bearer {emulator_token(ADMIN)}"},
        timeout=10,
    )


def holders(server: LiveServer, user_id: str) -> tuple[int, int]:
    """Ask the clients endpoint: (connections of the user, distinct workers holding them)."""
    answer = requests.get(
        f"{server.http}/api/v6/call/websocket/clients",
        headers={"Authorization": f"Bearer {emulator_token(ADMIN)}"}, timeout=10,
    ).json()
    [entry] = [u for u in answer["data"]["users"] if u["userId"] == user_id] or [None]
    if entry is None:
        return 0, 0
    # Other workers' connection ids are prefixed with the worker's name.
    workers = {c["id"].rsplit("/", 1)[0] if "/" in c["id"] else "" for c in entry["connections"]}
    return entry["connectionCount"], len(workers)


def workers_holding(server: LiveServer, user_id: str, sockets: int) -> int:
    """Wait until presence shows all ``sockets`` of the user; return how many workers hold them."""
    wait_until(lambda: holders(server, user_id)[0] == sockets, "presence")
    return holders(server, user_id)[1]


def sockets_on_every_worker(server: LiveServer, user_id: str, workers: int,
                            connect: Callable[..., Collector]) -> list[Collector]:
    """Open sockets to a multi-worker master until each of its workers holds one.

    Idle gunicorn workers do not share accepts evenly (one tends to take
    them all), so each socket is opened while a large batch keeps some
    worker busy.
    """
    sockets: list[Collector] = []
    for _ in range(20):
        busy = threading.Thread(target=server.publish, args=([
            {"callId": f"busy-{uuid.uuid4().hex}", "userId": "busy@example.com",
             "status": "ringing"} for _ in range(300)
        ],))
        busy.start()
        time.sleep(0.02)
        sockets.append(connect(server, user_id))
        busy.join(timeout=30)
        spread = workers_holding(server, user_id, len(sockets))
        if spread == workers:
            return sockets
    pytest.fail(f"could not place a socket on each of {workers} workers")


# -- fan-out across processes --------------------------------------------------------------


def test_a_socket_on_any_process_receives_what_any_process_publishes(cluster, user, connect):
    sockets = sockets_on_every_worker(cluster.c, user, 3, connect)
    sockets += [connect(cluster.a, user), connect(cluster.b, user)]
    wait_until(lambda: holders(cluster.a, user)[0] == len(sockets), "presence of every socket")

    sources = [cluster.a, cluster.b, cluster.c, cluster.c, cluster.c, cluster.b]
    answers = [publish(source, user, f"mesh-{n}") for n, source in enumerate(sources)]
    assert [a["delivered"] for a in answers] == [len(sockets)] * len(sources)
    expected = [a["id"] for a in answers]
    assert expected == sorted(expected)
    for socket in sockets:
        assert socket.wait_events(len(expected)) == expected

    # Live-only test messages reach every process too, after the events.
    answer = send_test_message(cluster.c, user, "to everyone")
    assert answer.status_code == 200 and answer.json()["delivered"] == len(sockets)
    for socket in sockets:
        socket.wait_for(lambda m: m.get("data", {}).get("message") == "to everyone",
                        "the test message")
        assert socket.event_ids() == expected  # nothing repeated
        assert socket.closed is None


def test_resume_lands_on_another_process(cluster, user, connect):
    first = connect(cluster.a, user)
    e1 = publish(cluster.b, user, "resume-1")["id"]
    assert first.wait_events(1) == [e1]
    first.client.close()
    wait_until(lambda: holders(cluster.c, user)[0] == 0, "the socket to be gone")

    missed = [publish(cluster.c, user, "resume-2")["id"],
              publish(cluster.a, user, "resume-1", "in-progress")["id"]]
    resumed = connect(cluster.b, user, last_event_id=e1, expect_recovered=True)
    assert resumed.wait_events(2) == missed
    live = publish(cluster.c, user, "resume-3")["id"]
    assert resumed.wait_events(3) == [*missed, live]

    # Another resume, on some worker of the three-worker master.
    again = connect(cluster.c, user, last_event_id=missed[0], expect_recovered=True)
    assert again.wait_events(2) == [missed[1], live]
    # A new page (no lastEventId) gets the snapshot of open calls, from Redis.
    fresh = connect(cluster.a, user)
    assert fresh.wait_events(3) == [*missed, live]
    assert [m["callId"] for m in fresh.messages if "id" in m] == [
        "resume-2", "resume-1", "resume-3",
    ]


# -- Redis killed and restarted under load -----------------------------------------------------


@dataclass
class Publisher:
    """Publish one event after another, alternating servers, recording every answer."""

    servers: list[LiveServer]
    user_id: str
    acknowledged: list[str] = field(default_factory=list)
    #: callIds of the publishes that were not acknowledged.
    failed_calls: set[str] = field(default_factory=set)
    refusals: list[str] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        sessions = [requests.Session() for _ in self.servers]
        for n in itertools.count():
            if self.stopping.is_set():
                break
            index, call_id = n % len(self.servers), f"steady-{n}"
            try:
                answer = sessions[index].post(
                    f"{self.servers[index].http}/api/v6/call/events",
                    json={"callId": call_id, "userId": self.user_id, "status": "ringing"},
                    headers={"X-API-Key": self.servers[index].api_key}, timeout=5,
                )
            except requests.RequestException:
                self.failed_calls.add(call_id)
            else:
                if answer.status_code == 200:
                    self.acknowledged.append(answer.json()["data"]["id"])
                else:
                    self.failed_calls.add(call_id)
                    if answer.status_code == 503:
                        self.refusals.append(answer.json()["message"])
            time.sleep(0.01)
        for session in sessions:
            session.close()


def test_a_redis_restart_loses_no_acknowledged_event(cluster, user, connect):
    cluster.wait_all_subscribed()
    sockets = [connect(cluster.a, user), connect(cluster.b, user), connect(cluster.c, user)]
    wait_until(lambda: holders(cluster.a, user)[0] == 3, "presence of every socket")
    publisher = Publisher([cluster.a, cluster.c], user)
    thread = threading.Thread(target=publisher.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: len(publisher.acknowledged) >= 20, "publishes before the outage")

        cluster.redis.stop()  # SIGKILL: no goodbye to anyone
        acknowledged_before = len(publisher.acknowledged)
        for server in cluster.servers:
            wait_until(lambda s=server: requests.get(f"{s.http}/readyz", timeout=5)
                       .status_code == 503, "readiness to fail")
        refused = cluster.b.publish({"callId": "during", "userId": user, "status": "ringing"})
        assert refused.status_code == 503, refused.text
        assert refused.json() == {
            "success": False, "message": "Broker unavailable: event not accepted, retry shortly",
        }
        for socket in sockets:
            socket.round_trip()  # open, and served, while Redis is gone
        # A new socket cannot get its history: it is told to retry (1013), not
        # greeted as connected with nothing replayed.
        refused_init = Client(cluster.b.ws, timeout=10)
        try:
            refused_init.send_json({"type": "init", "payload": {
                "userId": user, "token": emulator_token(user)}})
            assert "retry" in refused_init.recv_json()["message"]
            assert refused_init.wait_closed(5)[0] == 1013
        finally:
            refused_init.close()
        wait_until(lambda: len(publisher.refusals) >= 5, "publishes refused while down")
        time.sleep(1.5)  # long enough for the listeners' backoff to grow

        cluster.redis.start()  # same port, data reloaded from its append-only file
        cluster.wait_all_subscribed()
        for server in cluster.servers:
            wait_until(lambda s=server: requests.get(f"{s.http}/readyz", timeout=5)
                       .status_code == 200, "readiness to return")
        restarted_at = len(publisher.acknowledged)
        late = connect(cluster.b, user)  # the client's retry is served once Redis is back
        wait_until(lambda: len(publisher.acknowledged) >= restarted_at + 20,
                   "publishes after the restart")
    finally:
        publisher.stopping.set()
        thread.join(timeout=10)

    assert len(publisher.acknowledged) > acknowledged_before  # some were accepted after
    barrier = send_test_message(cluster.a, user, "barrier")
    assert barrier.status_code == 200, barrier.text
    acknowledged = publisher.acknowledged
    for socket in [*sockets, late]:
        socket.wait_for(lambda m: m.get("data", {}).get("message") == "barrier", "the barrier")
        received = socket.event_ids()
        assert received == sorted(set(received)), "an event was repeated or out of order"
        assert socket.closed is None
        wanted = acknowledged if socket is not late else acknowledged[restarted_at:]
        missing = set(wanted) - set(received)
        assert not missing, f"{len(missing)} acknowledged events never arrived"
        # An event stored in the instant Redis died may reach sockets although
        # its publisher saw the connection drop (a 503): only those may.
        unacknowledged = {m["callId"] for m in socket.events() if m["id"] not in set(acknowledged)}
        assert unacknowledged <= publisher.failed_calls
        socket.round_trip()

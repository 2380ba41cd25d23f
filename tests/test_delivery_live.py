"""Exact delivery against the real server: ids, resume, snapshot, ordering, the publish API.

Every test uses fresh users, so tests share servers. "Nothing else arrived"
is proven with a barrier: a test message (POST /api/v6/call/websocket/test)
travels the same path as events, so every event published before it is
received before it. The resume and snapshot tests run twice: against the
in-process broker and against Redis.
"""

from __future__ import annotations

import itertools
import random
import re
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.support.redis_server import RedisServer
from tests.support.server import LiveServer, start_server
from tests.support.tokens import emulator_token
from tests.support.wsclient import Client

ISO_UTC_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
CONNECTED = "Successfully connected to WebSocket server"
SEED_TEST_MESSAGE = "WebSocket message sent successfully"


# -- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server on the Redis broker, with a redis-server of its own (others flush theirs)."""
    redis_server = RedisServer(tmp_path_factory.mktemp("redis-delivery")).start()
    live = start_server({"REDIS_URL": redis_server.url}, name="delivery-redis")
    yield live
    live.stop()
    redis_server.stop()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def live(request: pytest.FixtureRequest) -> LiveServer:
    """The shared memory-broker server, then the Redis-broker one."""
    if request.param == "memory":
        return request.getfixturevalue("server")
    return request.getfixturevalue("redis_live")


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:12]}@example.com"


#: Call ids are global (one owner each): every test of every run gets its own.
RUN = uuid.uuid4().hex[:8]
_tests = itertools.count()


@pytest.fixture
def cid() -> Any:
    """Return a function mapping a short name to a call id unique to this test."""
    prefix = f"call-{RUN}-{next(_tests)}"
    return lambda name: f"{prefix}-{name}"


def bearer(email: str, **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {emulator_token(email, **claims)}"}


def connect(server: LiveServer, clients, email: str, last_event_id: str | None = None
            ) -> tuple[Client, dict[str, Any]]:
    """Open a socket and init it as ``email``; return the client and its ``connected``."""
    client = clients(server.ws)
    answer = client.init(email, token=emulator_token(email), last_event_id=last_event_id)
    assert answer["type"] == "connected", answer
    return client, answer


def publish_ok(server: LiveServer, body: Any) -> dict[str, Any]:
    answer = server.publish(body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["success"] is True
    return answer.json()["data"]


def publish_events(server: LiveServer, email: str, steps: list[tuple[str, str]]) -> list[str]:
    """Publish (callId, status) steps that must all be accepted; return their ids."""
    ids = []
    for call_id, status in steps:
        data = publish_ok(server, {"callId": call_id, "userId": email, "status": status})
        assert data["id"] is not None, data
        ids.append(data["id"])
    return ids


def send_test_message(server: LiveServer, target: str, text: str) -> requests.Response:
    return requests.post(
        f"{server.http}/api/v6/call/websocket/test",
        json={"targetUserId": target, "message": text, "event": "test.event"},
        headers=bearer("sender@example.com"), timeout=10,
    )


def read_until_barrier(server: LiveServer, client: Client, email: str,
                       timeout: float = 10.0) -> list[dict[str, Any]]:
    """Return every message received before a fresh test message reaches ``client``."""
    marker = f"barrier-{uuid.uuid4().hex}"
    assert send_test_message(server, email, marker).status_code == 200
    before = []
    deadline = time.monotonic() + timeout
    while True:
        message = client.recv_json(timeout=max(0.1, deadline - time.monotonic()))
        if message.get("event") == "test.event":
            if message["data"]["message"] == marker:
                return before
            if str(message["data"]["message"]).startswith("barrier-"):
                continue  # another connection's barrier (they reach all of the user's)
        before.append(message)


def recv_events(client: Client, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    return [client.recv_json(timeout=max(0.1, deadline - time.monotonic())) for _ in range(count)]


def ids(messages: list[dict[str, Any]]) -> list[str]:
    return [m["id"] for m in messages]


def assert_well_formed_events(events: list[dict[str, Any]]) -> None:
    """Events are the seed's object plus a string id, increasing, and an ISO 8601 UTC time."""
    for event in events:
        assert set(event) == {"event", "callId", "status", "data", "id", "timestamp"}, event
        assert event["event"] == "call.status.changed"
        assert isinstance(event["id"], str) and len(event["id"]) == 16 and event["id"].isdigit()
        assert ISO_UTC_MS.match(event["timestamp"]), event["timestamp"]
    assert ids(events) == sorted(ids(events)) and len(set(ids(events))) == len(events)


# -- resume ------------------------------------------------------------------------------------


def test_resume_replays_exactly_the_events_missed_while_away(cid, live, clients):
    email = new_user()
    first, answer = connect(live, clients, email)
    assert "recovered" not in answer
    seen = publish_events(live, email, [(cid("0"), "initiated"), (cid("0"), "ringing")])
    assert ids(recv_events(first, 2)) == seen
    first.close()

    missed = publish_events(live, email, [(cid(f"{n}"), "ringing") for n in range(1, 11)])
    second, answer = connect(live, clients, email, last_event_id=seen[-1])
    assert answer == {
        "type": "connected", "userId": email, "message": CONNECTED,
        "expiresAt": answer["expiresAt"], "recovered": True,
    }
    replayed = read_until_barrier(live, second, email)
    assert ids(replayed) == missed
    assert [(m["callId"], m["status"]) for m in replayed] == [
        (cid(f"{n}"), "ringing") for n in range(1, 11)
    ]
    assert_well_formed_events(replayed)
    assert seen[-1] < missed[0]


def test_resume_from_the_latest_id_replays_nothing_and_goes_live(cid, live, clients):
    email = new_user()
    [latest] = publish_events(live, email, [(cid("l"), "ringing")])
    client, answer = connect(live, clients, email, last_event_id=latest)
    assert answer["recovered"] is True
    assert read_until_barrier(live, client, email) == []
    [live_id] = publish_events(live, email, [(cid("l"), "in-progress")])
    assert ids(read_until_barrier(live, client, email)) == [live_id]


def test_resume_with_a_publisher_running_loses_and_repeats_nothing(cid, live, clients):
    """30 reconnects while events keep coming: the union received is exactly what was acked."""
    email = new_user()
    acked: list[str] = []
    stop = threading.Event()
    failures: list[str] = []

    def publisher() -> None:
        with requests.Session() as session:
            n = 0
            while not stop.is_set():
                answer = session.post(
                    f"{live.http}/api/v6/call/events",
                    json={"callId": cid(f"{n}"), "userId": email, "status": "ringing"},
                    headers={"X-API-Key": live.api_key}, timeout=10,
                )
                if answer.status_code != 200 or answer.json()["data"]["id"] is None:
                    failures.append(answer.text)
                    return
                acked.append(answer.json()["data"]["id"])
                n += 1
                time.sleep(0.002)

    received: list[dict[str, Any]] = []
    rng = random.Random(7)
    client, _ = connect(live, clients, email)
    thread = threading.Thread(target=publisher, daemon=True)
    thread.start()
    gaps = 0  # reconnects that had events to replay: the resume path really ran
    try:
        for _ in range(30):
            for _ in range(rng.randint(0, 6)):  # read a little, then drop the connection
                received.append(client.recv_json(timeout=5))
            client.close()
            time.sleep(rng.choice([0, 0.005, 0.02]))
            last = received[-1]["id"] if received else None
            client, answer = connect(live, clients, email, last_event_id=last)
            gaps += bool(acked) and acked[-1] != last
            if last is not None:
                assert answer["recovered"] is True, answer
    finally:
        stop.set()
        thread.join(timeout=15)
    assert not failures, failures
    assert len(acked) >= 60, f"publisher too slow to overlap the reconnects: {len(acked)}"
    while not received or received[-1]["id"] != acked[-1]:
        received.append(client.recv_json(timeout=5))
    assert read_until_barrier(live, client, email) == []
    assert ids(received) == acked
    assert_well_formed_events(received)
    assert gaps >= 15, f"only {gaps} of 30 reconnects missed events while away"


def test_unknown_last_event_id_is_not_recovered_and_the_snapshot_follows(cid, live, clients):
    email = new_user()
    ringing, _, _ = publish_events(
        live, email, [(cid("open"), "ringing"), (cid("done"), "ringing"), (cid("done"), "ended")]
    )
    for unknown in ("0000000000000001", "not-an-event-id"):
        client, answer = connect(live, clients, email, last_event_id=unknown)
        assert answer["recovered"] is False
        snapshot = read_until_barrier(live, client, email)
        assert ids(snapshot) == [ringing]
        assert (snapshot[0]["callId"], snapshot[0]["status"]) == (cid("open"), "ringing")


def test_an_id_older_than_history_is_not_recovered(cid, server, clients):
    email = new_user()
    batch = [{"callId": cid(f"{n}"), "userId": email, "status": "ringing"} for n in range(205)]
    results = publish_ok(server, batch)
    oldest = results[0]["id"]
    client, answer = connect(server, clients, email, last_event_id=oldest)
    assert answer["recovered"] is False  # HISTORY_SIZE is 200: 5 have left
    snapshot = read_until_barrier(server, client, email)
    assert ids(snapshot) == [r["id"] for r in results[5:]]  # the calls still in history
    kept = results[5]["id"]
    client, answer = connect(server, clients, email, last_event_id=kept)
    assert answer["recovered"] is True
    assert ids(read_until_barrier(server, client, email)) == [r["id"] for r in results[6:]]


# -- snapshot ----------------------------------------------------------------------------------


def test_seed_init_mid_call_receives_the_snapshot_right_after_connected(cid, live, clients):
    email, other = new_user(), new_user()
    acks = dict(zip(
        ["a1", "b1", "a2", "c1", "c2", "d1", "e1"],
        publish_events(live, email, [
            (cid("a"), "ringing"), (cid("b"), "initiated"), (cid("a"), "in-progress"),
            (cid("c"), "ringing"), (cid("c"), "ended"), (cid("d"), "failed"),
            (cid("e"), "ringing"),
        ]), strict=True,
    ))
    publish_events(live, other, [(cid("other"), "ringing")])
    watcher, _ = connect(live, clients, email, last_event_id=acks["a1"])
    delivered = {m["id"]: m for m in read_until_barrier(live, watcher, email)}

    client, answer = connect(live, clients, email)  # the seed's init: no lastEventId
    assert answer["type"] == "connected" and "recovered" not in answer
    snapshot = read_until_barrier(live, client, email)
    assert ids(snapshot) == [acks["b1"], acks["a2"], acks["e1"]]  # oldest first
    assert [(m["callId"], m["status"]) for m in snapshot] == [
        (cid("b"), "initiated"), (cid("a"), "in-progress"), (cid("e"), "ringing"),
    ]
    assert snapshot == [delivered[i] for i in ids(snapshot)]  # the stored events themselves


def test_snapshot_is_empty_for_a_user_without_open_calls(cid, server, clients):
    email = new_user()
    publish_events(server, email, [(cid("x"), "ringing"), (cid("x"), "ended")])
    client, _ = connect(server, clients, email)
    assert read_until_barrier(server, client, email) == []


# -- ordering, dedup and the publish answers ---------------------------------------------------


def test_reordered_and_repeated_webhook_style_sequence_reaches_the_socket_in_order(
    cid, server, clients
):
    email = new_user()
    client, _ = connect(server, clients, email)
    arriving = ["ringing", "initiated", "ringing", "in-progress", "ended", "in-progress", "ended"]
    answers = [
        publish_ok(server, {"callId": cid("w"), "userId": email, "status": s,
                            "data": {"n": n}})
        for n, s in enumerate(arriving)
    ]
    accepted = [a["id"] for a in answers if a["id"]]
    assert answers == [
        {"id": accepted[0], "delivered": 1},
        {"id": None, "delivered": 0, "dropped": "stale"},
        {"id": None, "delivered": 0, "dropped": "duplicate"},
        {"id": accepted[1], "delivered": 1},
        {"id": accepted[2], "delivered": 1},
        {"id": None, "delivered": 0, "dropped": "stale"},
        {"id": None, "delivered": 0, "dropped": "duplicate"},
    ]
    events = read_until_barrier(server, client, email)
    assert [(m["status"], m["data"]) for m in events] == [
        ("ringing", {"n": 0}), ("in-progress", {"n": 3}), ("ended", {"n": 4}),
    ]
    assert ids(events) == accepted
    assert_well_formed_events(events)


def test_failed_after_ended_is_stale_and_ended_after_failed_too(cid, server):
    email = new_user()
    publish_events(server, email, [(cid("f"), "failed")])
    assert publish_ok(server, {"callId": cid("f"), "status": "ended"}) == {
        "id": None, "delivered": 0, "dropped": "stale",
    }
    publish_events(server, email, [(cid("g"), "ended")])
    assert publish_ok(server, {"callId": cid("g"), "status": "failed"})["dropped"] == "stale"


def test_delivered_counts_every_connection_of_the_owner(cid, server, clients):
    email = new_user()
    tabs = [connect(server, clients, email)[0] for _ in range(3)]
    data = publish_ok(server, {"callId": cid("tabs"), "userId": email, "status": "ringing"})
    assert data["delivered"] == 3
    for tab in tabs:
        assert ids(read_until_barrier(server, tab, email)) == [data["id"]]
    assert publish_ok(server, {"callId": cid("none"), "userId": new_user(),
                               "status": "ringing"})["delivered"] == 0


def test_publish_normalises_the_user_id(cid, server, clients):
    email = new_user()
    client, _ = connect(server, clients, email)
    shouted = f"  {email.upper()} "
    first = publish_ok(server, {"callId": cid("n"), "userId": shouted, "status": "ringing"})
    second = publish_ok(server, {"callId": cid("n"), "userId": email.title(),
                                 "status": "in-progress"})  # same owner, not a 409
    assert first["delivered"] == 1 and second["delivered"] == 1
    assert ids(read_until_barrier(server, client, email)) == [first["id"], second["id"]]


def test_event_timestamp_is_utc_even_when_published_with_an_offset(cid, server, clients):
    email = new_user()
    client, _ = connect(server, clients, email)
    publish_ok(server, {"callId": cid("ts"), "userId": email, "status": "ringing",
                        "timestamp": "2025-01-26T20:41:38.130+02:00"})
    [event] = read_until_barrier(server, client, email)
    assert event["timestamp"] == "2025-01-26T18:41:38.130Z"
    answer = server.publish({"callId": cid("ts2"), "userId": email, "status": "ringing",
                             "timestamp": "yesterday"})
    assert answer.status_code == 400 and answer.json()["success"] is False


@pytest.mark.parametrize(
    "body",
    [
        {"callId": "c", "userId": "a@example.com", "status": "busy"},
        {"callId": "c", "userId": "a@example.com", "status": "Ringing"},
        {"callId": "c", "userId": "a@example.com"},
        {"userId": "a@example.com", "status": "ringing"},
        {"callId": "", "userId": "a@example.com", "status": "ringing"},
        {"callId": "c", "userId": "   ", "status": "ringing"},
        {"callId": "c", "userId": "a@example.com", "status": "ringing", "data": "x"},
        "ringing",
        None,
    ],
)
def test_invalid_publish_is_a_400_in_the_error_shape(server, body):
    answer = server.publish(body)
    assert answer.status_code == 400, answer.text
    assert answer.json() == {"success": False, "message": answer.json()["message"]}
    assert answer.json()["message"]


def test_unknown_call_without_user_id_is_a_409(cid, server):
    # A valid body (userId is optional) that the call's state refuses: 409, as for
    # another user's call; a 400 contradicted the OpenAPI document (issue 11 #14).
    answer = server.publish({"callId": cid("orphan"), "status": "ringing"})
    assert answer.status_code == 409
    assert answer.json()["success"] is False


@pytest.mark.parametrize("key", [None, "", "wrong-key"])
def test_publish_without_the_api_key_is_a_401(server, key):
    headers = {} if key is None else {"X-API-Key": key}
    answer = requests.post(f"{server.http}/api/v6/call/events", headers=headers, timeout=10,
                           json={"callId": "c", "userId": "a@example.com", "status": "ringing"})
    assert answer.status_code == 401
    assert answer.json()["success"] is False


# -- batches -----------------------------------------------------------------------------------


def test_batch_items_are_answered_one_by_one_in_order(cid, server, clients):
    email, other = new_user(), new_user()
    client, _ = connect(server, clients, email)
    other_client, _ = connect(server, clients, other)
    theirs = publish_events(server, other, [(cid("theirs"), "ringing")])
    assert ids(read_until_barrier(server, other_client, other)) == theirs
    batch = [
        {"callId": cid("1"), "userId": email, "status": "ringing"},          # accepted
        {"callId": cid("1"), "userId": email, "status": "busy"},             # 400
        {"callId": cid("1"), "status": "initiated"},                         # stale
        7,                                                                   # 400
        {"callId": cid("1"), "status": "ringing"},                           # duplicate
        {"callId": cid("theirs"), "userId": email, "status": "in-progress"},  # 409
        {"callId": cid("orphan"), "status": "ringing"},                      # 409: no owner
        {"callId": cid("2"), "userId": email, "status": "initiated"},        # accepted
        {"callId": cid("1"), "status": "in-progress"},                       # accepted
    ]
    answer = server.publish(batch)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["success"] is True and len(body["data"]) == len(batch)
    results = body["data"]
    assert [r["code"] for r in results] == [200, 400, 200, 400, 200, 409, 409, 200, 200]
    assert [r["success"] for r in results] == [r["code"] == 200 for r in results]
    assert [r.get("dropped") for r in results] == [
        None, None, "stale", None, "duplicate", None, None, None, None,
    ]
    for result in results:
        if result["code"] != 200:
            assert isinstance(result["message"], str) and result["message"]
        else:
            assert result["delivered"] == (1 if result["id"] else 0)
    accepted = [r["id"] for r in results if r.get("id")]
    assert len(accepted) == 3 and accepted == sorted(accepted)
    events = read_until_barrier(server, client, email)
    assert ids(events) == accepted
    assert [(m["callId"], m["status"]) for m in events] == [
        (cid("1"), "ringing"), (cid("2"), "initiated"), (cid("1"), "in-progress"),
    ]
    assert read_until_barrier(server, other_client, other) == []


def test_a_batch_of_500_is_accepted_and_delivered_in_order(cid, server, clients):
    email = new_user()
    client, _ = connect(server, clients, email)
    batch = [{"callId": cid(f"{n}"), "userId": email, "status": "initiated"} for n in range(500)]
    results = publish_ok(server, batch)
    assert len(results) == 500 and all(r["code"] == 200 and r["id"] for r in results)
    events = read_until_barrier(server, client, email)
    assert ids(events) == [r["id"] for r in results]
    assert [m["callId"] for m in events] == [cid(f"{n}") for n in range(500)]


def test_a_batch_of_501_is_refused_whole(cid, server, clients):
    email = new_user()
    client, _ = connect(server, clients, email)
    batch = [{"callId": cid(f"{n}"), "userId": email, "status": "initiated"} for n in range(501)]
    answer = server.publish(batch)
    assert answer.status_code == 400
    assert answer.json()["success"] is False and answer.json()["message"]
    assert read_until_barrier(server, client, email) == []
    answer = requests.get(f"{server.http}/api/v6/call/{cid('0')}/status", headers=bearer(email),
                          timeout=10)
    assert answer.status_code == 404


# -- idempotency -------------------------------------------------------------------------------


def test_a_retried_idempotency_key_answers_the_first_answer_with_delivered_0(cid, server, clients):
    email = new_user()
    client, _ = connect(server, clients, email)
    key = f"key-{uuid.uuid4().hex}"
    body = {"callId": cid("i"), "userId": email, "status": "ringing", "idempotencyKey": key}
    first = publish_ok(server, body)
    assert first["delivered"] == 1 and first["id"]
    assert publish_ok(server, body) == {"id": first["id"], "delivered": 0}
    moved = publish_ok(server, {"callId": cid("i"), "status": "in-progress",
                                "idempotencyKey": f"{key}-2"})  # another key: a new publish
    assert moved["id"] > first["id"] and moved["delivered"] == 1
    assert publish_ok(server, body) == {"id": first["id"], "delivered": 0}
    assert publish_ok(server, [body, body]) == [
        {"code": 200, "success": True, "id": first["id"], "delivered": 0},
    ] * 2
    assert ids(read_until_barrier(server, client, email)) == [first["id"], moved["id"]]


def test_a_retried_key_of_a_dropped_publish_answers_dropped_again(cid, server):
    email = new_user()
    publish_events(server, email, [(cid("d"), "in-progress")])
    body = {"callId": cid("d"), "status": "ringing", "idempotencyKey": uuid.uuid4().hex}
    expected = {"id": None, "delivered": 0, "dropped": "stale"}
    assert publish_ok(server, body) == expected
    assert publish_ok(server, body) == expected


# -- ownership ---------------------------------------------------------------------------------


def test_another_owner_is_refused_with_409_and_never_delivered(cid, server, clients):
    alice, bob = new_user(), new_user()
    alice_client, _ = connect(server, clients, alice)
    bob_client, _ = connect(server, clients, bob)
    [first] = publish_events(server, alice, [(cid("o"), "ringing")])
    for status in ("ringing", "in-progress"):
        answer = server.publish({"callId": cid("o"), "userId": bob, "status": status,
                                 "data": {"secret": "alice's call"}})
        assert answer.status_code == 409, answer.text
        assert answer.json() == {"success": False, "message": answer.json()["message"]}
    assert read_until_barrier(server, bob_client, bob) == []
    assert ids(read_until_barrier(server, alice_client, alice)) == [first]
    status = requests.get(f"{server.http}/api/v6/call/{cid('o')}/status",
                          headers=bearer(alice), timeout=10).json()["data"]
    assert (status["status"], status["event"]["id"]) == ("ringing", first)

    later = publish_ok(server, {"callId": cid("o"), "status": "in-progress"})  # userId omitted
    assert later["delivered"] == 1
    assert ids(read_until_barrier(server, alice_client, alice)) == [later["id"]]
    assert read_until_barrier(server, bob_client, bob) == []


# -- the call status endpoint ------------------------------------------------------------------


def test_call_status_answers_the_latest_event_to_its_owner(cid, live, clients):
    owner = new_user()
    client, _ = connect(live, clients, owner)
    call_id = cid("status")
    publish_events(live, owner, [(call_id, "ringing")])
    publish_ok(live, {"callId": call_id, "status": "in-progress",
                      "data": {"customerNumber": "+15550100"}})
    publish_ok(live, {"callId": call_id, "status": "ringing"})  # stale: changes nothing
    events = read_until_barrier(live, client, owner)
    answer = requests.get(f"{live.http}/api/v6/call/{call_id}/status", headers=bearer(owner),
                          timeout=10)
    assert answer.status_code == 200
    assert answer.json() == {
        "success": True,
        "data": {"callId": call_id, "status": "in-progress",
                 "updatedAt": events[-1]["timestamp"], "event": events[-1]},
    }


def test_call_status_of_a_terminal_call_is_still_answered(cid, server):
    owner = new_user()
    call_id = cid("status")
    publish_events(server, owner, [(call_id, "ringing"), (call_id, "ended")])
    answer = requests.get(f"{server.http}/api/v6/call/{call_id}/status",
                          headers=bearer(owner.upper()), timeout=10)  # emails compare lower-cased
    assert answer.status_code == 200
    assert answer.json()["data"]["status"] == "ended"


@pytest.mark.parametrize(
    ("who", "code"),
    [("other", 403), ("unknown-call", 404), ("no-token", 401), ("bad-token", 401),
     ("expired", 401)],
)
def test_call_status_refusals(cid, server, who, code):
    owner = new_user()
    call_id = cid("status")
    publish_events(server, owner, [(call_id, "ringing")])
    headers = {
        "other": bearer(new_user()),
        "unknown-call": bearer(owner),
        "no-token": {},
        "bad-token": {"Authorization": "Bearer not-a-token"},
        "expired": bearer(owner, ttl=-60),
    }[who]
    path = cid("unknown") if who == "unknown-call" else call_id
    answer = requests.get(f"{server.http}/api/v6/call/{path}/status", headers=headers,
                          timeout=10)
    assert answer.status_code == code
    assert answer.json() == {"success": False, "message": answer.json()["message"]}
    assert "ringing" not in answer.text


# -- test messages -----------------------------------------------------------------------------


def test_test_messages_are_live_only(cid, server, clients):
    email = new_user()
    [before] = publish_events(server, email, [(cid("t"), "ringing")])
    client, _ = connect(server, clients, email, last_event_id=before)
    answer = send_test_message(server, email, "hello")
    assert answer.status_code == 200
    body = answer.json()
    assert body["delivered"] == 1 and body["message"] == SEED_TEST_MESSAGE
    received = client.recv_json(timeout=5)
    assert received == body["data"]
    assert "id" not in received and received["event"] == "test.event"
    client.close()

    resumed, answer = connect(server, clients, email, last_event_id=before)
    assert answer["recovered"] is True
    assert read_until_barrier(server, resumed, email) == []  # not replayed
    fresh, _ = connect(server, clients, email)
    assert ids(read_until_barrier(server, fresh, email)) == [before]  # nor in the snapshot


def test_the_publish_body_is_documented_in_openapi(server):
    spec = requests.get(f"{server.http}/openapi.json", timeout=10).json()
    body = spec["paths"]["/api/v6/call/events"]["post"]["requestBody"]
    one, many = body["content"]["application/json"]["schema"]["oneOf"]
    assert one == {"$ref": "#/components/schemas/Event"}
    # Items are judged one by one (an invalid item gets its own 400 result), so the
    # document cannot require each to be an Event: it says so instead.
    assert {k: many[k] for k in ("type", "minItems", "maxItems")} == {
        "type": "array", "minItems": 1, "maxItems": 500,
    }
    assert "Event" in many["items"]["description"]
    event = spec["components"]["schemas"]["Event"]
    assert set(event["properties"]) == {
        "callId", "userId", "status", "data", "idempotencyKey", "timestamp",
    }
    assert event["properties"]["status"]["enum"] == [
        "initiated", "ringing", "in-progress", "ended", "failed",
    ]
    status = spec["paths"]["/api/v6/call/{call_id}/status"]["get"]["responses"]["200"]
    answer = status["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    data = spec["components"]["schemas"][answer]["properties"]["data"]["$ref"].rsplit("/", 1)[1]
    assert set(spec["components"]["schemas"][data]["properties"]) == {
        "callId", "status", "updatedAt", "event",
    }


@pytest.mark.parametrize("content_type", ["text/plain", None])
def test_publish_reads_json_whatever_the_content_type(cid, server, content_type):
    body = f'{{"callId": "{cid("ct")}", "userId": "{new_user()}", "status": "ringing"}}'
    headers = {"X-API-Key": server.api_key}
    if content_type:
        headers["Content-Type"] = content_type
    answer = requests.post(f"{server.http}/api/v6/call/events", data=body, headers=headers,
                           timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"]["id"]


def test_a_body_that_is_not_json_is_a_400(server):
    answer = requests.post(f"{server.http}/api/v6/call/events", data="callId=c&status=ringing",
                           headers={"X-API-Key": server.api_key,
                                    "Content-Type": "application/x-www-form-urlencoded"},
                           timeout=10)
    assert answer.status_code == 400
    assert answer.json()["success"] is False

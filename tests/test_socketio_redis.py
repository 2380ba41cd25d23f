"""Socket.IO with Redis (docs/protocol.md §9): a restart the client survives; two workers."""

from __future__ import annotations

import re
import signal
import threading
import time

import pytest

from tests.support.server import start_server
from tests.support.socketio_fixtures import event_body, new_user
from tests.support.tokens import emulator_token

pytestmark = pytest.mark.redis


def test_sigterm_closes_the_transport_and_the_client_resumes_after_the_restart(
    redis_server, node_clients
):
    env = {"REDIS_URL": redis_server.url}
    first = start_server(env, name="socketio-restart-1")
    try:
        user = new_user("restart")
        client = node_clients()
        client.connect(first.http, auth={"token": emulator_token(user)}, auth_function=True)
        client.event("connected")
        client.next("upgrade")
        before = first.publish(event_body(user, "call", "ringing")).json()["data"]["id"]
        assert client.event("call.status.changed")["id"] == before
        first.signal(signal.SIGTERM)
        assert client.event("error") == {"type": "error", "message": "Server restarting"}
        assert client.next("disconnect")["reason"] == "transport close"
        assert first.process.wait(timeout=15) == 0
    finally:
        first.stop()
    # The client keeps trying on its own; the next server comes up on the same port.
    second = start_server(env, port=first.port, name="socketio-restart-2")
    try:
        during = second.publish(event_body(user, "call", "in-progress")).json()["data"]["id"]
        client.next("connect", timeout=15)
        assert client.event("connected")["recovered"] is True
        assert client.event("call.status.changed")["id"] == during
        after = second.publish(event_body(user, "call", "ended")).json()["data"]["id"]
        assert client.event("call.status.changed")["id"] == after
        ids = [m["args"][0]["id"] for m in client.seen
               if m["type"] == "event" and m["name"] == "call.status.changed"]
        assert ids == [before, during, after]  # nothing lost, nothing twice
    finally:
        second.stop()


def test_websocket_only_clients_on_two_workers_get_every_event(redis_server, py_clients):
    live = start_server({"REDIS_URL": redis_server.url, "WEB_CONCURRENCY": "2"},
                        name="socketio-workers")
    try:
        users = [new_user(f"w{i}") for i in range(3)]
        tabs: list[tuple[str, object]] = []
        pids: set[str] = set()
        # The kernel picks the worker; tabs opened at once spread over both.
        booted = time.monotonic() + 20
        while len(set(re.findall(r"\[(\d+)\] webapp\.config: callwire settings", live.log()))) < 2:
            assert time.monotonic() < booted, "the second worker did not boot"
            time.sleep(0.1)
        for _burst in range(4):
            opened = [(users[i % len(users)], py_clients()) for i in range(8)]
            threads = [threading.Thread(target=tab.connect, args=(live.http,), kwargs={
                "auth": {"token": emulator_token(user)}, "transports": ["websocket"]})
                for user, tab in opened]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(15)
            for _user, tab in opened:
                tab.event("connected")
            tabs += opened
            pids = set(re.findall(
                r"\[(\d+)\] webapp\.transports\.socketio: connection \S+ opened", live.log()))
            if len(pids) == 2:
                break
        assert len(pids) == 2, "every tab landed on one worker"
        sent = {user: [] for user in users}
        for status in ("initiated", "ringing", "in-progress", "ended"):
            for user in users:
                answer = live.publish(event_body(user, "call", status)).json()["data"]
                sent[user].append(answer["id"])
        for user, tab in tabs:
            got = [tab.event("call.status.changed")["id"] for _ in sent[user]]
            assert got == sent[user]
    finally:
        live.stop()

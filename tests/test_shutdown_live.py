"""Start-up refusals and SIGTERM (README, docs/protocol.md §8), with the Procfile's command."""

from __future__ import annotations

import signal
import threading
import time
import uuid

import pytest

from tests.support.rawws import OP_CLOSE, OP_TEXT, RawWebSocket, close_code
from tests.support.server import start_server
from tests.support.tokens import emulator_token


def new_user(name: str = "user") -> str:
    return f"{name}-{uuid.uuid4().hex[:10]}@example.com"


@pytest.mark.parametrize("target", ["master", "process group"])
def test_sigterm_closes_every_socket_with_1012_and_exits(server_factory, clients, target):
    live = server_factory(name="shutdown")
    alice, bob = new_user("alice"), new_user("bob")
    initialised = []
    for email in (alice, alice, bob):
        client = clients(live.ws)
        assert client.init(email, token=emulator_token(email))["type"] == "connected"
        initialised.append(client)
    pending = clients(live.ws)  # connected, never initialised
    pending.send_json({"type": "ping"})
    assert pending.recv_json() == {"type": "pong"}
    raw = RawWebSocket(live.port)
    raw.send_json({"type": "init", "payload": {"token": emulator_token(bob)}})
    assert raw.read_frame()[0] == OP_TEXT

    results: dict[str, tuple[int | None, float]] = {}
    started = time.monotonic()

    def watch(name: str, client) -> None:
        code, _ = client.wait_closed(10)
        results[name] = (code, time.monotonic() - started)

    watchers = [threading.Thread(target=watch, args=(f"client-{i}", c))
                for i, c in enumerate([*initialised, pending])]
    for watcher in watchers:
        watcher.start()
    if target == "master":
        live.process.send_signal(signal.SIGTERM)
    else:  # what Heroku does: every process of the dyno gets it
        live.signal(signal.SIGTERM)
    try:
        opcode, payload = raw.read_frame()
        raw_closed_after = time.monotonic() - started
        # A peer that never answers the close frame is let go after a bounded wait.
        assert raw.read_until_gone(5) == []
    finally:
        raw.close()
    for watcher in watchers:
        watcher.join(10)
    exit_code = live.process.wait(timeout=15)
    exited_after = time.monotonic() - started

    assert (opcode, close_code(payload)) == (OP_CLOSE, 1012)
    assert raw_closed_after < 2
    assert len(results) == 4
    for name, (code, after) in results.items():
        assert code == 1012, (name, code)
        assert after < 2, (name, after)  # promptly: well under the 20 s graceful timeout
    assert exit_code == 0
    assert exited_after < 10, exited_after
    log = live.log()
    assert "closing" in log and "1012" in log
    # The master passes SIGTERM on to a worker that already has its own: closed once.
    assert log.count("shutdown: closing") == 1, log.count("shutdown: closing")


def test_several_workers_without_redis_refuse_to_start():
    live = start_server({"WEB_CONCURRENCY": "2"}, name="refuse-workers", wait=False)
    try:
        exit_code = live.process.wait(timeout=20)
    finally:
        live.stop()
    assert exit_code != 0
    log = live.log()
    assert "REDIS_URL" in log
    assert "Booting worker" not in log  # refused before any worker started


def test_production_without_a_project_refuses_to_start():
    live = start_server(
        {"FIREBASE_AUTH_EMULATOR_HOST": "", "FIREBASE_PROJECT_ID": "",
         "GOOGLE_CLOUD_PROJECT": ""},
        name="refuse-project", wait=False,
    )
    try:
        exit_code = live.process.wait(timeout=20)
    finally:
        live.stop()
    assert exit_code != 0
    assert "FIREBASE_PROJECT_ID" in live.log()


def test_a_bad_setting_refuses_to_start_with_its_sentence():
    live = start_server({"WS_MAX_CONNECTIONS_PER_USER": "lots"}, name="refuse-setting",
                        wait=False)
    try:
        exit_code = live.process.wait(timeout=20)
    finally:
        live.stop()
    assert exit_code != 0
    assert "WS_MAX_CONNECTIONS_PER_USER must be a whole number" in live.log()

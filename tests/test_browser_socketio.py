"""The demo page over Socket.IO in real Chromium (docs/protocol.md §9): callwire-socketio.js and the
official socket.io-client bundle served by the app from the pinned npm package."""

from __future__ import annotations

import uuid

import pytest
import requests

from tests.support.net import free_port
from tests.support.redis_server import RedisServer
from tests.test_browser import (  # noqa: F401 - browser and open_tab are fixtures
    QUICK_STOP,
    STATE,
    Tab,
    browser,
    connected_entries,
    open_tab,
    publish,
    shown_statuses,
    unique_email,
    wait_status,
)

pytestmark = pytest.mark.browser


def sign_in_socketio(tab: Tab, origin: str, email: str) -> list[str]:
    """Open the demo page over Socket.IO and connect; return the Socket.IO URLs it used."""
    used: list[str] = []
    tab.page.on("request", lambda r: used.append(r.url) if "/socket.io/" in r.url else None)
    tab.page.on("websocket", lambda ws: used.append(ws.url))
    tab.page.goto(origin + "/?transport=socket.io")
    tab.page.fill("#email", email)
    tab.page.click("#connect")
    tab.wait(f"{STATE} === 'connected'")
    return used


def test_demo_page_over_socketio_polls_then_upgrades_and_shows_a_sample_call(
    server, open_tab  # noqa: F811
):
    tab = open_tab()
    email = unique_email("socketio")
    used = sign_in_socketio(tab, server.http, email)
    assert tab.js("() => callwireDemo.client instanceof Callwire.SocketIOManager")
    assert tab.page.inner_text("#transport") == "socket.io"
    tab.wait("() => callwireDemo.client.socket.io.engine.transport.name === 'websocket'")
    assert any("transport=polling" in url for url in used), used
    assert any(url.startswith("ws://") and "transport=websocket" in url and "sid=" in url
               for url in used), used  # the upgrade of the polling session
    bundle = requests.get(f"{server.http}/vendor/socket.io.min.js", timeout=5)
    assert bundle.status_code == 200 and "socket.io" in bundle.text[:200].lower()

    tab.page.click("#sample-call")
    tab.wait(
        "() => [...document.querySelectorAll('#calls .call')].some("
        "el => el.dataset.status === 'ended')", timeout=15,
    )
    call_id = tab.js("() => document.querySelector('#calls .call').dataset.callId")
    assert shown_statuses(tab, call_id) == ["initiated", "ringing", "in-progress", "ended"]
    clients = requests.get(
        f"{server.http}/api/v6/call/websocket/clients",
        headers={"Authorization": "Bearer " + tab.js(
            "() => callwireDemo.getToken(false)")}, timeout=5,
    ).json()["data"]
    assert [c["transport"] for u in clients["users"] for c in u["connections"]] == ["socket.io"]
    tab.shot("socketio-sample-call")


@pytest.mark.redis
def test_demo_page_over_socketio_resumes_after_a_server_restart(
    server_factory, redis_server, open_tab  # noqa: F811
):
    port = free_port()
    redis_env = {"REDIS_URL": redis_server.url, **QUICK_STOP}
    first = server_factory(redis_env, port=port, name="browser-socketio-a")
    other = server_factory(redis_env, name="browser-socketio-b")
    tab = open_tab()
    email = unique_email("socketio-restart")
    sign_in_socketio(tab, first.http, email)
    call_id = f"sio-restart-{uuid.uuid4().hex[:6]}"
    publish(first, call_id, "initiated", email)
    publish(first, call_id, "ringing", email)
    wait_status(tab, call_id, "ringing")

    first.stop()
    tab.wait("() => callwireDemo.client.state === 'reconnecting'", timeout=5)
    # While this server is down, the call moves on through another server.
    publish(other, call_id, "in-progress")
    server_factory(redis_env, port=port, name="browser-socketio-a2")
    wait_status(tab, call_id, "in-progress", timeout=20)
    assert connected_entries(tab) == ["undefined", "true"]
    publish(other, call_id, "ended", endedReason="customer-ended-call")
    wait_status(tab, call_id, "ended")
    assert shown_statuses(tab, call_id) == ["initiated", "ringing", "in-progress", "ended"]
    tab.shot("socketio-after-restart")


@pytest.mark.redis
def test_a_socketio_client_refused_because_redis_is_down_retries_until_it_is_back(
    server_factory, tmp_path, open_tab  # noqa: F811
):
    """1013 at connect (history cannot be read) is not the client's fault: callwire-socketio.js
    retries with backoff for as long as it takes, it never stops as for a bad token (issue 12)."""
    store = RedisServer(tmp_path).start()
    try:
        live = server_factory({"REDIS_URL": store.url, "REDIS_TIMEOUT": "0.5"},
                              name="browser-socketio-1013")
        tab = open_tab()
        tab.page.goto(live.http + "/?transport=socket.io")
        tab.page.fill("#email", unique_email("socketio-1013"))
        store.stop()
        tab.page.click("#connect")
        # Refused three times or more: the old client gave up after the third (maxPolicyRetries).
        tab.wait("() => callwireDemo.client._busyRetries >= 3 || "
                 "callwireDemo.client.state === 'stopped'", timeout=20)
        assert tab.js("() => callwireDemo.client.state") != "stopped"
        store.start()
        tab.wait(f"{STATE} === 'connected'", timeout=40)
    finally:
        store.stop()

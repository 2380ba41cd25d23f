"""The demo page and callwire.js in a real headless Chromium against the real server.

Chromium is Debian's package driven by Playwright for Python; no browser is
ever downloaded. Every test leaves screenshots in ``test-artifacts/browser/``.
Set ``CALLWIRE_UPDATE_SCREENSHOT=1`` to refresh ``docs/screenshot.png``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import Browser, Page, sync_playwright

from tests.fixtures_browser.site import StaticSite
from tests.fixtures_browser.tcp_proxy import TcpProxy
from tests.support.net import free_port
from tests.support.server import ARTIFACTS, ROOT, LiveServer
from tests.support.tokens import emulator_token
from tests.support.tools import require_tool

pytestmark = pytest.mark.browser

FIXTURES = Path(__file__).parent / "fixtures_browser"
SHOTS = ARTIFACTS / "browser"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

#: docs/protocol.md §5 close codes: code -> (meaning, what a client should do, callwire.js).
DOCUMENTED_CLOSE_CODES = {
    1000: ("normal close", "stop", "stop"),
    1008: ("policy: authentication failed, init timeout, too many connections",
           "fix the cause, not retry blindly", "fresh-token"),
    1009: ("frame too large", "fix the client", "stop"),
    1011: ("internal error", "retry with backoff", "backoff"),
    1012: ("server restarting", "reconnect now, resume", "restart"),
    1013: ("try again later: service busy or Redis unreachable", "retry with backoff, resume",
           "backoff"),
    4001: ("token expired", "get a fresh token, reconnect", "fresh-token"),
    4008: ("too slow to keep up", "reconnect, resume with `lastEventId`", "backoff"),
}


# -- fixtures --------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Debian Chromium for the module."""
    executable = require_tool("chromium")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StaticSite]:
    """The web site of an app that embeds callwire.js (or the seed's class)."""
    static_site = StaticSite(tmp_path_factory.mktemp("site"))
    yield static_site
    static_site.close()


@dataclass
class Tab:
    """A browser page with the JavaScript errors it raised and a screenshot helper."""

    page: Page
    name: str
    errors: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    expect_errors: bool = False

    def js(self, expression: str, arg: Any = None) -> Any:
        return self.page.evaluate(expression, arg)

    def wait(self, predicate: str, arg: Any = None, timeout: float = 10.0) -> Any:
        """Wait until the JavaScript ``predicate`` returns something truthy; return it."""
        handle = self.page.wait_for_function(predicate, arg=arg, timeout=timeout * 1000)
        return handle.json_value()

    def shot(self, label: str, *, full_page: bool = False) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{self.name}-{label}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path


@pytest.fixture
def open_tab(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Callable[..., Tab]]:
    """Open pages in fresh browser contexts; screenshot and check each at the end."""
    tabs: list[tuple[Tab, Any]] = []

    def open_one(viewport: tuple[int, int] = (1000, 700), **context_options: Any) -> Tab:
        context = browser.new_context(
            viewport={"width": viewport[0], "height": viewport[1]}, **context_options
        )
        page = context.new_page()
        page.set_default_timeout(10_000)
        tab = Tab(page, f"{request.node.name}-{len(tabs) + 1}")
        page.on("pageerror", lambda error: tab.errors.append(str(error)))
        page.on("console", lambda message: tab.console.append(f"{message.type}: {message.text}"))
        tabs.append((tab, context))
        return tab

    yield open_one
    for tab, context in tabs:
        try:
            tab.shot("final", full_page=True)
            lines = tab.console + [f"pageerror: {error}" for error in tab.errors]
            (SHOTS / f"{tab.name}-console.txt").write_text("\n".join(lines) + "\n")
        finally:
            context.close()
    for tab, _ in tabs:
        if not tab.expect_errors:
            assert tab.errors == [], f"JavaScript errors on {tab.name}: {tab.errors}"


def unique_email(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}@example.com"


def bearer(email: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {emulator_token(email)}"}


# -- demo page helpers -------------------------------------------------------------

STATE = "() => document.querySelector('#state').dataset.state"


def sign_in(tab: Tab, origin: str, email: str) -> None:
    """Open the demo page at ``origin`` and connect as ``email`` (development mode)."""
    tab.page.goto(origin + "/")
    tab.page.fill("#email", email)
    tab.page.click("#connect")
    tab.wait(f"{STATE} === 'connected'")


def wait_status(tab: Tab, call_id: str, status: str, timeout: float = 10.0) -> None:
    tab.wait(
        "([id, status]) => [...document.querySelectorAll('#calls .call')]"
        ".some(el => el.dataset.callId === id && el.dataset.status === status)",
        [call_id, status], timeout,
    )


def shown_statuses(tab: Tab, call_id: str) -> list[str]:
    """The statuses the activity log showed for ``call_id``, in order."""
    return tab.js(
        "(id) => [...document.querySelectorAll('#activity li[data-kind=event]')]"
        ".filter(li => li.dataset.callId === id).map(li => li.dataset.status)",
        call_id,
    )


def connected_entries(tab: Tab) -> list[str]:
    """The ``recovered`` value of every connection the activity log shows, in order."""
    return tab.js(
        "() => [...document.querySelectorAll('#activity li[data-kind=connected]')]"
        ".map(li => li.dataset.recovered)"
    )


def page_errors_shown(tab: Tab) -> list[str]:
    return tab.js(
        "() => [...document.querySelectorAll('#error-list li')].map(li => li.textContent)"
    )


def publish(server: LiveServer, call_id: str, status: str, email: str | None = None,
            **data: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"callId": call_id, "status": status, "data": data}
    if email is not None:
        body["userId"] = email
    answer = server.publish(body)
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]


# -- the demo page -------------------------------------------------------------------


def test_demo_page_plays_sample_calls_in_order(server, open_tab):
    tab = open_tab()
    email = unique_email("newcomer")
    sign_in(tab, server.http, email)
    assert tab.page.inner_text("#user") == email

    tab.page.click("#sample-call")
    tab.page.click("#sample-failed")
    tab.wait(
        "() => [...document.querySelectorAll('#calls .call')].map(el => el.dataset.status)"
        ".sort().join() === 'ended,failed'",
        timeout=15,
    )
    calls = tab.js(
        "() => Object.fromEntries([...document.querySelectorAll('#calls .call')].map(el => "
        "[el.dataset.status, {id: el.dataset.callId, "
        "reason: el.querySelector('.call-reason')?.textContent}]))"
    )
    assert shown_statuses(tab, calls["ended"]["id"]) == [
        "initiated", "ringing", "in-progress", "ended",
    ]
    assert shown_statuses(tab, calls["failed"]["id"]) == ["initiated", "ringing", "failed"]
    assert calls["ended"]["reason"] == "Ended: customer-ended-call"
    assert calls["failed"]["reason"] == "Failed: twilio-failed-to-connect-call"
    last_id = tab.js("() => callwireDemo.client.lastEventId")
    assert tab.page.inner_text("#last-event-id") == last_id

    # A call in flight next to the finished ones: the picture the README shows.
    live_call = f"call-{uuid.uuid4().hex[:6]}"
    publish(server, live_call, "ringing", email, customerNumber="+15550123")
    wait_status(tab, live_call, "ringing")
    tab.page.click("#email")
    tab.page.mouse.click(5, 5)
    picture = tab.shot("good-state")
    if os.environ.get("CALLWIRE_UPDATE_SCREENSHOT"):
        shutil.copyfile(picture, ROOT / "docs" / "screenshot.png")
    assert page_errors_shown(tab) == []

    # disconnect() is final: no reconnect, and the server sees the socket go.
    tab.page.click("#disconnect")
    tab.wait(f"{STATE} === 'disconnected'")
    deadline = time.monotonic() + 5
    while True:
        clients = requests.get(
            f"{server.http}/api/v6/call/websocket/clients", headers=bearer(email), timeout=5
        ).json()["data"]
        if clients["totalConnections"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert clients["totalConnections"] == 0
    time.sleep(1.0)
    assert tab.js(STATE) == "disconnected"
    assert tab.js("() => callwireDemo.closes") == [1000]


def test_dev_endpoints_mint_tokens_and_check_input(server):
    minted = requests.post(
        f"{server.http}/dev/token", json={"email": " Dev@Example.com "}, timeout=5
    )
    assert minted.status_code == 200
    body = minted.json()
    assert body["userId"] == "dev@example.com" and body["expiresAt"].endswith("Z")
    calls = requests.get(
        f"{server.http}/api/v6/call/websocket/clients",
        headers={"Authorization": f"Bearer {body['token']}"}, timeout=5,
    )
    assert calls.status_code == 200
    for bad in ({}, {"email": 42}, {"email": "nobody"}):
        answer = requests.post(f"{server.http}/dev/token", json=bad, timeout=5)
        assert answer.status_code == 400 and answer.json()["success"] is False
    sample = f"{server.http}/dev/sample-call"
    assert requests.post(sample, json={}, timeout=5).status_code == 401
    auth = {"Authorization": f"Bearer {body['token']}"}
    refused = requests.post(sample, json={"outcome": "busy"}, headers=auth, timeout=5)
    assert refused.status_code == 400
    started = requests.post(sample, json={"stepSeconds": 0.05}, headers=auth, timeout=5)
    assert started.status_code == 202
    assert started.json()["data"]["statuses"] == ["initiated", "ringing", "in-progress", "ended"]


def test_demo_page_is_accessible(server, open_tab):
    tab = open_tab()
    tab.page.goto(server.http + "/")
    report = tab.js(
        """() => {
        const unlabeled = [...document.querySelectorAll('input, select, textarea')]
          .filter(el => !el.labels.length && !el.getAttribute('aria-label')).map(el => el.id);
        const unnamedButtons = [...document.querySelectorAll('button')]
          .filter(el => !el.textContent.trim() && !el.getAttribute('aria-label')).map(el => el.id);
        const activity = document.querySelector('#activity');
        return {
          lang: document.documentElement.lang,
          unlabeled, unnamedButtons,
          log: [activity.getAttribute('role'), activity.getAttribute('aria-live')],
          state: document.querySelector('#state').getAttribute('role'),
          errors: document.querySelector('#errors').getAttribute('role'),
          viewport: document.querySelector('meta[name=viewport]').content,
        };
    }"""
    )
    assert report == {
        "lang": "en", "unlabeled": [], "unnamedButtons": [], "log": ["log", "polite"],
        "state": "status", "errors": "alert", "viewport": "width=device-width, initial-scale=1",
    }
    # WCAG AA: 4.5:1 for the text of every badge and state, and for muted text.
    ratios = tab.js(
        """() => {
        const parse = (c) => c.match(/[\\d.]+/g).slice(0, 3).map(Number);
        const lum = (rgb) => {
          const [r, g, b] = rgb.map(v => {
            v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
          });
          return 0.2126 * r + 0.7152 * g + 0.0722 * b;
        };
        const ratio = (el) => {
          const s = getComputedStyle(el);
          let bg = s.backgroundColor, node = el;
          while (/rgba\\(.*, 0\\)/.test(bg) || bg === 'transparent') {
            node = node.parentElement; bg = getComputedStyle(node).backgroundColor;
          }
          const [a, b] = [lum(parse(s.color)), lum(parse(bg))].sort((x, y) => y - x);
          return (a + 0.05) / (b + 0.05);
        };
        const classes = ['badge badge-initiated', 'badge badge-ringing', 'badge badge-in-progress',
          'badge badge-ended', 'badge badge-failed', 'badge badge-unknown', 'state state-idle',
          'state state-connecting', 'state state-connected', 'state state-reconnecting',
          'state state-stopped', 'hint', 'call-meta'];
        const host = document.querySelector('#calls');
        return Object.fromEntries(classes.map(cls => {
          const el = document.createElement('span'); el.className = cls; el.textContent = 'x';
          host.appendChild(el); const r = ratio(el); el.remove(); return [cls, r];
        }));
    }"""
    )
    low = {name: round(value, 2) for name, value in ratios.items() if value < 4.5}
    assert low == {}, f"contrast below 4.5:1: {low}"
    # The page documents the close codes exactly as docs/protocol.md §5, and the client agrees.
    rows = tab.js(
        "() => [...document.querySelectorAll('table.codes tbody tr')]"
        ".map(tr => [...tr.cells].map(td => td.textContent))"
    )
    expected = [[str(code), meaning, advice.replace("`", "")]
                for code, (meaning, advice, _) in DOCUMENTED_CLOSE_CODES.items()]
    assert rows == expected
    client_table = tab.js(
        "() => Object.fromEntries(Object.entries(Callwire.CLOSE_CODES)"
        ".map(([code, c]) => [code, [c.meaning, c.advice, c.action]]))"
    )
    assert client_table == {
        str(code): [meaning, advice.replace("`", ""), action]
        for code, (meaning, advice, action) in DOCUMENTED_CLOSE_CODES.items()
    }


def test_demo_page_fits_a_phone(server, open_tab):
    tab = open_tab(viewport=(390, 844), is_mobile=True, has_touch=True, device_scale_factor=2)
    email = unique_email("phone")
    sign_in(tab, server.http, email)
    call_id = f"phone-{uuid.uuid4().hex[:6]}"
    publish(server, call_id, "ended", email, endedReason="customer-busy")
    wait_status(tab, call_id, "ended")
    layout = tab.js(
        """() => ({
        overflow: document.documentElement.scrollWidth - window.innerWidth,
        smallTargets: [...document.querySelectorAll('button, input')]
          .filter(el => el.getClientRects().length && el.getBoundingClientRect().height < 44)
          .map(el => el.id),
        badgeInside: document.querySelector('#calls .badge').getBoundingClientRect().right
          <= window.innerWidth,
        fontSize: getComputedStyle(document.body).fontSize,
    })"""
    )
    assert layout == {"overflow": 0, "smallTargets": [], "badgeInside": True, "fontSize": "16px"}
    tab.shot("phone", full_page=True)


def test_page_shows_javascript_errors_instead_of_swallowing_them(server, open_tab):
    tab = open_tab()
    tab.expect_errors = True
    email = unique_email("errors")
    sign_in(tab, server.http, email)
    assert tab.js("() => document.querySelector('#errors').hidden") is True
    tab.js("() => { setTimeout(() => { throw new Error('thrown by the test'); }, 0); }")
    tab.js("() => { Promise.reject(new Error('rejected by the test')); }")
    # A failing show* hook must not be swallowed the way the seed's try/catch did.
    tab.js(
        "() => { callwireDemo.client.showCallRinging = () => { throw new Error('hook broke'); }; }"
    )
    call_id = f"err-{uuid.uuid4().hex[:6]}"
    publish(server, call_id, "ringing", email)
    wait_status(tab, call_id, "ringing")
    shown = tab.wait(
        "() => { const items = [...document.querySelectorAll('#error-list li')]"
        ".map(li => li.textContent);"
        " return items.length >= 3 && !document.querySelector('#errors').hidden && items; }"
    )
    text = "\n".join(shown)
    for needle in ("thrown by the test", "rejected by the test", "hook broke"):
        assert needle in text
    assert len(tab.errors) >= 3
    tab.shot("errors")


def test_production_page_uses_the_sign_in_hook_and_stops_on_policy_close(server_factory, open_tab):
    production = server_factory(
        {"FIREBASE_AUTH_EMULATOR_HOST": "", "FIREBASE_PROJECT_ID": "callwire-browser-test"},
        name="browser-production",
    )
    for path in ("/dev/token", "/dev/sample-call"):
        answer = requests.post(f"{production.http}{path}", json={"email": "a@b.co"}, timeout=5)
        assert answer.status_code == 404 and answer.json()["success"] is False
    tab = open_tab()
    # The embedding page's sign-in hook; this token is unsigned, so production refuses it.
    tab.page.add_init_script(
        "window.tokenCalls = [];"
        f"window.callwireGetToken = async (force) => {{ tokenCalls.push(force);"
        f" return {emulator_token('hook@example.com')!r}; }};"
    )
    tab.page.goto(production.http + "/")
    assert tab.page.locator("#email").count() == 0
    tab.wait(f"{STATE} === 'stopped'", timeout=15)
    # 1008 is retried only with a fresh token, and only twice: no blind retry loop.
    assert tab.js("() => callwireDemo.closes") == [1008, 1008, 1008]
    assert tab.js("() => tokenCalls") == [False, True, True]
    assert any("Authentication failed" in e for e in page_errors_shown(tab))
    time.sleep(1.0)
    assert tab.js("() => callwireDemo.closes") == [1008, 1008, 1008]


# -- restarts and broken networks --------------------------------------------------

#: gunicorn waits out idle HTTP keep-alive connections (2 s in gunicorn.conf.py)
#: before a stopping worker exits, and the browser holds one from loading the
#: page; a shorter keep-alive only makes the restarts below quicker.
QUICK_STOP = {"GUNICORN_CMD_ARGS": "--keep-alive 1"}


@pytest.mark.redis
def test_restart_with_redis_resumes_without_missing_a_status(
    server_factory, redis_server, open_tab
):
    port = free_port()
    redis_env = {"REDIS_URL": redis_server.url, **QUICK_STOP}
    first = server_factory(redis_env, port=port, name="browser-redis-a")
    other = server_factory(redis_env, name="browser-redis-b")
    tab = open_tab()
    email = unique_email("restart")
    sign_in(tab, first.http, email)
    call_id = f"restart-{uuid.uuid4().hex[:6]}"
    publish(first, call_id, "initiated", email)
    publish(first, call_id, "ringing", email)
    wait_status(tab, call_id, "ringing")

    first.stop()
    tab.wait("() => callwireDemo.closes.includes(1012)", timeout=5)
    # While this server is down, the call moves on through another server.
    publish(other, call_id, "in-progress")
    server_factory(redis_env, port=port, name="browser-redis-a2")
    wait_status(tab, call_id, "in-progress", timeout=20)
    assert connected_entries(tab) == ["undefined", "true"]
    publish(other, call_id, "ended", endedReason="customer-ended-call")
    wait_status(tab, call_id, "ended")
    assert shown_statuses(tab, call_id) == ["initiated", "ringing", "in-progress", "ended"]
    tab.shot("after-restart")


def test_restart_without_redis_rereads_open_calls(server_factory, open_tab):
    port = free_port()
    first = server_factory(QUICK_STOP, port=port, name="browser-memory-a")
    tab = open_tab()
    email = unique_email("memory")
    sign_in(tab, first.http, email)
    call_id = f"mem-{uuid.uuid4().hex[:6]}"
    publish(first, call_id, "initiated", email)
    wait_status(tab, call_id, "initiated")

    first.stop()
    tab.wait("() => callwireDemo.closes.includes(1012)", timeout=5)
    second = server_factory(QUICK_STOP, port=port, name="browser-memory-b")
    # The new process has no history: recovered false, and the page re-reads the call.
    wait_status(tab, call_id, "unknown", timeout=20)
    assert connected_entries(tab) == ["undefined", "false"]
    publish(second, call_id, "ringing", email)
    wait_status(tab, call_id, "ringing")
    assert page_errors_shown(tab) == []


@pytest.fixture
def proxy(server) -> Iterator[TcpProxy]:
    """A breakable network path to the default server."""
    link = TcpProxy(server.port)
    yield link
    link.close()


def test_network_outage_is_healed_with_resume(server, proxy, open_tab):
    tab = open_tab()
    email = unique_email("outage")
    sign_in(tab, f"http://127.0.0.1:{proxy.port}", email)
    call_id = f"drop-{uuid.uuid4().hex[:6]}"
    publish(server, call_id, "initiated", email)
    wait_status(tab, call_id, "initiated")

    assert proxy.down() >= 1
    tab.wait("() => callwireDemo.closes.length >= 2", timeout=5)  # the drop, then a refused retry
    publish(server, call_id, "ringing")
    proxy.up()
    wait_status(tab, call_id, "ringing", timeout=15)
    assert connected_entries(tab) == ["undefined", "true"]
    assert set(tab.js("() => callwireDemo.closes")) == {1006}
    publish(server, call_id, "in-progress")
    wait_status(tab, call_id, "in-progress")
    assert shown_statuses(tab, call_id) == ["initiated", "ringing", "in-progress"]


# -- callwire.js on its own page -----------------------------------------------------


def open_harness(
    tab: Tab, site: StaticSite, origin: str, email: str, *, ttl: float = 3600, **options: Any
) -> None:
    """Open client_harness.html from ``site``, talking to Callwire at ``origin``."""
    html = (FIXTURES / "client_harness.html").read_text()
    html = html.replace("CALLWIRE_ORIGIN", origin)
    html = html.replace("CALLWIRE_WS_URL", origin.replace("http://", "ws://") + "/")
    url = site.put(f"harness-{uuid.uuid4().hex[:8]}.html", html)
    tab.page.expose_function("mintToken", lambda: emulator_token(email, ttl=ttl))
    tab.page.add_init_script(f"window.harnessOptions = {json.dumps(options)};")
    tab.page.goto(url)


def test_silent_network_drop_is_detected_by_the_idle_ping(server, proxy, site, open_tab):
    tab = open_tab()
    email = unique_email("silent")
    open_harness(
        tab, site, f"http://127.0.0.1:{proxy.port}", email, idlePingMs=800, pongTimeoutMs=800
    )
    tab.wait("() => record.connected.length === 1")
    call_id = f"quiet-{uuid.uuid4().hex[:6]}"
    publish(server, call_id, "initiated", email)
    tab.wait("() => record.events.length === 1")

    proxy.blackhole()
    # The server still believes the socket is fine and hands it the event: it is lost on the wire.
    assert publish(server, call_id, "ringing")["delivered"] == 1
    tab.wait("() => record.events.length === 2", timeout=10)
    record = tab.js("() => record")
    assert [e["status"] for e in record["events"]] == ["initiated", "ringing"]
    assert record["connected"][-1]["recovered"] is True
    assert [c["code"] for c in record["closes"]] == [1006]
    assert any("No answer to ping" in e for e in record["errors"])


def test_token_is_refreshed_in_place_and_replaced_after_expiry(server, site, open_tab):
    tab = open_tab()
    email = unique_email("refresh")
    open_harness(tab, site, server.http, email, ttl=3)
    tab.wait("() => record.connected.length === 1")
    tab.wait("() => record.authenticated.length >= 2", timeout=8)
    record = tab.js("() => record")
    assert record["closes"] == [] and len(record["connected"]) == 1
    assert record["authenticated"][-1]["expiresAt"] > record["connected"][0]["expiresAt"]

    # Refresh now fails: the server closes with 4001, and the client comes back
    # only with a freshly fetched token.
    tab.js("() => { window.refreshBroken = true; }")
    tab.wait("() => record.closes.some(c => c.code === 4001)", timeout=8)
    tab.js("() => { window.refreshBroken = false; }")
    tab.wait("() => record.connected.length === 2", timeout=8)
    record = tab.js("() => record")
    assert [c["code"] for c in record["closes"]] == [4001]
    last_call = record["tokenCalls"][-1]
    assert (last_call["force"], last_call["ok"]) == (True, True)
    assert record["connected"][1]["expiresAt"] > record["authenticated"][-1]["expiresAt"]


def test_backoff_is_capped_full_jitter(server, open_tab):
    tab = open_tab()
    tab.page.goto(server.http + "/")
    ceilings = tab.js(
        "() => [0, 1, 2, 3, 4, 5, 6, 7, 10]"
        ".map(a => Callwire.backoffDelay(a, 500, 30000, () => 0.999999))"
    )
    assert ceilings == [499, 999, 1999, 3999, 7999, 15999, 29999, 29999, 29999]
    assert tab.js("() => Callwire.backoffDelay(5, 500, 30000, () => 0)") == 0
    actions = tab.js(
        "() => Object.fromEntries([1000, 1006, 1008, 1009, 1011, 1012, 1013, 4001, 4008]"
        ".map(c => [c, Callwire.closeAction(c)]))"
    )
    assert actions == {
        "1000": "stop", "1006": "backoff", "1008": "fresh-token", "1009": "stop",
        "1011": "backoff", "1012": "restart", "1013": "backoff", "4001": "fresh-token",
        "4008": "backoff",
    }


# -- the seed's own client -------------------------------------------------------------

SEED_CLASS_BLOCK = re.compile(r'<script id="seed-class">.*?</script>', re.S)


def test_seed_client_and_its_one_line_switch_work_in_legacy_mode(server_factory, site, open_tab):
    legacy = server_factory({"WS_REQUIRE_TOKEN": "false"}, name="browser-legacy")
    seed_html = (FIXTURES / "seed_client.html").read_text()
    seed_doc = ROOT.parent / "shared" / "seed" / "websocket-api.md"
    if seed_doc.exists():  # the fixture must hold the seed's class verbatim
        text = seed_doc.read_text()
        pasted = text[text.index("class WebSocketManager"):text.index("// Usage")].rstrip()
        assert pasted in seed_html
    # The one line a seed user changes: the pasted class becomes Callwire's script.
    switched_html = SEED_CLASS_BLOCK.sub(
        f'<script src="{legacy.http}/static/callwire.js"></script>', seed_html, count=1
    )
    assert switched_html.count("\n") < seed_html.count("\n")

    pages = {}
    for label, html in (("seed", seed_html), ("callwire", switched_html)):
        tab = open_tab()
        email = unique_email(label)
        html = html.replace("ws://localhost:3000", legacy.ws).replace("user@example.com", email)
        tab.page.goto(site.put(f"{label}-{uuid.uuid4().hex[:8]}.html", html))
        pages[label] = (tab, email)
    for _, email in pages.values():
        wait_connections(legacy, email)

    calls = {}
    for label, (_, email) in pages.items():
        call_id = f"{label}-{uuid.uuid4().hex[:6]}"
        calls[label] = call_id
        for status in ("initiated", "ringing", "in-progress"):
            publish(legacy, call_id, status, email)
        publish(legacy, call_id, "ended", email, endedReason="customer-busy")
        test_message = requests.post(
            f"{legacy.http}/api/v6/call/websocket/test",
            json={"targetUserId": email, "message": "Hello from WebSocket!"},
            headers=bearer("sender@example.com"), timeout=5,
        )
        assert test_message.json()["delivered"] == 1
    for label, (tab, _) in pages.items():
        call_id = calls[label]
        shown = tab.wait("() => window.shown.length >= 4 && window.shown")
        assert shown == [["initiated", call_id], ["ringing", call_id], ["in-progress", call_id],
                         ["ended", call_id, "customer-busy"]]
    seed_tab = pages["seed"][0]
    seed_log = "log: Successfully connected: Successfully connected to WebSocket server"
    assert seed_log in seed_tab.console
    switched_tab = pages["callwire"][0]
    assert switched_tab.js("() => wsManager.state") == "connected"
    assert switched_tab.js("() => wsManager.lastEventId") is not None


def wait_connections(server: LiveServer, email: str, timeout: float = 10.0) -> None:
    """Wait until ``email`` holds an initialised connection on ``server``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = requests.get(
            f"{server.http}/api/v6/call/websocket/clients", headers=bearer(email), timeout=5
        )
        if answer.json()["data"]["totalConnections"] >= 1:
            return
        time.sleep(0.05)
    raise TimeoutError(f"{email} never connected")

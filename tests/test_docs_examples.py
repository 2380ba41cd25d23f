"""The documents' examples run against a live server, as a reader would paste them.

- README's "a minute from nothing" walkthrough: its console snippet in
  Chromium and its curl in a shell, and the event it promises arrives.
- The demo page's "publish one yourself" snippet works when pasted.
- docs/protocol.md: its curl runs; every JSON example it shows is a shape
  the server really sends (checked against messages captured live), a
  client message it accepts, or a request body it accepts as given.
- Development mode says how to get a token when an init has none.
"""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from playwright.sync_api import Browser, sync_playwright

from tests.support.server import ROOT, LiveServer
from tests.support.tokens import emulator_token
from tests.support.tools import require_tool
from tests.support.wsclient import Client, ConnectionClosedError

DEV_KEYS = {
    "EVENTS_API_KEY": "dev-events-key",
    "VAPI_WEBHOOK_SECRET": "dev-vapi-secret",
    "TWILIO_AUTH_TOKEN": "dev-twilio-token",
}
DOC_ORIGIN = "http://127.0.0.1:3000"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update"]


def fenced(text: str, language: str) -> list[str]:
    """The bodies of the fenced blocks of ``language``, indentation removed."""
    pattern = rf"^([ \t]*)```{language}\n(.*?)^\1```"
    return [textwrap.dedent(body) for _, body in re.findall(pattern, text, re.M | re.S)]


def run_shell(command: str, live: LiveServer) -> str:
    """Run a documented shell command against ``live`` (the docs say 127.0.0.1:3000)."""
    command = command.replace(DOC_ORIGIN, live.http)
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, f"{command}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def dev_live(tmp_path_factory) -> Iterator[LiveServer]:
    """A server with exactly make run's settings."""
    from tests.support.server import start_server

    live = start_server(DEV_KEYS, name="docs-examples")
    yield live
    live.stop()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    executable = require_tool("chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


# -- README --------------------------------------------------------------------------


@pytest.mark.browser
def test_readme_walkthrough_prints_the_event_it_promises(dev_live, chromium) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## A minute from nothing", 1)[1].split("\n## ", 1)[0]
    (snippet,) = fenced(section, "js")
    (curl,) = [block for block in fenced(section, "console") if "curl" in block]
    promised = re.search(r"The console prints\s+`(\{.*?\})`", section, re.S)[1]
    context = chromium.new_context()
    try:
        page = context.new_page()
        page.goto(f"{dev_live.http}/")
        page.evaluate("() => { window.logged = []; console.log = (x) => logged.push(x); }")
        ws_url = dev_live.ws
        page.evaluate(
            "async () => {\n" + snippet.replace("ws://127.0.0.1:3000/", ws_url)
            + "\nwindow.docWs = ws; }"
        )
        page.wait_for_function("() => logged.some(m => m.type === 'connected')", timeout=10_000)
        answer = json.loads(run_shell(curl, dev_live))
        assert answer["success"] is True and answer["data"]["delivered"] == 1, answer
        page.wait_for_function(
            "() => logged.some(m => m.event === 'call.status.changed')", timeout=10_000
        )
        event = page.evaluate("() => logged.find(m => m.event === 'call.status.changed')")
    finally:
        context.close()
    assert list(event) == re.findall(r'"(\w+)":', promised), (event, promised)
    assert (event["callId"], event["status"]) == ("call-1", "ringing")
    assert event["data"] == {"customerNumber": "+15550100"}


@pytest.mark.browser
def test_demo_page_snippet_works_when_pasted(dev_live, chromium) -> None:
    email = f"snippet-{uuid.uuid4().hex[:8]}@example.com"
    context = chromium.new_context()
    try:
        page = context.new_page()
        page.goto(f"{dev_live.http}/")
        page.fill("#email", email)
        page.click("#connect")
        page.wait_for_function(
            "() => document.querySelector('#state').dataset.state === 'connected'",
            timeout=10_000,
        )
        snippet = page.inner_text("#curl-snippet")
        assert "$EVENTS_API_KEY" not in snippet and email in snippet
        answer = json.loads(run_shell(snippet, dev_live))
        assert answer["success"] is True and answer["data"]["delivered"] == 1, answer
        call_id = page.inner_text("#curl-snippet .call-id")
        page.wait_for_function(
            "(id) => [...document.querySelectorAll('#calls .call')]"
            ".some(el => el.dataset.callId === id && el.dataset.status === 'ringing')",
            arg=call_id, timeout=10_000,
        )
    finally:
        context.close()


def test_init_without_a_token_in_development_says_where_to_get_one(dev_live) -> None:
    client = Client(dev_live.ws)
    try:
        answer = client.init(user_id="someone@example.com")
        assert answer["type"] == "error"
        assert "POST /dev/token" in answer["message"]
        assert client.wait_closed()[0] == 1008
    finally:
        client.close()


def test_development_start_up_log_names_what_make_run_set(dev_live) -> None:
    log = dev_live.log()
    line = next(line for line in log.splitlines() if "development settings" in line)
    for name, value in DEV_KEYS.items():
        assert f"{name}={value} (make run's default)" in line
    assert "FIREBASE_AUTH_EMULATOR_HOST=127.0.0.1:9099" in line
    assert "no emulator needs to run" in line


# -- docs/protocol.md ----------------------------------------------------------------

#: Keys Callwire adds to a seed message, present or not depending on the request.
OPTIONAL = {"expiresAt", "recovered", "id", "timestamp", "delivered", "data", "dropped"}
CLIENT_PAYLOAD_KEYS = {"init": {"userId", "token", "lastEventId"}, "auth": {"token"}, "ping": set()}


def kind(message: Any) -> str | None:
    """What a JSON example is: a server message type, an event, an answer, or a request."""
    if isinstance(message, list):
        return "batch-request"
    if not isinstance(message, dict):
        return None
    if "type" in message and "payload" in message or message.get("type") == "ping":
        return f"client-{message['type']}"
    if "type" in message:
        return f"server-{message['type']}"
    if message.get("event") == "call.status.changed":
        return "event"
    if "event" in message and "callId" in message:
        return "test-message"
    if "success" in message:
        data = message.get("data")
        if isinstance(data, list):
            return "answer-batch"
        if isinstance(data, dict):
            return "answer-" + ",".join(sorted(data))
        return "answer-" + ("message" if "message" in message else "bare")
    if "callId" in message and "status" in message:
        return "publish-request"
    if "targetUserId" in message:
        return "test-request"
    if "token" in message and "expiresAt" in message:
        return "dev-token-answer"
    return None


def capture(live: LiveServer) -> dict[str, list[dict[str, Any]]]:
    """Messages and answers the server really sends, by kind."""
    seen: dict[str, list[dict[str, Any]]] = {}

    def keep(message: Any) -> Any:
        seen.setdefault(kind(message) or "?", []).append(message)
        return message

    email = f"capture-{uuid.uuid4().hex[:8]}@example.com"
    token = emulator_token(email)
    auth = {"Authorization": f"Bearer {token}"}
    client = Client(live.ws)
    try:
        keep(client.init(token=token))
        first = keep(live.publish({"callId": f"cap-{email}", "userId": email,
                                   "status": "ringing", "data": {"customerNumber": "+1555"}})
                     .json())
        keep(client.recv_json())
        keep(live.publish({"callId": f"cap-{email}", "status": "ringing"}).json())
        keep(live.publish([{"callId": f"cap2-{email}", "userId": email, "status": "initiated"},
                           {"callId": f"cap-{email}", "userId": "x@example.com",
                            "status": "ended"}]).json())
        keep(client.recv_json())
        keep(requests.post(f"{live.http}/api/v6/call/websocket/test", headers=auth, timeout=5,
                           json={"targetUserId": email, "message": "hi"}).json())
        keep(client.recv_json())
        keep(requests.get(f"{live.http}/api/v6/call/websocket/clients", headers=auth,
                          timeout=5).json())
        keep(requests.get(f"{live.http}/api/v6/call/cap-{email}/status", headers=auth,
                          timeout=5).json())
        client.send_json({"type": "ping"})
        keep(client.recv_json())
        client.send_json({"type": "auth", "payload": {"token": emulator_token(email)}})
        keep(client.recv_json())
        client.send_raw("not json")
        keep(client.recv_json())
        resumed = Client(live.ws)
        keep(resumed.init(token=token, last_event_id=first["data"]["id"]))
        resumed.close()
        keep(requests.get(f"{live.http}/healthz", timeout=5).json())
        keep(requests.get(f"{live.http}/readyz", timeout=5).json())
        keep(requests.post(f"{live.http}/dev/token", json={"email": email}, timeout=5).json())
    finally:
        client.close()
    return seen


def test_protocol_examples_are_what_the_server_sends_and_accepts(dev_live) -> None:
    text = (ROOT / "docs" / "protocol.md").read_text()
    for command in fenced(text, "console"):
        answer = json.loads(run_shell(command, dev_live))
        assert set(answer) == {"token", "expiresAt", "userId"}
    seen = capture(dev_live)
    examples = fenced(text, "json")
    assert len(examples) >= 20
    problems = []
    for example_text in examples:
        example = json.loads(example_text)
        what = kind(example)
        if what is None:
            problems.append(f"unrecognised example: {example_text[:80]}")
        elif what.startswith("client-"):
            name = what.removeprefix("client-")
            extra = set(example.get("payload", {})) - CLIENT_PAYLOAD_KEYS.get(name, set())
            if name not in CLIENT_PAYLOAD_KEYS or extra:
                problems.append(f"client message the server does not take: {example}")
        elif what == "publish-request":
            answer = dev_live.publish(example)
            if answer.status_code != 200:
                problems.append(f"publish example refused: {answer.text}")
        elif what == "test-request":
            token = emulator_token("sender@example.com")
            answer = requests.post(f"{dev_live.http}/api/v6/call/websocket/test", json=example,
                                   headers={"Authorization": f"Bearer {token}"}, timeout=5)
            if answer.status_code != 200:
                problems.append(f"test message example refused: {answer.text}")
        else:
            candidates = seen.get(what, [])
            if what.startswith("answer-") and not candidates:
                # An answer shown with fewer data keys (the seed's) matches a fuller one.
                candidates = [m for k, ms in seen.items() if k.startswith("answer-") for m in ms
                              if set(example) - {"data"} <= set(m)]
            matched = any(
                set(example) <= set(real) and set(real) - set(example) <= OPTIONAL
                for real in candidates
            )
            if not matched:
                problems.append(f"{what}: {sorted(example)} is not a shape the server sends "
                                f"(it sends {[sorted(m) for m in candidates][:3]})")
    assert not problems, "\n".join(problems)


def test_protocol_close_codes_match_the_code() -> None:
    from webapp import connection

    text = (ROOT / "docs" / "protocol.md").read_text()
    section = text.split("## 5. Close codes", 1)[1].split("\n## ", 1)[0]
    documented = {int(code) for code in re.findall(r"^\| (\d{4}) \|", section, re.M)}
    in_code = {value for name, value in vars(connection).items() if name.startswith("CLOSE_")
               and isinstance(value, int)}
    assert in_code <= documented, f"close codes used but not documented: {in_code - documented}"


def test_closed_error_for_a_bad_token_is_documented(dev_live) -> None:
    text = (ROOT / "docs" / "protocol.md").read_text()
    client = Client(dev_live.ws)
    try:
        client.send_json({"type": "init", "payload": {"token": "garbage"}})
        try:
            message = client.recv_json()["message"]
        except ConnectionClosedError:
            pytest.fail("no error before the close")
        assert message.split(": ", 1)[1] in text, message
    finally:
        client.close()

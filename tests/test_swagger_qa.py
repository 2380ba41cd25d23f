"""QA through Swagger UI, as the customer's QA team works (README, docs/protocol.md §10).

In development mode ``/docs`` lists the development endpoints under their own
tag, so a tester mints a token, presses Authorize (Bearer and API key) and
tries everything without leaving the page. The browser test does exactly
that in Debian's Chromium and watches the events arrive on a WebSocket the
test itself opened. The other tests send every documented example, as given,
to a live server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
import websocket
from playwright.sync_api import Page, sync_playwright

from blueprints.webhooks.twilio_signature import expected_signature
from tests.support.server import ARTIFACTS, LiveServer
from tests.support.tools import require_tool
from tests.support.wsclient import Client
from webapp import create_app

#: The keys make run uses: the examples in /docs are written for them.
DEV_KEYS = {
    "EVENTS_API_KEY": "dev-events-key",
    "VAPI_WEBHOOK_SECRET": "dev-vapi-secret",
    "TWILIO_AUTH_TOKEN": "dev-twilio-token",
}
EXAMPLE_USER = "you@example.com"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update"]


@pytest.fixture
def dev_server(server_factory) -> LiveServer:
    """A fresh server with make run's settings: the examples' call ids are unused."""
    return server_factory(DEV_KEYS, name="swagger-qa")


def spec(live: LiveServer) -> dict[str, Any]:
    answer = requests.get(f"{live.http}/openapi.json", timeout=5)
    assert answer.status_code == 200
    return answer.json()


def test_development_endpoints_are_documented_only_in_development() -> None:
    development = create_app({"FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9099", **DEV_KEYS})
    document = development.test_client().get("/openapi.json").json
    assert {"/dev/token", "/dev/sample-call"} <= set(document["paths"])
    tags = [tag["name"] for tag in document["tags"]]
    assert tags[0] == "development", "the QA entry point comes first"
    assert document["paths"]["/dev/token"]["post"]["tags"] == ["development"]
    production = create_app(
        {"FIREBASE_AUTH_EMULATOR_HOST": "", "FIREBASE_PROJECT_ID": "callwire-qa-test"}
    ).test_client()
    assert not [path for path in production.get("/openapi.json").json["paths"]
                if path.startswith("/dev")]
    answer = production.post("/dev/token", json={"email": EXAMPLE_USER})
    assert answer.status_code == 404 and "development mode" in answer.json["message"]


def request_examples(document: dict[str, Any]) -> Iterator[tuple[str, str, str, Any]]:
    """(method, path, media type, example) for every documented request body example."""
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if not isinstance(operation, dict) or "requestBody" not in operation:
                continue
            for media, content in operation["requestBody"]["content"].items():
                examples = [content["example"]] if "example" in content else []
                examples += [e["value"] for e in content.get("examples", {}).values()]
                assert examples, f"{method.upper()} {path} has no example body"
                for example in examples:
                    yield method, path, media, example


def test_every_documented_example_works_as_given(dev_server) -> None:
    document = spec(dev_server)
    token = requests.post(f"{dev_server.http}/dev/token", json={"email": EXAMPLE_USER},
                          timeout=5).json()["token"]
    listener = Client(dev_server.ws)
    try:
        assert listener.init(token=token)["type"] == "connected"
        sent = 0
        for method, path, media, example in request_examples(document):
            headers = {"Authorization": f"Bearer {token}", "X-API-Key": DEV_KEYS["EVENTS_API_KEY"],
                       "X-Vapi-Secret": DEV_KEYS["VAPI_WEBHOOK_SECRET"]}
            url = f"{dev_server.http}{path}"
            if media == "application/x-www-form-urlencoded":
                url += "?" + urlencode({"userId": EXAMPLE_USER})
                headers["X-Twilio-Signature"] = expected_signature(
                    DEV_KEYS["TWILIO_AUTH_TOKEN"], url, sorted(example.items())
                )
                answer = requests.request(method, url, data=example, headers=headers, timeout=5)
            else:
                answer = requests.request(method, url, json=example, headers=headers, timeout=5)
            assert answer.status_code in (200, 202), f"{method} {path}: {answer.text}"
            body = answer.json()
            assert body.get("success", True) is True, f"{method} {path}: {body}"
            if isinstance(body.get("data"), dict) and "dropped" in body["data"]:
                pytest.fail(f"{method} {path}: the example was dropped: {body}")
            sent += 1
        assert sent >= 7
        # Each example reached the socket of the user they name.
        seen = set()
        while True:
            try:
                message = listener.recv_json(timeout=1.5)
            except websocket.WebSocketTimeoutException:
                break
            seen.add((message.get("callId"), message.get("status")))
        for expected in [("call-1", "ringing"), ("call-2", "ringing"), ("test_call", "test"),
                         ("vapi-call-1", "in-progress")]:
            assert expected in seen, f"{expected} never arrived; saw {sorted(seen)}"
        status = requests.get(f"{dev_server.http}/api/v6/call/call-1/status",
                              headers={"Authorization": f"Bearer {token}"}, timeout=5)
        assert status.status_code == 200 and status.json()["data"]["status"] == "ringing"
    finally:
        listener.close()


# -- the same, by hand, in Chromium -------------------------------------------------


def execute(page: Page, operation_id: str) -> tuple[int, Any]:
    """Open an operation, press Try it out and Execute with its example; return the answer."""
    block = page.locator(f"#{operation_id}")
    if not block.locator(".opblock-body").count():
        block.locator(".opblock-summary").click()
    block.locator("button.try-out__btn").click()
    block.locator("button.execute").click()
    status = block.locator(".live-responses-table tbody .response-col_status").first
    status.wait_for(timeout=10_000)
    body = block.locator(".live-responses-table .response-col_description pre").first.inner_text()
    return int(status.inner_text().strip()), json.loads(body)


@pytest.mark.browser
def test_a_tester_publishes_from_swagger_ui_and_the_socket_receives_it(dev_server) -> None:
    executable = require_tool("chromium")
    shots = ARTIFACTS / "browser"
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.set_default_timeout(10_000)
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            # Swagger UI's bundle is 1.5 MB of JavaScript: allow a loaded machine.
            page.goto(f"{dev_server.http}/docs", timeout=30_000)
            page.locator(".opblock").first.wait_for(timeout=30_000)

            status, minted = execute(page, "operations-development-post_dev_token")
            assert status == 200 and minted["userId"] == EXAMPLE_USER
            socket = Client(dev_server.ws)
            try:
                assert socket.init(token=minted["token"])["type"] == "connected"

                page.locator("button.authorize").first.click()
                for scheme, value in (("bearerAuth", minted["token"]),
                                      ("apiKeyAuth", DEV_KEYS["EVENTS_API_KEY"])):
                    box = page.locator(".auth-container", has_text=scheme)
                    box.locator("input").fill(value)
                    box.locator("button.authorize").click()
                page.locator(".dialog-ux button.btn-done").first.click()

                status, published = execute(page, "operations-call_events-post_api_v6_call_events")
                assert status == 200 and published["data"]["delivered"] == 1, published
                event = socket.recv_json(timeout=5)
                assert (event["callId"], event["status"]) == ("call-1", "ringing")
                assert event["id"] == published["data"]["id"]

                status, sent = execute(page, "operations-websocket-post_api_v6_call_websocket_test")
                assert status == 200 and sent["delivered"] == 1
                assert socket.recv_json(timeout=5)["event"] == "test.event"

                status, call = execute(
                    page, "operations-call_events-get_api_v6_call__call_id__status"
                )
                assert status == 200 and call["data"]["event"] == event
                page.screenshot(path=str(shots / "swagger-qa.png"))
            finally:
                socket.close()
            assert errors == []
        finally:
            browser.close()

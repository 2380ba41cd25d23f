"""Logs and metrics of a live server, as an operator meets them (docs/operations.md).

- ``LOG_FORMAT=json``: every line of the run parses as one JSON object with
  time, level, logger and message; a request's ``X-Request-ID`` reaches the
  lines written for it, with the connection id, user and transport.
- No secret and no token appears in the log, in either format.
- ``/metrics``: every metric docs/operations.md documents is served, and each
  moves when what it measures happens.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import time
import uuid
from collections.abc import Iterator

import pytest
import requests
import socketio

from tests.support.redis_server import RedisServer
from tests.support.server import ROOT, LiveServer, start_server
from tests.support.tokens import emulator_token
from tests.support.wsclient import BROWSER_HEADERS, Client, ConnectionClosedError
from webapp import logs

JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.")


def secrets(tag: str) -> dict[str, str]:
    """Distinctive secrets for one server, so a leak cannot be a coincidence."""
    return {
        "EVENTS_API_KEY": f"events-{tag}-{uuid.uuid4().hex}",
        "VAPI_WEBHOOK_SECRET": f"vapi-{tag}-{uuid.uuid4().hex}",
        "TWILIO_AUTH_TOKEN": f"twilio-{tag}-{uuid.uuid4().hex}",
    }


def exercise(live: LiveServer, keys: dict[str, str], rid: str) -> list[str]:
    """Do what a day of traffic does, with tokens and secrets flying; return the tokens used."""
    email = f"ops-{uuid.uuid4().hex[:8]}@example.com"
    token = emulator_token(email)
    client = Client(live.ws, headers=[*BROWSER_HEADERS, f"X-Request-ID: {rid}"])
    try:
        assert client.init(token=token)["type"] == "connected"
        published = requests.post(
            f"{live.http}/api/v6/call/events",
            json={"callId": f"call-{rid}", "userId": email, "status": "ringing"},
            headers={"X-API-Key": keys["EVENTS_API_KEY"], "X-Request-ID": f"{rid}-publish"},
            timeout=5,
        )
        assert published.status_code == 200, published.text
        assert published.headers["X-Request-ID"] == f"{rid}-publish"
        assert client.recv_json()["status"] == "ringing"
    finally:
        client.close()
    # Failures that carry secrets and tokens in the request.
    forged = emulator_token(email, project="another-project")
    bad = Client(live.ws)
    try:
        bad.send_json({"type": "init", "payload": {"token": forged}})
        assert bad.recv_json()["type"] == "error"
    except ConnectionClosedError:
        pass
    finally:
        bad.close()
    requests.get(f"{live.http}/api/v6/call/websocket/clients",
                 headers={"Authorization": f"Bearer {forged}"}, timeout=5)
    requests.post(f"{live.http}/api/v6/call/webhook/vapi", json={"message": {}},
                  headers={"X-Vapi-Secret": keys["VAPI_WEBHOOK_SECRET"] + "x"}, timeout=5)
    requests.post(f"{live.http}/api/v6/call/events", json={"callId": "x"},
                  headers={"X-API-Key": keys["EVENTS_API_KEY"][:-1]}, timeout=5)
    minted = requests.post(f"{live.http}/dev/token", json={"email": email}, timeout=5).json()
    return [token, forged, minted["token"]]


def assert_clean(text: str, values: list[str]) -> None:
    for value in values:
        assert value not in text, f"a secret or token reached the log: {value[:12]}…"
    assert not JWT.search(text), f"a JWT reached the log: {JWT.search(text)[0][:20]}…"


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, RedisServer]]:
    """One server for the module: JSON logs, its own Redis (the metrics test stops it)."""
    redis = RedisServer(tmp_path_factory.mktemp("ops-redis")).start()
    live = start_server(
        {"LOG_FORMAT": "json", "REDIS_URL": redis.url, "WS_SEND_QUEUE": "2",
         "WS_WRITE_TIMEOUT": "1", **OPS_KEYS},
        name="ops-json",
    )
    live.api_key = OPS_KEYS["EVENTS_API_KEY"]
    yield live, redis
    live.stop()
    redis.stop()


OPS_KEYS = secrets("json")


def json_lines(live: LiveServer) -> list[dict]:
    """Every line of the server's log, each parsed as one JSON object."""
    return [json.loads(line) for line in live.log().splitlines() if line.strip()]


def test_json_logs_parse_line_by_line_and_carry_the_request_context(ops) -> None:
    live, _ = ops
    rid = f"rid-{uuid.uuid4().hex}"
    tokens = exercise(live, OPS_KEYS, rid)
    deadline = time.monotonic() + 5
    while True:
        lines = json_lines(live)
        mine = [line for line in lines if line.get("request_id") == rid]
        ended = [line for line in mine if " ended " in line["message"]]
        if ended:
            break
        assert time.monotonic() < deadline, f"no 'ended' line with request_id {rid}: {mine}"
        time.sleep(0.05)
    assert len(lines) >= 8
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line), line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
    loggers = {line["logger"] for line in lines}
    assert "gunicorn.error" in loggers and "webapp.config" in loggers
    initialised = [line for line in mine if " initialised " in line["message"]]
    assert initialised, f"no initialised line with request_id {rid}: {mine}"
    assert initialised[0]["connection_id"].startswith("c")
    assert initialised[0]["user"].startswith("ops-")
    assert initialised[0]["transport"] == "websocket"
    # The socket's last line still knows which connection it was.
    assert ended[0]["connection_id"] == initialised[0]["connection_id"]
    # A line without a request has no request_id key at all (not null).
    assert any("request_id" not in line for line in lines)
    assert_clean(live.log(), [*OPS_KEYS.values(), *tokens])


def test_socket_io_lines_carry_the_connection_context(ops) -> None:
    """Socket.IO over WebSocket: one request, so its request id too; long-polling: none sent."""
    live, _ = ops
    rid = f"rid-{uuid.uuid4().hex}"
    email = f"sio-{uuid.uuid4().hex[:8]}@example.com"
    for transports, headers in ((["websocket"], {"X-Request-ID": rid}), (["polling"], {})):
        client = socketio.Client()
        arrived: list[dict] = []
        client.on("connected", arrived.append)
        client.connect(live.http, headers=headers, auth={"token": emulator_token(email)},
                       transports=transports, wait_timeout=10)
        deadline = time.monotonic() + 5
        while not arrived:
            assert time.monotonic() < deadline, "no connected event"
            time.sleep(0.02)
        client.disconnect()
    deadline = time.monotonic() + 5
    while True:
        lines = [line for line in json_lines(live) if line.get("user") == email]
        ended = [line for line in lines if " ended " in line["message"]]
        if len(ended) == 2:
            break
        assert time.monotonic() < deadline, f"not two 'ended' lines for {email}: {lines}"
        time.sleep(0.05)
    assert all(line["transport"] == "socket.io" and line["connection_id"] for line in lines)
    initialised = [line for line in lines if " initialised " in line["message"]]
    assert len(initialised) == 2
    assert initialised[0]["request_id"] == rid


def test_long_polling_lines_carry_the_request_id_of_the_session(ops) -> None:
    """Every line of a long-polling client carries the id of the request that opened its
    session, as a raw socket's carry its upgrade's, whatever ids its later requests have."""
    live, _ = ops
    rid = f"rid-{uuid.uuid4().hex}"
    email = f"poll-{uuid.uuid4().hex[:8]}@example.com"
    url = f"{live.http}/socket.io/?EIO=4&transport=polling"
    with requests.Session() as http:
        opened = http.get(url, headers={"X-Request-ID": rid}, timeout=5)
        assert opened.status_code == 200, opened.text
        url += f"&sid={json.loads(opened.text[1:])['sid']}"
        auth = json.dumps({"token": emulator_token(email)})
        assert http.post(url, data=f"40{auth}", headers={"X-Request-ID": f"{rid}-post"},
                         timeout=5).status_code == 200
        deadline = time.monotonic() + 5
        while '42["connected"' not in http.get(url, timeout=5).text:
            assert time.monotonic() < deadline, "no connected event"
        assert http.post(url, data="1", timeout=5).status_code == 200  # Engine.IO close
    deadline = time.monotonic() + 5
    while True:
        lines = [line for line in json_lines(live) if line.get("user") == email]
        if any(" ended " in line["message"] for line in lines):
            break
        assert time.monotonic() < deadline, f"no 'ended' line for {email}: {lines}"
        time.sleep(0.05)
    connection = lines[0]["connection_id"]
    mine = [line for line in json_lines(live) if line.get("connection_id") == connection]
    assert any(" opened " in line["message"] for line in mine), mine
    assert {line.get("request_id") for line in mine} == {rid}, mine


def test_text_logs_keep_secrets_out_and_name_the_request(server_factory) -> None:
    keys = secrets("text")
    live = server_factory({"LOG_FORMAT": "text", **keys}, name="ops-text")
    rid = f"rid-{uuid.uuid4().hex}"
    tokens = exercise(live, keys, rid)
    live.stop()
    text = live.log()
    assert re.search(rf"connection c\d+ initialised user=ops-\S+ .* request_id={rid}$", text, re.M)
    assert_clean(text, [*keys.values(), *tokens])


def test_redaction_of_tokens_and_secrets_in_both_formats() -> None:
    """The safety net itself: a line that does contain a token or a secret is cleaned."""
    redactor = logs.Redactor()
    redactor.add(["s3cret-key-value", "rediss://:p4ssw0rd-long@redis.example.com:6380"])
    token = emulator_token("a@example.com")
    record = logging.LogRecord(
        "webapp.test", logging.WARNING, __file__, 1,
        "token %s key %s url rediss://:p4ssw0rd-long@h", (token, "s3cret-key-value"), None,
    )
    for formatter in (logs.JsonLines(redactor), logs.TextLines(redactor)):
        line = formatter.format(record)
        assert token not in line and "s3cret-key-value" not in line and "p4ssw0rd" not in line
        assert logs.REDACTED in line
    assert json.loads(logs.JsonLines(redactor).format(record))["level"] == "WARNING"


# -- metrics ------------------------------------------------------------------------


def documented_metrics() -> list[str]:
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(callwire_[a-z_]+)`", section, re.M)


class Scrape:
    """One parsed /metrics answer."""

    def __init__(self, live: LiveServer) -> None:
        answer = requests.get(f"{live.http}/metrics", timeout=10)
        assert answer.status_code == 200
        self.text = answer.text
        self.types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", self.text, re.M))

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        total = 0.0
        for sample, raw_labels, value in re.findall(
            r"^([a-z_]+)(?:\{([^}]*)\})? (\S+)$", self.text, re.M
        ):
            if sample != name:
                continue
            have = dict(re.findall(r'(\w+)="([^"]*)"', raw_labels or ""))
            if all(have.get(k) == v for k, v in labels.items()):
                total += float(value)
        return total


def test_every_documented_metric_is_served_and_moves(ops) -> None:
    """Last in the module: it stops the module's Redis."""
    documented = documented_metrics()
    assert len(documented) >= 10
    live, redis = ops
    check_metrics(live, redis, documented)


def check_metrics(live: LiveServer, redis: RedisServer, documented: list[str]) -> None:
    before = Scrape(live)
    for name in documented:
        served = name in before.types or name.removesuffix("_total") in before.types
        assert served, f"{name} is documented but not served"
    assert before.value("callwire_broker_up") == 1

    email = f"metrics-{uuid.uuid4().hex[:8]}@example.com"
    reader = Client(live.ws)
    first = reader.init(token=emulator_token(email))
    assert first["type"] == "connected"
    published = live.publish({"callId": "m-1", "userId": email, "status": "ringing"})
    event_id = published.json()["data"]["id"]
    assert reader.recv_json()["id"] == event_id
    assert live.publish({"callId": "m-1", "userId": email, "status": "ringing"}).json()[
        "data"]["dropped"] == "duplicate"
    resumed = Client(live.ws)
    assert resumed.init(token=emulator_token(email), last_event_id=event_id)["recovered"] is True
    lost = Client(live.ws)
    assert lost.init(token=emulator_token(email), last_event_id="0000000000000001")[
        "recovered"] is False
    refused = Client(live.ws)
    refused.send_json({"type": "init", "payload": {"token": "not-a-token"}})
    assert refused.recv_json()["type"] == "error"

    during = Scrape(live)
    assert during.value("callwire_connections", transport="websocket") == \
        before.value("callwire_connections", transport="websocket") + 3
    assert during.value("callwire_connections_opened_total", transport="websocket") >= \
        before.value("callwire_connections_opened_total", transport="websocket") + 4
    assert during.value("callwire_events_in_total", source="api", outcome="accepted") == \
        before.value("callwire_events_in_total", source="api", outcome="accepted") + 1
    assert during.value("callwire_events_in_total", source="api", outcome="duplicate") == \
        before.value("callwire_events_in_total", source="api", outcome="duplicate") + 1
    assert during.value("callwire_events_delivered_total") >= \
        before.value("callwire_events_delivered_total") + 1
    assert during.value("callwire_delivery_latency_seconds_count") >= \
        before.value("callwire_delivery_latency_seconds_count") + 1
    # Publish-to-write, measured from the id's time: positive and well under a second here.
    assert 0 < during.value("callwire_delivery_latency_seconds_sum") - before.value(
        "callwire_delivery_latency_seconds_sum") < 1
    for outcome in ("recovered", "not_recovered"):
        assert during.value("callwire_resumes_total", outcome=outcome) == \
            before.value("callwire_resumes_total", outcome=outcome) + 1
    assert during.value("callwire_token_verifications_total", outcome="valid") >= \
        before.value("callwire_token_verifications_total", outcome="valid") + 3
    assert during.value("callwire_token_verifications_total", outcome="rejected") == \
        before.value("callwire_token_verifications_total", outcome="rejected") + 1
    assert during.value("callwire_send_queue_high_water") >= 1
    # The high-water mark is per scrape interval: nothing queued since the last scrape.
    assert Scrape(live).value("callwire_send_queue_high_water") == 0
    for client in (resumed, lost, refused):
        client.close()

    # A client that stops reading while big events pile up: dropped with 4008.
    reader.ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    blob = "x" * 30_000
    deadline = time.monotonic() + 15
    drops = 0.0
    for batch in range(1000):
        items = [{"callId": f"big-{batch}-{i}", "userId": email, "status": "initiated",
                  "data": {"blob": blob}} for i in range(30)]
        assert live.publish(items).status_code == 200
        drops = Scrape(live).value("callwire_slow_clients_dropped_total")
        if drops > before.value("callwire_slow_clients_dropped_total"):
            break
        assert time.monotonic() < deadline, "a client that stopped reading was never dropped"
    assert drops == before.value("callwire_slow_clients_dropped_total") + 1
    reader.close()

    # Redis goes away: the broker is down and publishes are counted as unavailable.
    redis.stop()
    assert live.publish({"callId": "m-2", "userId": email, "status": "ringing"}).status_code == 503
    down = Scrape(live)
    assert down.value("callwire_broker_up") == 0
    assert down.value("callwire_events_in_total", source="api", outcome="unavailable") == \
        before.value("callwire_events_in_total", source="api", outcome="unavailable") + 1
    deadline = time.monotonic() + 5
    while Scrape(live).value("callwire_connections", transport="websocket") != before.value(
            "callwire_connections", transport="websocket"):
        assert time.monotonic() < deadline, "closed connections still counted"
        time.sleep(0.05)


@pytest.mark.parametrize("name", documented_metrics())
def test_documented_metric_has_a_meaning_and_a_reason_to_move(name: str) -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    row = re.search(rf"^\| `{name}` \|([^\n]+)$", text, re.M)[1]
    cells = [c.strip() for c in row.split("|") if c.strip()]
    assert len(cells) == 3 and all(len(c) > 10 for c in cells[1:]), row

"""The deploy storm: SIGTERM under load and a new server on the same port (issue 12).

Shape, as issue 12 measured it: Redis persisting every write (``appendonly
yes``, ``appendfsync always``); N browser-like clients (one user each) that
follow ``webapp/static/callwire.js``'s reconnect policy; a publisher at 200
events/s for the whole run that retries a failed publish with the same
``idempotencyKey`` until it is acknowledged; SIGTERM to the server's process
group (what Heroku sends to a dyno) at 15 s, and at once a new server started
on the same port, as a new dyno would be.

Each client does what callwire.js does:

- init with its token and, once it has seen an event, ``lastEventId``;
- 1012: reconnect at a random moment within 2 s (``restartWindowMs``), resume;
- 1000 and 1009: stop; 1008 and 4001: reconnect with a fresh token, giving up
  after 2 consecutive 1008s (``maxPolicyRetries``);
- anything else (1006, a refused or reset connection, an HTTP error instead of
  the upgrade, 1011, 1013, 4008): full-jitter backoff, 500 ms doubling, capped
  at 30 s, the attempt count reset by each ``connected``.

What is counted: every acknowledged event that its user's client never
received (lost), received twice (duplicated) or after a newer one (out of
order); when the old server was gone and the new one answered; when 50, 90,
99 and 100 % of the clients were initialised again; tracebacks in either
server's log; the peak CPU and RSS of both workers and of redis-server.

    .venv/bin/python -m bench.storm --clients 10000            # the issue's run
    .venv/bin/python -m bench.storm --clients 500 --sigterm-at 8  # a quick look

:func:`run_storm` is also what ``tests/test_storm_live.py`` runs, smaller.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
import gevent.event
from gevent import socket

from bench.harness import (
    Publisher,
    machine_busy_seconds,
    raise_fd_limit,
    sample_process,
    save_result,
)
from bench.rawws import OP_TEXT, ClosedError, HandshakeError, RawClient
from tests.support.net import free_port, wait_for_port
from tests.support.server import LiveServer, start_server
from tests.support.tokens import emulator_token

logger = logging.getLogger("bench.storm")

HOST = "127.0.0.1"

#: callwire.js defaults (webapp/static/callwire.js, DEFAULTS).
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
RESTART_WINDOW = 2.0
MAX_POLICY_RETRIES = 2
#: A browser gives up on a socket that says nothing for idlePingMs + pongTimeoutMs.
OPEN_TIMEOUT = 30.0


def backoff_delay(attempt: int) -> float:
    """callwire.js's full-jitter backoff: a random delay in [0, min(cap, base * 2^attempt))."""
    return random.random() * min(BACKOFF_CAP, BACKOFF_BASE * 2 ** max(0, attempt))


# -- the clients ---------------------------------------------------------------------------


@dataclass
class StormClient:
    """One browser tab of one user, reconnecting as callwire.js does."""

    user: str
    port: int
    #: Event ids in arrival order, across every connection of this client.
    received: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    duplicates: int = 0
    out_of_order: int = 0
    last_event_id: str | None = None
    #: (monotonic time, recovered or None) of every ``connected``.
    connected_at: list[tuple[float, bool | None]] = field(default_factory=list)
    #: (monotonic time, close code or a word) of every end of a connection.
    closes: list[tuple[float, Any]] = field(default_factory=list)
    gave_up: str | None = None
    connected: bool = False
    stopping: bool = False
    raw: RawClient | None = None
    transport: str = "websocket"

    def run(self) -> None:
        """Connect, read, and reconnect by callwire.js's rules until told to stop."""
        attempt = 0
        policy_failures = 0
        fresh_token = False
        token = emulator_token(self.user, ttl=6 * 3600)
        while not self.stopping:
            if fresh_token:
                token = emulator_token(self.user, ttl=6 * 3600)
            code = self._connect_once(token)
            self.connected = False
            self.closes.append((time.monotonic(), code))
            if self.stopping:
                return
            if self._was_connected_since_last_close():
                attempt = 0  # callwire.js resets reconnectAttempts on connected
                if code != 1008:
                    policy_failures = 0
            if code in (1000, 1009):
                self.gave_up = f"closed {code}"
                return
            if code in (1008, 4001):
                if code == 1008:
                    policy_failures += 1
                    if policy_failures > MAX_POLICY_RETRIES:
                        self.gave_up = "closed 1008 with a fresh token"
                        return
                fresh_token = True
                delay = backoff_delay(attempt)
            elif code == 1012:
                delay = random.random() * RESTART_WINDOW
            else:
                delay = backoff_delay(attempt)
            attempt += 1
            gevent.sleep(delay)

    def _was_connected_since_last_close(self) -> bool:
        if not self.connected_at:
            return False
        previous_close = self.closes[-2][0] if len(self.closes) > 1 else 0.0
        return self.connected_at[-1][0] > previous_close

    def _connect_once(self, token: str) -> Any:
        """Open one connection and read it until it ends; return its close code (or a word)."""
        raw = RawClient()
        self.raw = raw
        payload: dict[str, Any] = {"userId": self.user, "token": token}
        if self.last_event_id is not None:
            payload["lastEventId"] = self.last_event_id
        try:
            with gevent.Timeout(OPEN_TIMEOUT, HandshakeError("no connected in time")):
                raw.sock = _connect(self.port)
                _upgrade(raw, self.port)
                raw.send_text(json.dumps({"type": "init", "payload": payload}))
                while True:
                    opcode, body = raw.read_frame()
                    if opcode != OP_TEXT:
                        continue
                    message = json.loads(body)
                    if message.get("type") == "connected":
                        self.connected_at.append((time.monotonic(), message.get("recovered")))
                        self.connected = True
                        break
                    # An error is followed by the close frame that says what to do.
            while True:
                opcode, body = raw.read_frame()
                if opcode == OP_TEXT:
                    self._on_message(json.loads(body))
        except ClosedError as closed:
            return closed.code if closed.code is not None else 1006
        except HandshakeError as failure:
            return f"handshake: {failure}"[:60]
        except ConnectionRefusedError:
            return "refused"
        except ConnectionResetError:
            return "reset"
        except OSError as failure:
            return f"os: {failure.strerror or failure}"
        finally:
            if raw.sock is not None:
                raw.sock.close()
        return None

    def _on_message(self, message: dict[str, Any]) -> None:
        event_id = message.get("id")
        if event_id is None:
            return
        if event_id in self.seen:
            self.duplicates += 1
            return
        if self.received and event_id < self.received[-1]:
            self.out_of_order += 1
        self.seen.add(event_id)
        self.received.append(event_id)
        self.last_event_id = event_id

    def stop(self) -> None:
        self.stopping = True
        if self.raw is not None and self.raw.sock is not None:
            self.raw.sock.close()


def _connect(port: int) -> socket.socket:
    """Open a TCP connection to the server, as a browser's socket does.

    Not ``socket.create_connection``: gevent resolves even "127.0.0.1" through
    its thread pool there (about 65 us and a thread hand-off per connect,
    measured), CPU the generator takes from the server on a 2-core box.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.connect((HOST, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _upgrade(raw: RawClient, port: int, path: str = "/") -> None:
    """The browser's handshake (deflate offered), as ``RawClient.open`` sends it."""
    import base64

    key = base64.b64encode(os.urandom(16)).decode()
    raw.sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
            f"Origin: http://{HOST}:{port}\r\nUser-Agent: callwire-storm\r\n\r\n"
        ).encode()
    )
    raw._read_upgrade(key)


#: socket.io-client's Manager defaults (node_modules/socket.io-client: reconnectionDelay,
#: reconnectionDelayMax, randomizationFactor) and its connect timeout (``timeout``).
SIO_DELAY = 1.0
SIO_DELAY_MAX = 5.0
SIO_JITTER = 0.5
SIO_OPEN_TIMEOUT = 20.0
#: Without ``connected`` (or any ping) for pingInterval + pingTimeout, the engine closes.
SIO_SILENCE_TIMEOUT = 45.0
#: callwire-socketio.js: a refused connect with code 1011 is retried after 4 x its 500 ms base.
SIO_RETRY_1011 = 2.0


def sio_backoff(attempt: int, base: float = SIO_DELAY, cap: float = SIO_DELAY_MAX,
                jitter: float = SIO_JITTER) -> float:
    """socket.io-client's ``Backoff.duration`` (contrib/backo2.js) for the given attempt."""
    ms = base * 1000 * 2**attempt
    rand = random.random()
    deviation = int(rand * jitter * ms)
    ms = ms - deviation if int(rand * 10) & 1 == 0 else ms + deviation
    return int(min(ms, cap * 1000)) / 1000


@dataclass
class SocketIOStormClient(StormClient):
    """One socket.io-client tab (WebSocket transport) wrapped by callwire-socketio.js.

    socket.io-client reconnects by itself after a transport close or a failed
    attempt: ``Backoff`` from ``SIO_DELAY``, doubling, +-50 % jitter, capped at
    ``SIO_DELAY_MAX``, reset on every successful connect and on every close of
    an open connection. Its ``auth`` is a function, so each attempt sends a
    fresh token and the newest ``lastEventId``. A connect refused by the
    server (``connect_error`` with ``data.code``) is callwire-socketio.js's
    business: 1011 retried after 2 s, anything else with a fresh token at
    most twice, then it stays down.
    """

    transport: str = "socket.io"

    def run(self) -> None:
        attempt = 0
        policy_failures = 0
        while not self.stopping:
            outcome = self._connect_once(emulator_token(self.user, ttl=6 * 3600))
            self.connected = False
            self.closes.append((time.monotonic(), outcome))
            if self.stopping:
                return
            if self._was_connected_since_last_close():
                policy_failures = 0
            if isinstance(outcome, tuple):  # ("refused", code): connect_error from the server
                code = outcome[1]
                if code == 1011:
                    delay = SIO_RETRY_1011
                else:
                    policy_failures += 1
                    if policy_failures > MAX_POLICY_RETRIES:
                        self.gave_up = f"connect_error {code}"
                        return
                    delay = 0.0
            elif outcome in ("transport close", "ping timeout"):
                attempt = 0  # Manager.onclose: backoff.reset(), then reconnect()
                delay = sio_backoff(attempt)
                attempt += 1
            else:  # the attempt failed (refused, reset, HTTP error, timeout)
                delay = sio_backoff(attempt)
                attempt += 1
            gevent.sleep(delay)

    def _connect_once(self, token: str) -> Any:
        """One engine: open, CONNECT with auth, read until it ends; return what ended it."""
        raw = RawClient()
        self.raw = raw
        auth: dict[str, Any] = {"userId": self.user, "token": token}
        if self.last_event_id is not None:
            auth["lastEventId"] = self.last_event_id
        opened = False
        try:
            with gevent.Timeout(SIO_OPEN_TIMEOUT, HandshakeError("no engine open in time")):
                raw.sock = _connect(self.port)
                _upgrade(raw, self.port, "/socket.io/?EIO=4&transport=websocket")
                opcode, body = raw.read_frame()
                if not body.startswith(b"0{"):
                    return f"handshake: no open packet {body[:40]!r}"
            opened = True
            raw.send_text("40" + json.dumps(auth))
            with gevent.Timeout(SIO_SILENCE_TIMEOUT, HandshakeError("no connected in time")):
                while True:
                    outcome = self._packet(raw)
                    if outcome is not None:
                        return outcome
                    if self.connected:
                        break
            while True:
                outcome = self._packet(raw)
                if outcome is not None:
                    return outcome
        except (ClosedError, ConnectionResetError, BrokenPipeError) as failure:
            if opened:
                return "transport close"
            return closed_word(failure)
        except HandshakeError as failure:
            return f"handshake: {failure}"[:60] if not opened else "ping timeout"
        except ConnectionRefusedError:
            return "refused"
        except OSError as failure:
            return "transport close" if opened else f"os: {failure.strerror or failure}"
        finally:
            if raw.sock is not None:
                raw.sock.close()

    def _packet(self, raw: RawClient) -> Any:
        """Handle one Engine.IO packet; return a connect refusal, else None."""
        opcode, body = raw.read_frame()
        if opcode != OP_TEXT:
            return None
        text = body.decode()
        if text == "2":
            raw.send_text("3")
        elif text.startswith("42"):
            name, message = json.loads(text[2:])[:2]
            if name == "connected":
                self.connected_at.append((time.monotonic(), message.get("recovered")))
                self.connected = True
                if message.get("recovered") is False:
                    self.last_event_id = None  # callwire-socketio.js: a gap, start over
            elif name == "call.status.changed":
                self._on_message(message)
        elif text.startswith("44"):
            data = json.loads(text[2:]) if len(text) > 2 else {}
            return ("refused", (data.get("data") or {}).get("code"))
        elif text.startswith("41"):
            return ("refused", "server disconnect")
        return None


def closed_word(failure: Exception) -> str:
    if isinstance(failure, ClosedError):
        return str(failure.code if failure.code is not None else 1006)
    return "reset"


# -- the publisher -------------------------------------------------------------------------


@dataclass
class StormPublisher:
    """200 events/s, each retried with its idempotencyKey until acknowledged."""

    port: int
    api_key: str
    users: list[str]
    rate: float
    run_id: str
    #: id -> user of every acknowledged event.
    acknowledged: dict[str, str] = field(default_factory=dict)
    acknowledged_at: dict[str, float] = field(default_factory=dict)
    retries: int = 0
    answers: dict[str, int] = field(default_factory=dict)
    stopping: bool = False
    published: int = 0

    def run(self) -> None:
        publisher = Publisher(self.port, self.api_key, timeout=10.0)
        started = time.monotonic()
        n = 0
        while not self.stopping:
            due = started + n / self.rate
            wait = due - time.monotonic()
            if wait > 0:
                gevent.sleep(wait)
            user = self.users[n % len(self.users)]
            body = {"callId": f"storm-{self.run_id}-{n}", "userId": user, "status": "ringing",
                    "idempotencyKey": f"storm-{self.run_id}-{n}"}
            while True:
                try:
                    status, answer = publisher.post(body)
                except (OSError, TimeoutError, ConnectionError, ValueError) as failure:
                    key = type(failure).__name__
                    publisher.close()
                else:
                    key = str(status)
                    if status == 200:
                        self.answers[key] = self.answers.get(key, 0) + 1
                        event_id = answer["data"]["id"]
                        self.acknowledged[event_id] = user
                        self.acknowledged_at[event_id] = time.monotonic()
                        break
                self.answers[key] = self.answers.get(key, 0) + 1
                self.retries += 1
                gevent.sleep(0.05)
            n += 1
            self.published = n
        publisher.close()


# -- servers -------------------------------------------------------------------------------


class DurableRedis:
    """redis-server with ``appendonly yes`` and ``appendfsync always`` on a free port."""

    def __init__(self, workdir: Path, extra: list[str] | None = None) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.extra = extra or []
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> DurableRedis:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", HOST, "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.workdir),
             "--maxclients", "10000", *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class PeakMeter:
    """Sample RSS and CPU of processes every half second; keep the peaks and a timeline.

    The timeline (one row a second from ``mark``: CPU % of each process over
    that second, and whatever ``probe`` returns) shows where the seconds of a
    storm went.
    """

    def __init__(self) -> None:
        self.pids: dict[str, int] = {}
        self.peak_rss: dict[str, int] = {}
        self.peak_cpu: dict[str, float] = {}
        self._last: dict[str, Any] = {}
        self._greenlet: gevent.Greenlet | None = None
        self.timeline: list[dict[str, Any]] = []
        self._mark: float | None = None
        self._probe: Any = None
        self._row_cpu: dict[str, float] = {}
        self._row_at = 0.0

    def mark(self, at: float, probe: Any) -> None:
        """Start the timeline at ``at`` (monotonic); ``probe()`` adds its fields to each row."""
        self._mark, self._probe = at, probe
        self._row_at = at
        self._row_cpu = {}

    def watch(self, name: str, pid: int) -> None:
        self.pids[name] = pid

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._loop)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill()

    def _loop(self) -> None:
        while True:
            for name, pid in list(self.pids.items()):
                try:
                    sample = sample_process(pid)
                except OSError:
                    continue
                self.peak_rss[name] = max(self.peak_rss.get(name, 0), sample.rss_bytes)
                last = self._last.get(name)
                if last is not None and sample.at - last.at > 0.2:
                    percent = 100 * (sample.cpu_seconds - last.cpu_seconds) / (sample.at - last.at)
                    self.peak_cpu[name] = max(self.peak_cpu.get(name, 0.0), percent)
                self._last[name] = sample
            self._timeline_row()
            gevent.sleep(0.5)

    def _timeline_row(self) -> None:
        if self._mark is None:
            return
        now = time.monotonic()
        if now - self._row_at < 1.0 and self._row_cpu:
            return
        cpu = {name: sample.cpu_seconds for name, sample in self._last.items()}
        cpu["machine"] = machine_busy_seconds()
        row: dict[str, Any] = {"t": round(now - self._mark, 1)}
        for name, seconds in cpu.items():
            if name in self._row_cpu:
                row[name] = round(100 * (seconds - self._row_cpu[name]) / (now - self._row_at))
        row.update(self._probe() if self._probe is not None else {})
        if len(row) > 1 and self._row_cpu:
            self.timeline.append(row)
        self._row_cpu, self._row_at = cpu, now

    def figures(self) -> dict[str, Any]:
        return {name: {"peak_rss_mib": round(self.peak_rss.get(name, 0) / 2**20, 1),
                       "peak_cpu_percent": round(self.peak_cpu.get(name, 0.0), 1)}
                for name in self.pids}


def _in_thread(function: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a blocking call (subprocess, time.sleep) without stopping this process's greenlets."""
    return gevent.get_hub().threadpool.spawn(function, *args, **kwargs).get()


def _wait_answering(server: LiveServer, boot: dict[str, float], since: float) -> None:
    """Wait (in a thread) for the new server's first log line, open port and /healthz 200."""
    import requests

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"new server exited early:\n{server.log()}")
        if "first_log_line_s" not in boot and server.log_path.stat().st_size > 0:
            boot["first_log_line_s"] = round(time.monotonic() - since, 2)
        try:
            if requests.get(f"{server.http}/healthz", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise TimeoutError("the new server did not answer /healthz within 60 s")


def _watch_worker(server: LiveServer, meter: PeakMeter, boot: dict[str, float],
                  since: float) -> None:
    """Meter the new worker from its fork; optionally profile it (BENCH_PYSPY=<file>)."""
    while not (children := _children(server.process.pid)):
        gevent.sleep(0.05)
    boot["worker_forked_s"] = round(time.monotonic() - since, 2)
    meter.watch("new worker", children[0])
    _profile(children[0], "new")


def _profile(pid: int, name: str) -> None:
    """With BENCH_PYSPY=<prefix>: py-spy records ``pid`` to <prefix>-<name>.txt (collapsed)."""
    prefix = os.environ.get("BENCH_PYSPY")
    if prefix:
        py_spy = Path(sys.executable).parent / "py-spy"
        subprocess.Popen([str(py_spy), "record", "--pid", str(pid), "--rate", "50",
                          "--duration", os.environ.get("BENCH_PYSPY_SECONDS", "40"),
                          "--format", "raw", "--nonblocking", "-o", f"{prefix}-{name}.txt"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _tracebacks(server: LiveServer) -> list[str]:
    lines = server.log().splitlines()
    found = []
    for index, line in enumerate(lines):
        if line.startswith("Traceback"):
            tail = next((lines[j] for j in range(index + 1, min(index + 80, len(lines)))
                         if lines[j] and not lines[j].startswith((" ", "Traceback", "\t"))), "")
            found.append(tail[:200])
    return found


def _uptime() -> str:
    return Path("/proc/loadavg").read_text().strip()


# -- the run -------------------------------------------------------------------------------


def run_storm(
    clients: int = 10000,
    rate: float = 200.0,
    sigterm_at: float = 15.0,
    settle: float = 5.0,
    connect_concurrency: int = 200,
    back_timeout: float = 60.0,
    workdir: Path | None = None,
    server_env: dict[str, str] | None = None,
    socketio_share: float = 0.0,
) -> dict[str, Any]:
    """Run the storm once and return its figures (see the module docstring).

    ``socketio_share`` of the clients are socket.io clients (:class:`SocketIOStormClient`).
    """
    raise_fd_limit(clients + 2000)
    loads = [_uptime()]
    temporary = None
    if workdir is None:
        temporary = tempfile.TemporaryDirectory(prefix="callwire-storm-")
        workdir = Path(temporary.name)
    store = _in_thread(DurableRedis(workdir).start)
    port = free_port()
    env = {"REDIS_URL": store.url, "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "INFO"),
           # Every client here comes from 127.0.0.1; real ones come from many addresses.
           "WS_MAX_PENDING_PER_ADDRESS": "100000",
           **(server_env or {})}
    meter = PeakMeter()
    old = new = None
    storm: list[StormClient] = []
    greenlets: list[gevent.Greenlet] = []
    publisher: StormPublisher | None = None
    try:
        old = _in_thread(start_server, env, port=port, name="storm-old")
        meter.watch("old worker", _children(old.process.pid)[0])
        meter.watch("redis-server", store.process.pid)
        meter.watch("generator", os.getpid())
        meter.start()
        started = time.monotonic()
        run_id = f"{int(time.time())}-{random.randrange(10**6)}"
        users = [f"storm-{run_id}-{n}@bench.local" for n in range(clients)]
        socketio_clients = round(socketio_share * clients)
        storm = [(SocketIOStormClient if n < socketio_clients else StormClient)(user, port)
                 for n, user in enumerate(users)]
        random.shuffle(storm)  # both kinds spread over the opening and the publisher's users
        publisher = StormPublisher(port, old.api_key, users, rate, run_id)
        greenlets.append(gevent.spawn(publisher.run))
        # Open the clients, at most connect_concurrency handshakes at a time.
        pending = list(storm)
        while pending:
            batch, pending = pending[:connect_concurrency], pending[connect_concurrency:]
            for client in batch:
                greenlets.append(gevent.spawn(client.run))
            deadline = time.monotonic() + 30
            while (sum(1 for c in batch if c.connected) < len(batch) * 0.95
                   and time.monotonic() < deadline):
                gevent.sleep(0.02)
        all_connected = time.monotonic() - started
        while sum(c.connected for c in storm) < clients and time.monotonic() - started < 60:
            gevent.sleep(0.1)
        connected_before = sum(c.connected for c in storm)
        gevent.sleep(max(0.0, started + sigterm_at - time.monotonic()))
        acknowledged_before = len(publisher.acknowledged)

        # The deploy: SIGTERM to every process of the old "dyno", a new one on the same port.
        loads.append(_uptime())
        term = time.monotonic()
        os.killpg(old.process.pid, signal.SIGTERM)
        _profile(meter.pids["old worker"], "old")
        old_done = gevent.event.AsyncResult()

        def wait_old() -> None:
            _in_thread(old.process.wait, 60)
            old_done.set(time.monotonic() - term)

        greenlets.append(gevent.spawn(wait_old))

        def back_after(client: StormClient) -> float | None:
            """Seconds from SIGTERM to the connected that this client still holds."""
            if not client.connected or not client.connected_at:
                return None
            at = client.connected_at[-1][0]
            return at - term if at > term else None

        def probe() -> dict[str, Any]:
            return {"back": sum(1 for c in storm if back_after(c) is not None),
                    "connected": sum(1 for c in storm if c.connected)}

        meter.mark(term, probe)
        new = _in_thread(start_server, env, port=port, name="storm-new", wait=False)
        boot = {"spawned_s": round(time.monotonic() - term, 2)}
        greenlets.append(gevent.spawn(_watch_worker, new, meter, boot, term))
        _in_thread(_wait_answering, new, boot, term)
        new_answering = time.monotonic() - term

        deadline = term + back_timeout
        while time.monotonic() < deadline:
            back = sum(1 for c in storm if back_after(c) is not None)
            if back >= clients and old_done.ready():
                break
            gevent.sleep(0.5)  # each look walks every client: the generator shares the box
        gevent.sleep(settle)  # publish a little more to everyone
        publisher.stopping = True
        greenlets[0].join(timeout=30)
        # Wait (bounded) for the last acknowledged events to arrive.
        wanted = dict(publisher.acknowledged)
        by_user: dict[str, StormClient] = {c.user: c for c in storm}
        drain_deadline = time.monotonic() + 10
        while time.monotonic() < drain_deadline:
            missing = sum(1 for event_id, user in wanted.items()
                          if event_id not in by_user[user].seen)
            if not missing:
                break
            gevent.sleep(0.2)
        loads.append(_uptime())

        lost = [(event_id, user) for event_id, user in wanted.items()
                if event_id not in by_user[user].seen]
        lost_never_back = [item for item in lost if back_after(by_user[item[1]]) is None]
        back_times = sorted(t for c in storm if (t := back_after(c)) is not None)

        def at_fraction(fraction: float) -> float | None:
            needed = int(fraction * clients + 0.999999)
            return round(back_times[needed - 1], 2) if len(back_times) >= needed else None

        closes_after_term: dict[str, int] = {}
        for client in storm:
            for at, code in client.closes:
                if at >= term:
                    closes_after_term[str(code)] = closes_after_term.get(str(code), 0) + 1
        resumes = [rec for c in storm for at, rec in c.connected_at if at > term]

        def by_transport(transport: str) -> dict[str, Any]:
            group = [c for c in storm if c.transport == transport]
            times = sorted(t for c in group if (t := back_after(c)) is not None)
            users = {c.user for c in group}

            def at(fraction: float) -> float | None:
                needed = int(fraction * len(group) + 0.999999)
                return round(times[needed - 1], 2) if needed and len(times) >= needed else None

            closes: dict[str, int] = {}
            for client in group:
                for when, code in client.closes:
                    if when >= term:
                        closes[str(code)] = closes.get(str(code), 0) + 1
            return {
                "clients": len(group), "back": len(times),
                "back_50_s": at(0.5), "back_90_s": at(0.9), "back_99_s": at(0.99),
                "back_100_s": at(1.0), "gave_up": sum(1 for c in group if c.gave_up),
                "lost": sum(1 for _, user in lost if user in users),
                "duplicates": sum(c.duplicates for c in group),
                "out_of_order": sum(c.out_of_order for c in group),
                "closes_after_sigterm": closes,
            }

        result = {
            "clients": clients,
            "rate": rate,
            "connected_before_sigterm": connected_before,
            "seconds_to_connect_all": round(all_connected, 2),
            "sigterm_at_s": round(term - started, 2),
            "old_gone_s": round(old_done.value, 2) if old_done.wait(30) is not None else None,
            "new_answering_s": round(new_answering, 2),
            "new_boot": boot,
            "back_50_s": at_fraction(0.5),
            "back_90_s": at_fraction(0.9),
            "back_99_s": at_fraction(0.99),
            "back_100_s": at_fraction(1.0),
            "back": len(back_times),
            "never_back": clients - len(back_times),
            "gave_up": sum(1 for c in storm if c.gave_up),
            "acknowledged": len(wanted),
            "acknowledged_before_sigterm": acknowledged_before,
            "lost": len(lost),
            "lost_by_clients_never_back": len(lost_never_back),
            "duplicates": sum(c.duplicates for c in storm),
            "out_of_order": sum(c.out_of_order for c in storm),
            "publish_answers": publisher.answers,
            "publish_retries": publisher.retries,
            "closes_after_sigterm": closes_after_term,
            "resumed_after_sigterm": {
                "recovered": sum(1 for r in resumes if r is True),
                "not_recovered": sum(1 for r in resumes if r is False),
                "fresh": sum(1 for r in resumes if r is None),
            },
            "by_transport": {t: by_transport(t) for t in ("websocket", "socket.io")
                             if any(c.transport == t for c in storm)},
            "tracebacks_old": _tracebacks(old),
            "tracebacks_new": _tracebacks(new),
            "peaks": meter.figures(),
            "timeline": meter.timeline,
            "loadavg": loads,
            "logs": [str(old.log_path), str(new.log_path)],
        }
        return result
    finally:
        meter.stop()
        if publisher is not None:
            publisher.stopping = True
        for client in storm:
            client.stop()
        gevent.killall(greenlets, timeout=5)
        for server in (new, old):
            if server is not None:
                _in_thread(server.stop)
        _in_thread(store.stop)
        if temporary is not None:
            temporary.cleanup()


def render(result: dict[str, Any]) -> str:
    """Markdown lines for bench/README.md."""
    peaks = result["peaks"]
    peak_text = "; ".join(f"{name}: {p['peak_cpu_percent']} % CPU, {p['peak_rss_mib']} MiB"
                          for name, p in peaks.items())
    return "\n".join([
        "| clients | SIGTERM → old gone / new answering | back 50 / 90 / 99 / 100 % | never back "
        "| acknowledged | lost | duplicated | out of order | tracebacks old / new |",
        "|---:|---|---|---:|---:|---:|---:|---:|---|",
        f"| {result['clients']} | {result['old_gone_s']} / {result['new_answering_s']} s "
        f"| {result['back_50_s']} / {result['back_90_s']} / {result['back_99_s']} / "
        f"{result['back_100_s']} s | {result['never_back']} | {result['acknowledged']} "
        f"| {result['lost']} | {result['duplicates']} | {result['out_of_order']} "
        f"| {len(result['tracebacks_old'])} / {len(result['tracebacks_new'])} |",
        "",
        f"Peaks: {peak_text}. Closes seen by clients after SIGTERM: "
        f"{result['closes_after_sigterm']}. Inits after SIGTERM: "
        f"{result['resumed_after_sigterm']}. Publish answers: {result['publish_answers']}. "
        f"Load average (1/5/15 min) at start, SIGTERM, end: {result['loadavg']}.",
        f"By transport: {json.dumps(result['by_transport'])}.",
        f"New server: {result['new_boot']}.",
    ])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.storm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=10000)
    parser.add_argument("--rate", type=float, default=200.0, help="events/s published")
    parser.add_argument("--sigterm-at", type=float, default=15.0,
                        help="seconds after start (at least once every client is connected)")
    parser.add_argument("--concurrency", type=int, default=200,
                        help="handshakes in flight while opening the clients")
    parser.add_argument("--socketio-share", type=float, default=0.0,
                        help="fraction of the clients that are socket.io clients (0-1)")
    parser.add_argument("--name", default="storm", help="bench/results/<name>.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    result = run_storm(args.clients, args.rate, args.sigterm_at,
                       connect_concurrency=args.concurrency,
                       socketio_share=args.socketio_share)
    path = save_result(args.name, result)
    print(render(result))
    print(json.dumps({k: v for k, v in result.items() if k.startswith("tracebacks")}, indent=1))
    print(f"figures: {path}")
    return result


if __name__ == "__main__":
    main()

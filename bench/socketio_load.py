"""Socket.IO benchmark (issue 9): Callwire's layer and Flask-SocketIO 5.x, side by side.

For each server in turn (Callwire as the Procfile runs it; the bench-only
peer ``bench/peers/socketio_app.py`` under the same gunicorn gevent worker):

1. ``--connections`` idle, initialised Socket.IO clients over WebSocket, each
   offering permessage-deflate as browsers do: the worker's RSS per client;
2. while they are held, ``--rate`` events/s, one per POST, each to a random
   held client: publish-to-arrival latency (p50 / p99 / max);
3. one event per POST as fast as ``--publishers`` keep-alive publishers go,
   to ``--receivers`` receiving clients (default 20): events/s delivered and
   the worker's CPU per event;
4. ``--polling`` idle long-polling clients held by the worker (``--polling-only``:
   this phase alone), with events at ``--rate`` to random ones: latency again.

The clients are raw Engine.IO v4 clients on gevent sockets (the wire format
socket.io-client speaks: open packet, ``40{auth}``, pings answered with
pongs), light enough that 10,000 fit in this one process on one core.

    python -m bench.socketio_load --connections 10000
    python -m bench.socketio_load --connections 2000 --hold 5 --skip-peer   # a quick look
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import subprocess
import time
from pathlib import Path
from typing import Any

import gevent
from gevent import socket
from gevent.pool import Pool

from bench import side_by_side
from bench.harness import (
    CpuMeter,
    Publisher,
    percentiles,
    quiet_generator_gc,
    raise_fd_limit,
    sample_process,
    save_result,
    start_bench_server,
    worker_pid,
)
from bench.rawws import (
    DEFLATE_OFFER,
    ClosedError,
    HandshakeError,
    RawClient,
)
from bench.side_by_side import API_KEY, start_profiler
from tests.support.server import LiveServer
from tests.support.tokens import emulator_token

logger = logging.getLogger("bench.socketio")
HOST = "127.0.0.1"
PATH = "/socket.io/?EIO=4&transport="
#: Seconds the worker's CPU is measured while the clients are held and nothing is published.
IDLE_WINDOW = 5.0
#: Both servers' Engine.IO pingInterval (Callwire's default WS_PING_INTERVAL; the peer's).
PING_INTERVAL = 25


def auth_for(email: str) -> dict[str, Any]:
    """What a browser's ``auth`` sends: the user and an emulator ID token."""
    return {"userId": email, "token": emulator_token(email, ttl=6 * 3600)}


class Arrivals:
    """Publish-to-arrival latencies, keyed by call id."""

    def __init__(self) -> None:
        self.sent: dict[str, float] = {}
        self.samples: list[float] = []
        self.count = 0

    def on_event(self, event: dict[str, Any], arrived: float) -> None:
        self.count += 1
        sent_at = self.sent.pop(event.get("callId"), None)
        if sent_at is not None:
            self.samples.append(arrived - sent_at)


def handle_packets(text: str, arrivals: Arrivals | None, arrived: float) -> list[str]:
    """Handle Engine.IO packets from the server; return the packets to answer."""
    answers = []
    for packet in text.split("\x1e"):
        if packet == "2":
            answers.append("3")
        elif packet.startswith('42["call.status.changed"') and arrivals is not None:
            arrivals.on_event(json.loads(packet[2:])[1], arrived)
    return answers


class SioWebSocketClient(RawClient):
    """An Engine.IO v4 / Socket.IO v5 client over WebSocket, as socket.io-client with
    ``transports: ['websocket']`` (deflate offered)."""

    __slots__ = ("arrivals",)

    def open_sio(self, port: int, auth: dict[str, Any], timeout: float) -> None:
        with gevent.Timeout(timeout, HandshakeError(f"no connected within {timeout}s")):
            self.sock = socket.create_connection((HOST, port))
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            key = "dGhlIHNhbXBsZSBub25jZQ=="
            self.sock.sendall(
                (
                    f"GET {PATH}websocket HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
                    f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                    f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n"
                    f"User-Agent: callwire-bench\r\n\r\n"
                ).encode()
            )
            self._read_upgrade(key)
            opcode, payload = self.read_frame()
            if not payload.startswith(b"0{"):
                raise HandshakeError(f"no Engine.IO open packet: {payload[:80]!r}")
            self.send_text("40" + json.dumps(auth))
            while True:
                _, payload = self.read_frame()
                if payload.startswith(b"44"):
                    raise HandshakeError(f"refused: {payload[:200]!r}")
                if payload.startswith(b'42["connected"'):
                    self.user_id = auth["userId"]
                    return
                if payload == b"2":
                    self.send_text("3")

    def start(self, arrivals: Arrivals | None) -> None:
        self.arrivals = arrivals
        self.reader = gevent.spawn(self._read_sio)

    def _read_sio(self) -> None:
        try:
            while True:
                _, payload = self.read_frame()
                for answer in handle_packets(payload.decode(), self.arrivals, time.monotonic()):
                    self.send_text(answer)
        except (ClosedError, OSError):
            if self.close_code is None:
                self.close_code = -1


class HttpConnection:
    """A keep-alive HTTP/1.1 connection that reads Content-Length and chunked answers."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.create_connection((HOST, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = bytearray()

    def request(self, method: str, path: str, body: str = "") -> tuple[int, str]:
        data = body.encode()
        self.sock.sendall((
            f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
            f"Content-Type: text/plain;charset=UTF-8\r\nContent-Length: {len(data)}\r\n\r\n"
        ).encode() + data)
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            self._fill()
        lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        del self.buffer[: end + 4]
        headers = {k.strip().lower(): v.strip()
                   for k, _, v in (line.partition(":") for line in lines[1:])}
        if "content-length" in headers:
            answer = self._take(int(headers["content-length"]))
        else:
            answer = b""
            while True:
                while (eol := self.buffer.find(b"\r\n")) < 0:
                    self._fill()
                size = int(bytes(self.buffer[:eol]), 16)
                del self.buffer[: eol + 2]
                chunk = self._take(size + 2)[:size]
                if not size:
                    break
                answer += chunk
        return int(lines[0].split()[1]), answer.decode()

    def _take(self, count: int) -> bytes:
        while len(self.buffer) < count:
            self._fill()
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ClosedError(None, "end of stream")
        self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


class SioPollingClient:
    """An Engine.IO v4 long-polling client: a GET always pending, POSTs on a second connection."""

    def __init__(self) -> None:
        self.get_conn: HttpConnection | None = None
        self.post_conn: HttpConnection | None = None
        self.url = ""
        self.reader: gevent.Greenlet | None = None
        self.alive = True
        self.user_id = ""

    def open(self, port: int, auth: dict[str, Any], timeout: float) -> None:
        with gevent.Timeout(timeout, HandshakeError(f"no connected within {timeout}s")):
            self.get_conn, self.post_conn = HttpConnection(port), HttpConnection(port)
            status, opened = self.get_conn.request("GET", PATH + "polling")
            if status != 200 or not opened.startswith("0{"):
                raise HandshakeError(f"open answered {status}: {opened[:80]}")
            self.url = f"{PATH}polling&sid={json.loads(opened[1:])['sid']}"
            self.post_conn.request("POST", self.url, "40" + json.dumps(auth))
            while True:
                status, text = self.get_conn.request("GET", self.url)
                if status != 200:
                    raise HandshakeError(f"poll answered {status}: {text[:80]}")
                if '42["connected"' in text:
                    self.user_id = auth["userId"]
                    return

    def start(self, arrivals: Arrivals | None) -> None:
        self.reader = gevent.spawn(self._poll, arrivals)

    def _poll(self, arrivals: Arrivals | None) -> None:
        try:
            while True:
                status, text = self.get_conn.request("GET", self.url)
                if status != 200:
                    break
                for answer in handle_packets(text, arrivals, time.monotonic()):
                    self.post_conn.request("POST", self.url, answer)
        except (ClosedError, OSError):
            pass
        self.alive = False

    def close(self) -> None:
        if self.reader is not None:
            self.reader.kill(block=False)
        for conn in (self.get_conn, self.post_conn):
            if conn is not None:
                conn.close()


# -- servers ---------------------------------------------------------------------------


def start_peer() -> LiveServer:
    """Start Flask-SocketIO (``bench/peers/socketio_app.py``) as ``bench.side_by_side`` does."""
    return side_by_side.start_peer("socketio")


# -- measurements -------------------------------------------------------------------------


def open_clients(kind: type, port: int, count: int, prefix: str, concurrency: int,
                 arrivals: Arrivals | None) -> tuple[list[Any], list[str]]:
    held: list[Any] = []
    errors: list[str] = []

    def one(number: int) -> None:
        client = kind()
        try:
            if kind is SioWebSocketClient:
                client.open_sio(port, auth_for(f"{prefix}-{number:05d}@bench.local"), 60)
            else:
                client.open(port, auth_for(f"{prefix}-{number:05d}@bench.local"), 60)
        except Exception as failure:  # noqa: BLE001 - counted and reported
            client.close()
            errors.append(f"{type(failure).__name__}: {failure}")
            return
        client.start(arrivals)
        held.append(client)

    pool = Pool(concurrency)
    for number in range(count):
        pool.spawn(one, number)
    pool.join()
    return held, errors


def paced_events(port: int, users: list[str], rate: float, seconds: float,
                 arrivals: Arrivals, publishers: int = 4) -> dict[str, Any]:
    """Publish ``rate`` events/s (one per POST) to random ``users`` for ``seconds``."""
    bad: list[str] = []
    stop_at = time.monotonic() + seconds
    interval = publishers / rate

    def publish_loop(index: int) -> None:
        publisher = Publisher(port, API_KEY)
        next_at = time.monotonic() + index * interval / publishers
        number = 0
        while time.monotonic() < stop_at:
            call_id = f"e{index}-{number}-{random.getrandbits(32):x}"
            number += 1
            body = {"callId": call_id, "userId": random.choice(users), "status": "ringing",
                    "data": {"customerNumber": "+15550100"}}
            arrivals.sent[call_id] = time.monotonic()
            try:
                status, _ = publisher.post(body)
                if status != 200:
                    bad.append(str(status))
            except (OSError, TimeoutError) as failure:
                bad.append(repr(failure))
                publisher.close()
            next_at = max(next_at + interval, time.monotonic())
            gevent.sleep(max(0.0, next_at - time.monotonic()))

    gevent.joinall([gevent.spawn(publish_loop, i) for i in range(publishers)])
    gevent.sleep(1.0)
    sent = len(arrivals.samples) + len(arrivals.sent)
    return {"published": sent, "received": len(arrivals.samples), "bad_answers": len(bad),
            "latency": percentiles(arrivals.samples)}


def throughput(port: int, pid: int, seconds: float, publishers: int,
               receiver_count: int) -> dict[str, Any]:
    """One event per POST, as fast as ``publishers`` go, to ``receiver_count`` receivers:
    events/s delivered."""
    arrivals = Arrivals()
    receivers, errors = open_clients(SioWebSocketClient, port, receiver_count, "tp", 50,
                                     arrivals)
    users = [c.user_id for c in receivers]
    if not users:
        return {"open_errors": len(errors), "error_sample": errors[:3]}
    published = 0
    stop_at = time.monotonic() + seconds

    def publish_loop(index: int) -> None:
        nonlocal published
        publisher = Publisher(port, API_KEY)
        number = 0
        while time.monotonic() < stop_at:
            call_id = f"t{index}-{number}"
            number += 1
            body = {"callId": call_id, "userId": users[number % len(users)],
                    "status": "ringing", "data": {"customerNumber": "+15550100"}}
            arrivals.sent[call_id] = time.monotonic()
            status, _ = publisher.post(body)
            published += status == 200

    meter = CpuMeter(pid)
    cpu_before = sample_process(pid).cpu_seconds
    started = time.monotonic()
    gevent.joinall([gevent.spawn(publish_loop, i) for i in range(publishers)])
    elapsed = time.monotonic() - started
    cpu = cpu_per_event(meter, pid, cpu_before, published)
    gevent.sleep(1.0)
    for client in receivers:
        client.close()
    return {"events_per_s": round(len(arrivals.samples) / elapsed), "published": published,
            "received": len(arrivals.samples), "latency": percentiles(arrivals.samples),
            "open_errors": len(errors), "error_sample": errors[:3], "cpu": cpu}


def cpu_per_event(meter: CpuMeter, pid: int, cpu_before: float, events: int) -> dict[str, float]:
    """The meter's CPU percentages, and the worker's CPU microseconds per event since
    ``cpu_before`` (pings, idle clients and the POSTs included)."""
    cpu = meter.percent()
    used = sample_process(pid).cpu_seconds - cpu_before
    cpu["server_cpu_us_per_event"] = round(1e6 * used / max(1, events), 1)
    return cpu


def profiled(args: argparse.Namespace, pid: int, name: str, phase: str,
             seconds: float) -> subprocess.Popen | None:
    """With ``--profile DIR``: sample the worker with py-spy during one phase."""
    if args.profile is None:
        return None
    return start_profiler(pid, seconds, args.profile / f"{name}-{phase}.txt")


def measure_polling(name: str, server: LiveServer, pid: int,
                    args: argparse.Namespace) -> dict[str, Any]:
    """``--polling`` idle long-polling clients held, events at ``--rate`` to random ones."""
    arrivals = Arrivals()
    polling, errors = open_clients(SioPollingClient, server.port, args.polling,
                                   f"{name}-poll", 50, arrivals)
    gevent.sleep(args.settle)
    rss = sample_process(pid).rss_bytes
    meter = CpuMeter(pid)
    profiler = profiled(args, pid, name, "polling", args.hold - 1)
    cpu_before = sample_process(pid).cpu_seconds
    events = paced_events(server.port, [c.user_id for c in polling], args.rate,
                          args.hold, arrivals)
    events["cpu"] = cpu_per_event(meter, pid, cpu_before, events["published"])
    if profiler is not None:
        profiler.wait(timeout=30)
    result = {"clients": len(polling), "open_errors": len(errors),
              "error_sample": errors[:3], "rss_mib": round(rss / 2**20, 1),
              "still_alive": sum(1 for c in polling if c.alive), **events}
    logger.info("%s polling: %s", name, result)
    for client in polling:
        client.close()
    return result


def measure(name: str, server: LiveServer, args: argparse.Namespace) -> dict[str, Any]:
    pid = worker_pid(server)
    result: dict[str, Any] = {"server": name}
    if args.polling_only:
        result["polling"] = measure_polling(name, server, pid, args)
        return result
    warm, _ = open_clients(SioWebSocketClient, server.port, 10, f"{name}-warm", 10, None)
    gevent.sleep(2)
    before = sample_process(pid).rss_bytes
    started = time.monotonic()
    arrivals = Arrivals()
    held, errors = open_clients(SioWebSocketClient, server.port, args.connections,
                                f"{name}-idle", args.concurrency, arrivals)
    opened_in = time.monotonic() - started
    gevent.sleep(args.settle)
    after = sample_process(pid).rss_bytes
    # What holding them costs: pings and pongs, timers, the collector. Measured (and
    # events published) once every client has had its first ping: pingInterval after
    # the last one opened.
    gevent.sleep(max(0.0, started + opened_in + PING_INTERVAL + 1 - time.monotonic()))
    meter = CpuMeter(pid)
    profiler = profiled(args, pid, name, "idle", IDLE_WINDOW - 1)
    gevent.sleep(IDLE_WINDOW)
    idle_cpu = meter.percent()
    if profiler is not None:
        profiler.wait(timeout=30)
    alive = sum(1 for c in held if c.alive)
    result["idle"] = {
        "connections": len(held), "open_errors": len(errors), "error_sample": errors[:3],
        "open_seconds": round(opened_in, 1), "alive_after_settle": alive,
        "rss_mib_before": round(before / 2**20, 1), "rss_mib_after": round(after / 2**20, 1),
        "kib_per_connection": round((after - before) / 1024 / max(1, len(held)), 1),
        "deflate_accepted": sum(1 for c in held if c.extensions),
        "cpu_while_idle": idle_cpu,
    }
    logger.info("%s idle: %s", name, result["idle"])
    meter = CpuMeter(pid)
    users = [c.user_id for c in held]
    profiler = profiled(args, pid, name, "held", args.hold - 1)
    cpu_before = sample_process(pid).cpu_seconds
    result["events_while_held"] = paced_events(server.port, users, args.rate, args.hold, arrivals)
    result["events_while_held"]["cpu"] = cpu_per_event(
        meter, pid, cpu_before, result["events_while_held"]["published"])
    if profiler is not None:
        profiler.wait(timeout=30)
    result["events_while_held"]["still_alive"] = sum(1 for c in held if c.alive)
    logger.info("%s events while held: %s", name, result["events_while_held"])
    for client in held + warm:
        client.close()
    gevent.sleep(args.settle * 4)  # the server processes 10,000 disconnects
    profiler = profiled(args, pid, name, "single", args.duration - 1)
    result["throughput_single"] = throughput(server.port, pid, args.duration, args.publishers,
                                            args.receivers)
    if profiler is not None:
        profiler.wait(timeout=30)
    logger.info("%s throughput: %s", name, result["throughput_single"])
    if args.polling:
        result["polling"] = measure_polling(name, server, pid, args)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--hold", type=float, default=10.0)
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--receivers", type=int, default=20,
                        help="clients that receive the one-event-per-POST phase")
    parser.add_argument("--polling", type=int, default=1000)
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--polling-only", action="store_true",
                        help="only the long-polling phase")
    parser.add_argument("--profile", type=Path, default=None,
                        help="sample the worker with py-spy in each phase into DIR "
                             "(collapsed stacks; python -m bench.profile_top DIR/*.txt)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # Phases run one after the other: the idle clients are closed before the polling ones.
    raise_fd_limit(max(args.connections, 2 * args.polling) + 500)
    quiet_generator_gc()
    results = {"uptime_before": subprocess.run(["uptime"], capture_output=True,
                                               text=True).stdout.strip(), "args": {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    callwire = start_bench_server({"EVENTS_API_KEY": API_KEY})
    try:
        results["callwire"] = measure("callwire", callwire, args)
    finally:
        callwire.stop()
    if not args.skip_peer:
        peer = start_peer()
        try:
            results["flask_socketio"] = measure("flask_socketio", peer, args)
        finally:
            peer.stop()
    results["uptime_after"] = subprocess.run(["uptime"], capture_output=True,
                                             text=True).stdout.strip()
    path = save_result("socketio-polling" if args.polling_only else f"socketio-{args.connections}",
                       results)
    print(json.dumps(results, indent=2))
    print(f"saved {path}")


if __name__ == "__main__":
    main()

"""Sockets that never send init, by the thousand, while a good user connects (issue 11, item 9).

Opens ``--sockets`` WebSocket handshakes from ``--addresses`` loopback
source addresses (127.0.1.1, 127.0.1.2, ...), holds every one the server
accepts and never sends init on it. Meanwhile a user on 127.0.0.2 connects,
initialises and must receive an event published in the middle of the flood.
The server runs with its default caps; before them, 22,000 such sockets from
one address took the worker to its file limit (tracebacks, good connections
reset). Prints what the handshakes got and the worker's descriptors and RSS.

    .venv/bin/python -m bench.init_flood --sockets 22000 --addresses 1
    .venv/bin/python -m bench.init_flood --sockets 22000 --addresses 22 --init-timeout 600
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import time
import uuid
from collections import Counter
from pathlib import Path

import gevent
import requests
from gevent import socket
from gevent.pool import Pool

from bench.harness import raise_fd_limit, sample_process, start_bench_server, worker_pid
from tests.support.tokens import emulator_token


def handshake(port: int, source: str) -> tuple[int, socket.socket | None]:
    """Open one handshake from ``source``; keep the socket if accepted (101).

    Returns a negative errno when the connection failed on this side (-24: this
    generator ran out of descriptors, not the server).
    """
    try:
        sock = socket.socket()
    except OSError as error:
        return -(error.errno or 1), None
    try:
        sock.bind((source, 0))
        sock.settimeout(30)
        sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionResetError("closed before answering")
            data += chunk
        status = int(data.split()[1])
    except OSError as error:
        sock.close()
        return -(error.errno or 1), None
    if status == 101:
        return status, sock
    sock.close()
    return status, None


def read_text_frame(sock: socket.socket) -> dict:
    """Read one unmasked server text frame (skipping pings) and parse its JSON."""
    def exactly(count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = sock.recv(count - len(data))
            if not chunk:
                raise ConnectionResetError("server closed")
            data += chunk
        return data

    while True:
        first, second = exactly(2)
        length = second & 0x7F
        if length == 126:
            length = int.from_bytes(exactly(2), "big")
        elif length == 127:
            length = int.from_bytes(exactly(8), "big")
        payload = exactly(length)
        if first & 0x0F == 0x1:
            return json.loads(payload)


def good_user(port: int, server_http: str, api_key: str, result: dict) -> None:
    """Connect from 127.0.0.2, init, and receive one event published meanwhile."""
    email = f"good-{uuid.uuid4().hex[:8]}@example.com"
    started = time.monotonic()
    status, sock = handshake(port, "127.0.0.2")
    result["handshake"] = status
    if sock is None:
        return
    payload = json.dumps({"type": "init", "payload": {"token": emulator_token(email)}}).encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(bytes([0x81, 0x80 | 126]) + len(payload).to_bytes(2, "big") + mask + masked)
    result["connected"] = read_text_frame(sock)["type"]
    call_id = f"flood-{uuid.uuid4().hex[:8]}"
    answer = gevent.get_hub().threadpool.spawn(
        requests.post, f"{server_http}/api/v6/call/events", timeout=30,
        json={"callId": call_id, "userId": email, "status": "ringing"},
        headers={"X-API-Key": api_key}).get()
    result["publish"] = answer.status_code
    result["received"] = read_text_frame(sock).get("callId") == call_id
    result["seconds"] = round(time.monotonic() - started, 3)
    sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=22000)
    parser.add_argument("--addresses", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--init-timeout", type=float, default=None,
                        help="WS_INIT_TIMEOUT for the server (default: its own, 10 s); a long "
                             "one stands for a flood faster than this machine can open it")
    args = parser.parse_args()
    raise_fd_limit(min(args.sockets, 19000) + 500)

    overrides = {"LOG_LEVEL": "WARNING"}
    if args.init_timeout is not None:
        overrides["WS_INIT_TIMEOUT"] = str(args.init_timeout)
    server = start_bench_server(overrides)
    held: list[socket.socket] = []
    try:
        pid = worker_pid(server)
        rss_before = sample_process(pid).rss_bytes
        statuses: Counter[int] = Counter()
        sources = [f"127.0.1.{n + 1}" for n in range(args.addresses)]
        pool = Pool(args.concurrency)
        good: dict = {}
        started = time.monotonic()

        def one(number: int) -> None:
            status, sock = handshake(server.port, sources[number % len(sources)])
            statuses[status] += 1
            if sock is not None:
                held.append(sock)

        for number in range(args.sockets):
            pool.spawn(one, number)
            if number == args.sockets // 2:
                good_greenlet = gevent.spawn(
                    good_user, server.port, server.http, server.api_key, good)
        pool.join()
        flood_seconds = time.monotonic() - started
        good_greenlet.get(timeout=60)
        for sock in held[-200:]:
            sock.close()  # room for this process to list the worker's descriptors
        del held[-200:]
        gevent.sleep(0.5)
        fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
        rss = sample_process(pid).rss_bytes
        log = server.log()
        print(json.dumps({
            "sockets": args.sockets,
            "addresses": args.addresses,
            "init_timeout": args.init_timeout or "default (10 s)",
            "handshakes": {str(k): v for k, v in sorted(statuses.items())},
            "held_by_client": len(held),
            "flood_seconds": round(flood_seconds, 1),
            "worker_fds_after_200_released": fds,
            "worker_fd_limit": int(Path(f"/proc/{pid}/limits").read_text()
                                   .split("Max open files")[1].split()[0]),
            "worker_rss_mib": [round(rss_before / 2**20, 1), round(rss / 2**20, 1)],
            "good_user": good,
            "tracebacks_in_log": log.count("Traceback"),
            "emfile_in_log": log.count("Too many open files"),
            "load": os.getloadavg(),
        }, indent=2))
    finally:
        for sock in held:
            sock.close()
        server.stop()


if __name__ == "__main__":
    main()

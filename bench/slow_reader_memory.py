"""Worker memory while a user floods their own socket that never reads (issue 11, item 1).

A user opens one socket with a small receive buffer, sends init and never
reads again; then it POSTs test messages to itself (``/websocket/test``) as
fast as a few threads can, for a fixed time. The worker's RSS is sampled all
along. Before the send queue was bounded in bytes, 6 MB messages took the
worker from 172 MB to 1.26 GB in 9 s; now a message over the test limit is
refused (413) and smaller ones fill one bounded queue, then the socket is
closed with 4008.

    .venv/bin/python -m bench.slow_reader_memory --size 6000000 --seconds 9
    .venv/bin/python -m bench.slow_reader_memory --size 60000 --seconds 9
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import threading
import time
import uuid
from collections import Counter

import requests

from bench.harness import sample_process, start_bench_server, worker_pid
from tests.support.tokens import emulator_token


def silent_socket(port: int, email: str) -> socket.socket:
    """Open a WebSocket, send init, and never read again (receive buffer 4 KiB)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        .encode()
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(1)
    assert b" 101 " in answer.split(b"\r\n", 1)[0], answer
    payload = json.dumps({"type": "init", "payload": {"token": emulator_token(email)}}).encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(bytes([0x81, 0x80 | 126]) + len(payload).to_bytes(2, "big") + mask + masked)
    return sock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=6_000_000, help="test message characters")
    parser.add_argument("--seconds", type=float, default=9.0)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()

    server = start_bench_server({"LOG_LEVEL": "WARNING"})
    try:
        pid = worker_pid(server)
        email = f"flooder-{uuid.uuid4().hex[:8]}@example.com"
        headers = {"Authorization": f"Bearer {emulator_token(email)}"}
        sock = silent_socket(server.port, email)
        time.sleep(0.5)
        body = json.dumps({"targetUserId": email, "message": "x" * args.size})
        start_rss = sample_process(pid).rss_bytes
        peak = start_rss
        statuses: Counter[str] = Counter()
        stop = time.monotonic() + args.seconds

        def flood() -> None:
            session = requests.Session()
            while time.monotonic() < stop:
                try:
                    answer = session.post(f"{server.http}/api/v6/call/websocket/test",
                                          data=body, headers={**headers,
                                          "Content-Type": "application/json"}, timeout=30)
                    key = f"{answer.status_code} delivered={answer.json().get('delivered')}"
                except requests.RequestException as error:
                    key = type(error).__name__
                statuses[key] += 1

        threads = [threading.Thread(target=flood, daemon=True) for _ in range(args.threads)]
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            peak = max(peak, sample_process(pid).rss_bytes)
            time.sleep(0.1)
        time.sleep(1)
        end_rss = sample_process(pid).rss_bytes
        alive = requests.get(f"{server.http}/healthz", timeout=5).status_code
        print(json.dumps({
            "message_chars": args.size,
            "seconds": args.seconds,
            "answers": dict(statuses),
            "rss_start_mib": round(start_rss / 2**20, 1),
            "rss_peak_mib": round(peak / 2**20, 1),
            "rss_end_mib": round(end_rss / 2**20, 1),
            "healthz_after": alive,
            "load": os.getloadavg(),
        }, indent=2))
        sock.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()

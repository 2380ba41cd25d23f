"""Measure Socket.IO long-polling against several gunicorn workers (docs/protocol.md §9).

Long-polling is a series of HTTP requests that must all reach the worker
holding the session; gunicorn hands each new TCP connection to whichever
worker accepts it first. This starts the service with ``--workers`` workers
on Redis, connects ``--clients`` python-socketio clients with
``transports=['polling']`` at once, publishes one event per client and
reports how many connected, how many got their event, and how many Engine.IO
requests were refused as "Invalid session".

    python -m bench.socketio_polling_workers --workers 2 --clients 40
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import socketio

from tests.support.redis_server import RedisServer
from tests.support.server import start_server
from tests.support.tokens import emulator_token


def run(workers: int, clients: int, hold: float) -> dict:
    with tempfile.TemporaryDirectory() as workdir:
        store = RedisServer(Path(workdir)).start()
        live = start_server({"REDIS_URL": store.url, "WEB_CONCURRENCY": str(workers)},
                            name=f"bench-polling-{workers}w")
        try:
            deadline = time.monotonic() + 30
            while len(set(re.findall(r"\[(\d+)\] webapp\.config: callwire settings",
                                     live.log()))) < workers:
                assert time.monotonic() < deadline, "workers did not boot"
                time.sleep(0.1)
            results: dict[str, dict] = {}

            def one(index: int) -> None:
                user = f"poll-{index}-{uuid.uuid4().hex[:6]}@example.com"
                got: list[str] = []
                disconnects: list[str] = []
                sio = socketio.Client(reconnection=False)
                sio.on("call.status.changed", lambda m: got.append(m["id"]))
                sio.on("disconnect", lambda reason=None: disconnects.append(str(reason)))
                record = {"user": user, "connected": False, "got": got,
                          "disconnects": disconnects, "error": None}
                results[user] = record
                try:
                    sio.connect(live.http, transports=["polling"], wait_timeout=10,
                                auth={"token": emulator_token(user)})
                    record["connected"] = True
                    time.sleep(hold)
                except Exception as error:  # noqa: BLE001 - counted, not raised
                    record["error"] = f"{type(error).__name__}: {error}"
                finally:
                    sio.disconnect()

            threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
            for thread in threads:
                thread.start()
            time.sleep(min(hold / 2, 3))
            published = 0
            for user, record in list(results.items()):
                if record["connected"]:
                    answer = live.publish({"callId": f"c-{user}", "userId": user,
                                           "status": "ringing"})
                    published += answer.status_code == 200
            for thread in threads:
                thread.join(hold + 30)
            log = live.log()
        finally:
            live.stop()
            store.stop()
    connected = sum(r["connected"] for r in results.values())
    delivered = sum(bool(r["got"]) for r in results.values())
    dropped = sum(bool(r["disconnects"]) and r["connected"] and not r["got"]
                  for r in results.values())
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return {
        "workers": workers, "clients": clients, "hold_seconds": hold,
        "connected": connected, "published": published, "got_their_event": delivered,
        "connected_then_lost": dropped,
        "invalid_session_refusals": log.count("Invalid session"),
        "errors": sorted({r["error"] for r in results.values() if r["error"]}),
        "uptime": load,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--hold", type=float, default=6.0)
    args = parser.parse_args()
    print(json.dumps(run(args.workers, args.clients, args.hold), indent=2))


if __name__ == "__main__":
    main()

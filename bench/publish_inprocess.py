"""The publish endpoint's own cost, in process: the WSGI app called in a loop, no gunicorn.

py-spy's stacks of a gevent worker are partly garbled (samples cut short or
given to the wrong caller), so this measures the app alone: prepared
``POST /api/v6/call/events`` requests go straight to the WSGI callable,
timed with the process's CPU clock or profiled with cProfile. With
``--sockets`` every user holds one initialised connection on a socketpair
(drained now and then), so delivery and frame writes are counted too.
``--app bare`` runs the floor (``bench/peers/bare.py``) instead; it has no
hub, so ``--sockets`` applies to Callwire only. Run it on a quiet box; it
uses one core.

    python -m bench.publish_inprocess                    # µs per event, 1 and 100 per POST
    python -m bench.publish_inprocess --sockets
    python -m bench.publish_inprocess --profile tottime --batch 100 --sockets
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import cProfile  # noqa: E402
import gc  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import pstats  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from typing import Any  # noqa: E402

API_KEY = "test-events-key"
USERS = 1000
STATUSES = ("initiated", "ringing", "in-progress", "ended")


def items() -> Iterator[dict[str, Any]]:
    """Events for USERS users, four per call, in a valid order."""
    n = 0
    while True:
        yield {"callId": f"call-{n // 4}", "userId": f"user-{(n // 4) % USERS:04d}@bench.local",
               "status": STATUSES[n % 4], "data": {"n": n}}
        n += 1


def environ(body: Any) -> dict[str, Any]:
    raw = json.dumps(body).encode()
    return {
        "REQUEST_METHOD": "POST", "SCRIPT_NAME": "", "PATH_INFO": "/api/v6/call/events",
        "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": "127.0.0.1:8000",
        "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(raw)),
        "HTTP_X_API_KEY": API_KEY, "REMOTE_ADDR": "127.0.0.1", "wsgi.input": io.BytesIO(raw),
        "wsgi.input_terminated": True, "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr,
        "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }


def load_app(name: str) -> Callable[..., Any]:
    os.environ.setdefault("EVENTS_API_KEY", API_KEY)
    if name == "bare":
        from bench.peers.bare import app
        return app
    os.environ.setdefault("FIREBASE_AUTH_EMULATOR_HOST", "127.0.0.1:9099")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    from webapp import create_app
    return create_app()


def attach_sockets(app: Any) -> Callable[[], None]:
    """Give every user one initialised connection on a socketpair; return a drain function."""
    import gevent.event
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Request

    from webapp.connection import SafeSocket, WebSocketConnection

    node = app.extensions["callwire"]
    node.ensure_started()
    readers = []
    for user in range(USERS):
        ours, theirs = socket.socketpair()
        theirs.settimeout(0.0)
        readers.append((ours, theirs))
        server, client = WSConnection(ConnectionType.SERVER), WSConnection(ConnectionType.CLIENT)
        server.receive_data(client.send(Request(host="x", target="/")))
        list(server.events())
        server.send(AcceptConnection())
        ws = types.SimpleNamespace(sock=SafeSocket(ours, 5.0), ws=server, connected=True,
                                   ping_interval=None, input_buffer=[],
                                   event=gevent.event.Event())
        connection = WebSocketConnection(ws, send_queue=100, write_timeout=5.0)
        node.hub.add(connection, f"user-{user:04d}@bench.local")

    def drain() -> None:
        for _ours, theirs in readers:
            try:
                while theirs.recv(1 << 20):
                    pass
            except OSError:
                pass

    return drain


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.publish_inprocess",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--app", choices=("callwire", "bare"), default="callwire")
    parser.add_argument("--sockets", action="store_true", help="one receiver per user")
    parser.add_argument("--rounds", type=int, default=9, help="timed rounds (min and median)")
    parser.add_argument("--profile", metavar="SORT",
                        help="cProfile one round instead (tottime, cumulative, ...)")
    parser.add_argument("--batch", type=int, default=0, help="with --profile: events per POST")
    args = parser.parse_args(argv)
    app = load_app(args.app)
    drain = attach_sockets(app) if args.sockets else (lambda: None)
    gc.collect()
    gc.freeze()  # as gunicorn.conf.py does after start-up
    stream = items()

    def answered(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        if not status.startswith("200"):
            raise RuntimeError(f"publish answered {status}")

    def run(posts: int, batch: int) -> float:
        """Return CPU µs per event for ``posts`` POSTs of ``batch`` events (0: one object)."""
        bodies = [next(stream) if batch == 0 else [next(stream) for _ in range(batch)]
                  for _ in range(posts)]
        requests = [environ(body) for body in bodies]
        started = time.process_time()
        for number, request in enumerate(requests, 1):
            b"".join(app(request, answered))
            if number % 200 == 0:
                drain()
        return (time.process_time() - started) / (posts * max(batch, 1)) * 1e6

    if args.profile:
        run(200, args.batch)
        profiler = cProfile.Profile()
        profiler.enable()
        run(3000 if args.batch == 0 else 60, args.batch)
        profiler.disable()
        pstats.Stats(profiler).sort_stats(args.profile).print_stats(40)
        return
    run(1000, 0)
    run(20, 100)
    for label, posts, batch in (("one event per POST", 3000, 0), ("100 per POST", 30, 100)):
        figures = sorted(run(posts, batch) for _ in range(args.rounds))
        print(f"{args.app} {label}: CPU µs per event min {figures[0]:.1f}, "
              f"median {statistics.median(figures):.1f}")


if __name__ == "__main__":
    main()

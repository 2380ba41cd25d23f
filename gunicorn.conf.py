"""gunicorn settings and hooks shared by the Procfile, the tests and the benchmarks.

The Procfile passes the worker class, bind address and counts on its command
line; this file adds what a command line cannot: refusing an impossible
configuration, gc tuning after fork, and closing sockets with 1012 on SIGTERM.
"""

import gc
import os
import signal

# A WebSocket holds a worker connection for its whole life: gunicorn's default
# of 1,000 would make the 1,001st socket hang.
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", "20000"))
# Heroku sends SIGKILL 30 s after SIGTERM; sockets are closed with 1012 first.
graceful_timeout = 20
timeout = 30
keepalive = 5
control_socket_disable = True


def on_starting(server):
    """Refuse to start several workers that cannot see each other's sockets."""
    if server.cfg.workers > 1 and not os.environ.get("REDIS_URL"):
        raise SystemExit(
            f"callwire: {server.cfg.workers} workers need REDIS_URL: the in-process broker "
            "cannot reach sockets held by other workers. Set REDIS_URL or use one worker."
        )


def post_worker_init(worker):
    """Start the broker, freeze start-up objects out of the collector, hook SIGTERM."""
    app = worker.wsgi
    node = app.extensions["callwire"]
    node.ensure_started()
    # With 10,000 sockets a full collection pauses the worker for ~0.5 s
    # (STACK-NOTES): keep long-lived start-up objects out of it and collect
    # the young generation less often.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)

    import gevent

    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        gevent.spawn(node.shutdown)
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)

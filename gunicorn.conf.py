"""gunicorn settings and hooks shared by the Procfile, the tests and the benchmarks.

The Procfile passes the worker class, bind address and counts on its command
line; this file adds what a command line cannot: refusing an impossible
configuration, gc tuning after fork, and closing sockets with 1012 on SIGTERM.
"""

import gc
import importlib.util
import os
import signal
import sys

# A WebSocket holds a worker connection for its whole life: gunicorn's default
# of 1,000 would make the 1,001st socket hang.
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", "20000"))
# Heroku sends SIGKILL 30 s after SIGTERM; sockets are closed with 1012 first.
graceful_timeout = 20
timeout = 30
# An idle HTTP keep-alive connection holds a stopping worker this long: keep it short.
keepalive = 2
control_socket_disable = True


def _load_by_path(name, relative):
    """Load one webapp module on its own: importing the webapp package would pull in
    requests and firebase-admin before the worker's gevent patching."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), *relative.split("/"))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# LOG_FORMAT=json: gunicorn's own lines are JSON objects too (webapp/logs.py).
if os.environ.get("LOG_FORMAT", "").strip().lower() == "json":
    _logs = _load_by_path("callwire_startup_logs", "webapp/logs.py")
    _logs.redact.add(
        os.environ.get(name)
        for name in ("EVENTS_API_KEY", "VAPI_WEBHOOK_SECRET", "TWILIO_AUTH_TOKEN", "REDIS_URL")
    )
    logconfig_dict = {
        "root": {"level": "INFO", "handlers": []},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["error_console"], "propagate": False},
            # Heroku's router logs every request already; the app logs what matters.
            "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": False},
        },
        "formatters": {"generic": {"()": _logs.JsonLines}},
    }


def on_starting(server):
    """Refuse, in the master and with one sentence, a configuration that cannot work."""
    if server.cfg.workers > 1 and not os.environ.get("REDIS_URL"):
        raise SystemExit(
            f"callwire: {server.cfg.workers} workers need REDIS_URL: the in-process broker "
            "cannot reach sockets held by other workers. Set REDIS_URL or use one worker."
        )
    # Validate every setting here too, so a bad one stops the master with its
    # sentence instead of a traceback from each worker that fails to boot.
    config = _load_by_path("callwire_startup_config", "webapp/config.py")
    try:
        config.load_settings()
    except config.ConfigError as problem:
        raise SystemExit(f"callwire: {problem}") from None


def post_worker_init(worker):
    """Start the broker, keep long-lived objects out of the collector, hook SIGTERM."""
    app = worker.wsgi
    node = app.extensions["callwire"]
    node.ensure_started()

    import gevent

    # GC_TUNING=off keeps CPython's collector as it is (bench/ measures both).
    if os.environ.get("GC_TUNING", "on").strip().lower() != "off":
        gc.collect()
        gc.freeze()
        gevent.spawn(freeze_survivors)

    # By default every greenlet records the stack that spawned it: ~2.4 KiB per
    # idle connection and a stack capture per delivery (bench/README.md).
    gevent.config.track_greenlet_tree = False

    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        gevent.spawn(node.shutdown)
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)


#: How often the worker moves what survived the young collections out of the collector's sight.
GC_FREEZE_SECONDS = 1.0


def freeze_survivors():
    """Every second, collect the young generations, then freeze whatever survived.

    A full collection walks every tracked object: with 10,000 connections
    (about 1.1 million objects) that pauses every socket for 0.4-0.9 s, and
    connection churn triggers one every few minutes; a freeze at start-up
    and higher thresholds only postpone it (bench/README.md). Frozen, the
    objects of open connections are never walked again, so a pause only
    walks what the last second created. Nothing leaks: a closed connection's
    objects die by reference counting, except a cycle flask-sock creates as
    the socket closes, which is young and collected before the next freeze.
    """
    import gevent

    while True:
        gevent.sleep(GC_FREEZE_SECONDS)
        gc.collect(1)
        gc.freeze()

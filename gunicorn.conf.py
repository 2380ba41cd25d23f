"""gunicorn settings and hooks shared by the Procfile, the tests and the benchmarks.

The Procfile passes the worker class, bind address and counts on its command
line; this file adds what a command line cannot: refusing an impossible
configuration, gc tuning after fork, and closing sockets with 1012 on SIGTERM.
"""

import gc
import importlib.util
import logging
import os
import signal
import socket
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
# Reconnect storms queue thousands of connections while the worker admits them
# at the pace it can initialise them (admit_at_the_pace_of_inits); the kernel
# caps this at net.core.somaxconn (4096 by default).
backlog = 4096


def on_starting(server):
    """Refuse, in the master and with one sentence, a configuration that cannot work."""
    if server.cfg.workers > 1 and not os.environ.get("REDIS_URL"):
        raise SystemExit(
            f"callwire: {server.cfg.workers} workers need REDIS_URL: the in-process broker "
            "cannot reach sockets held by other workers. Set REDIS_URL or use one worker."
        )
    # Validate every setting here too, so a bad one stops the master with its
    # sentence instead of a traceback from each worker that fails to boot.
    # webapp/config.py is loaded on its own: importing the webapp package would
    # pull in requests and firebase-admin before the worker's gevent patching.
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "webapp", "config.py")
    spec = importlib.util.spec_from_file_location("callwire_startup_config", path)
    config = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = config  # dataclasses look their module up there
    spec.loader.exec_module(config)
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

    listeners = track_listeners()
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        gevent.spawn(stop_accepting_then_close, listeners, node)
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)
    gevent.spawn(admit_at_the_pace_of_inits, listeners, node)


#: Connections accepted but not yet initialised (plus HTTP requests in flight)
#: at which the worker stops accepting until it has caught up (issue 12).
ADMISSION_HIGH = 256
ADMISSION_LOW = 128
ADMISSION_CHECK_SECONDS = 0.01


def admit_at_the_pace_of_inits(listeners, node):
    """Stop accepting while too many accepted sockets still wait for their init to be served.

    gevent's server accepts up to 100 connections on every turn of the loop,
    so in a reconnect storm new sockets (handshakes) crowd out the inits of
    sockets already accepted: a restarted worker accepted 900-1,100
    connections a second but served 300-370 inits, clients waited 14-25 s
    for ``connected`` and gave up (issue 12). Pausing the accept while
    ``ADMISSION_HIGH`` are in progress lets the kernel's listen backlog hold
    the rest (cheaply) and every accepted socket is served promptly.
    """
    import gevent

    paused = False
    while not node.shutting_down:
        gevent.sleep(ADMISSION_CHECK_SECONDS)
        pools = [server.pool for server in listeners if server.pool is not None]
        in_progress = sum(len(pool) for pool in pools) - node.hub.count()
        if not paused and in_progress >= ADMISSION_HIGH:
            paused = True
            for server in listeners:
                server.stop_accepting()
        elif paused and in_progress <= ADMISSION_LOW:
            paused = False
            for server in listeners:
                if server.started:  # not after SIGTERM
                    server.start_accepting()


def track_listeners():
    """Return the list the gevent worker's accepting servers will be recorded in.

    gunicorn's gevent worker builds its ``StreamServer``s inside ``run()``
    (after this hook) and stops them only on its next one-second tick after
    SIGTERM; meanwhile the kernel keeps queueing reconnects for a worker that
    is going away, and resets them when it exits (issue 12). Recording the
    servers lets the SIGTERM handler stop them at once.
    """
    from gunicorn.workers import ggevent

    listeners = []
    base = ggevent.StreamServer

    class TrackedStreamServer(base):
        def start(self):
            super().start()
            listeners.append(self)

    ggevent.StreamServer = TrackedStreamServer
    return listeners


def stop_accepting_then_close(listeners, node):
    """On SIGTERM: stop listening at once, then ask every socket to close with 1012.

    The listening socket is shut down, not closed: the kernel stops
    listening (a reconnect is refused and retried against the next server,
    which can bind the port at once thanks to SO_REUSEADDR), while the
    socket object stays valid for the connections accepted just before,
    whose handlers still ask it for its name (closing it here made each of
    them log ``OSError: [Errno 9] Bad file descriptor``). The master closes
    its own copy of the listener on SIGTERM (``Arbiter.stop``); gunicorn's
    own tick closes the worker's a moment later.
    """
    for server in listeners:
        if not server.started:
            continue  # stopped already (SIGTERM comes from Heroku and from the master)
        try:
            # What BaseServer.close() does, minus closing the socket: no restart
            # of the accept watcher from then on (gevent has no public call for it).
            server._stop_event.set()
            server.stop_accepting()
            server.socket.shutdown(socket.SHUT_RD)
        except Exception:  # noqa: BLE001 - every listener must be stopped
            logging.getLogger("callwire.shutdown").exception("stopping %s failed", server)
    node.shutdown()


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

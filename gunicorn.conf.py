"""gunicorn settings and hooks shared by the Procfile, the tests and the benchmarks.

The Procfile passes the worker class, bind address and counts on its command
line; this file adds what a command line cannot: refusing an impossible
configuration, gc tuning after fork, and closing sockets with 1012 on SIGTERM.
"""

import contextlib
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
        gevent.spawn(freeze_survivors, node)

    # By default every greenlet records the stack that spawned it: ~2.4 KiB per
    # idle connection and a stack capture per delivery (bench/README.md).
    gevent.config.track_greenlet_tree = False

    listeners = track_listeners()
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        # Stop listening here and now: a greenlet would wait for a busy loop's turn.
        stop_listening(listeners)
        # The process ends within graceful_timeout: collecting what 10,000 closing
        # sockets leave behind only takes CPU from the server booting next to it.
        gc.disable()
        gevent.spawn(node.shutdown)
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)
    gevent.spawn(admit_at_the_pace_of_inits, listeners, node)


#: Admission in a reconnect storm (admit_at_the_pace_of_inits): accepting pauses
#: while at least ADMISSION_HIGH accepted sockets wait for their init to be served
#: AND the event loop runs late, and resumes when either has eased, or after
#: ADMISSION_PAUSE_MAX seconds at most.
ADMISSION_HIGH = 256
ADMISSION_LOW = 128
ADMISSION_CHECK_SECONDS = 0.01
#: While fewer than ADMISSION_QUIET sockets wait for their init, the check runs
#: this rarely: an idle worker then wakes 10 times a second, not 100.
ADMISSION_QUIET = 32
ADMISSION_QUIET_CHECK_SECONDS = 0.1
ADMISSION_LAG_HIGH = 0.02
ADMISSION_LAG_LOW = 0.005
ADMISSION_PAUSE_MAX = 0.5


def admit_at_the_pace_of_inits(listeners, node):
    """Pause accepting while the worker is busy serving the inits of sockets it accepted.

    gevent's server accepts up to 100 connections on every turn of the loop,
    so in a reconnect storm new sockets (handshakes) crowd out the inits of
    sockets already accepted: a restarted worker accepted 900-1,100
    connections a second but served 300-370 inits, clients waited 14-25 s
    for ``connected`` and gave up (issue 12). While many accepted sockets
    wait for their init and the loop runs late (it has more ready work than
    it can do), the kernel's listen backlog holds new connections instead,
    cheaply, and the accepted ones are served first. Sockets that simply
    have not sent their init yet cost no loop time, so they never pause
    accepting (no one can lock others out by opening idle sockets), and a
    pause never lasts more than ``ADMISSION_PAUSE_MAX``.
    """
    import time

    import gevent

    paused_at = None
    period = ADMISSION_CHECK_SECONDS
    while not node.shutting_down:
        before = time.monotonic()
        gevent.sleep(period)
        now = time.monotonic()
        lag = now - before - period
        pools = [server.pool for server in listeners if server.pool is not None]
        waiting = sum(len(pool) for pool in pools) - node.hub.count()
        if paused_at is None:
            if waiting >= ADMISSION_HIGH and lag >= ADMISSION_LAG_HIGH:
                paused_at = now
                for server in listeners:
                    server.stop_accepting()
        elif (waiting <= ADMISSION_LOW or lag <= ADMISSION_LAG_LOW
              or now - paused_at >= ADMISSION_PAUSE_MAX):
            paused_at = None
            for server in listeners:
                if server.started:  # never after SIGTERM
                    server.start_accepting()
        quiet = paused_at is None and waiting < ADMISSION_QUIET
        period = ADMISSION_QUIET_CHECK_SECONDS if quiet else ADMISSION_CHECK_SECONDS


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

        def close(self):
            """Stop listening for good, but leave the socket object to the process's exit.

            The listening socket is shut down, not closed: the kernel stops
            listening at once (a reconnect is refused and tried against the
            next server, which can bind the port thanks to SO_REUSEADDR),
            while the handlers of connections accepted just before, which a
            busy worker may start a moment later, can still ask it for its
            name; closing it made each of them log ``OSError: [Errno 9] Bad
            file descriptor``. Both this hook and gunicorn's own tick call it.
            """
            self._stop_event.set()  # as BaseServer.close(): accepting never restarts
            self.stop_accepting()
            with contextlib.suppress(OSError):
                self.socket.shutdown(socket.SHUT_RD)

        def do_read(self):
            """Accept as gevent does, but nothing once closed.

            SIGTERM's handler runs between two bytecodes, possibly inside
            gevent's accept loop (up to 100 accepts a turn), whose next
            ``accept`` on the shut-down listener then fails with EINVAL and
            logs a traceback: after :meth:`close` there is simply nothing
            more to accept.
            """
            try:
                return super().do_read()
            except OSError:
                if self._stop_event.is_set():
                    return None
                raise

    ggevent.StreamServer = TrackedStreamServer
    return listeners


def stop_listening(listeners):
    """On SIGTERM: stop listening at once (``TrackedStreamServer.close``).

    The master closes its own copy of the listener on SIGTERM
    (``Arbiter.stop``), so the port is free for the next server.
    """
    for server in listeners:
        try:
            server.close()
        except Exception:  # noqa: BLE001 - every listener must be stopped
            logging.getLogger("callwire.shutdown").exception("stopping %s failed", server)


#: How often the worker moves what survived the young collections out of the collector's sight.
GC_FREEZE_SECONDS = 1.0


def freeze_survivors(node):
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

    while not node.shutting_down:  # a stopping worker collects nothing (on_sigterm)
        gevent.sleep(GC_FREEZE_SECONDS)
        gc.collect(1)
        gc.freeze()

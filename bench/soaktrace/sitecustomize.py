"""Bench-only instrumentation: the soak's view from inside the server's worker.

``bench.soak`` puts this folder on the server's ``PYTHONPATH`` and names a
log in ``CALLWIRE_BENCH_SOAK_LOG``. In each forked worker an OS thread
(started before gevent patches ``threading``, so it is a real thread that
the worker's event loop does not schedule) writes one line every
``CALLWIRE_BENCH_SOAK_EVERY`` seconds:
``pid monotonic rss_bytes open_fds greenlets gc_objects loop_lag_max``; the lag is the
worst delay over the interval between asking the worker's loop, from a second OS thread
every 0.1 s, to run a callback and its running.

Greenlets are counted by walking every object the collector tracks, frozen
ones included (``gc.unfreeze`` first, then ``gc.freeze`` again, as the
worker does every second anyway); that walk pauses the worker for about
0.1 s at 10,000 sockets, which is why it runs only every half minute.
"""

import gc
import os
import time
from time import sleep as _real_sleep  # bound before gevent patches time.sleep

_LOG = os.environ.get("CALLWIRE_BENCH_SOAK_LOG")
_EVERY = float(os.environ.get("CALLWIRE_BENCH_SOAK_EVERY", "30"))
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _sample() -> str:
    import greenlet

    with open("/proc/self/statm") as statm:
        rss = int(statm.read().split()[1]) * _PAGE
    fds = len(os.listdir("/proc/self/fd"))
    gc.unfreeze()
    try:
        objects = gc.get_objects()
        greenlets = sum(1 for o in objects if isinstance(o, greenlet.greenlet))
        total = len(objects)
        del objects
    finally:
        gc.freeze()
    return f"{os.getpid()} {time.monotonic():.3f} {rss} {fds} {greenlets} {total}\n"


#: Worst delay, over the last interval, between asking the worker's event loop to run a
#: callback (``run_callback_threadsafe``, every 0.1 s) and its running: the loop's lag
#: as a woken greenlet sees it.
_lag = {"max": 0.0, "asked": None}


def _main_loop(main: int):
    """The worker's gevent loop (the hub of OS thread ``main``), once it exists; else None."""
    hub_module = __import__("sys").modules.get("gevent.hub")
    if hub_module is None:
        return None
    for candidate in gc.get_objects():
        if isinstance(candidate, hub_module.Hub) and candidate.thread_ident == main:
            return candidate.loop
    return None


def _lag_thread(main: int) -> None:
    loop = None
    while loop is None:
        _real_sleep(1.0)
        loop = _main_loop(main)

    def ran(asked: float) -> None:
        _lag["max"] = max(_lag["max"], time.monotonic() - asked)
        _lag["asked"] = None

    while True:
        _real_sleep(0.1)
        asked = _lag["asked"]
        if asked is not None:  # not run yet: it is at least this late
            _lag["max"] = max(_lag["max"], time.monotonic() - asked)
            continue
        now = time.monotonic()
        _lag["asked"] = now
        loop.run_callback_threadsafe(ran, now)


def _watch() -> None:
    while True:
        _real_sleep(_EVERY)
        try:
            line = _sample()
        except Exception as error:  # noqa: BLE001 - a probe must not kill the worker
            line = f"{os.getpid()} error {error!r}\n"
        lag, _lag["max"] = _lag["max"], 0.0
        with open(_LOG, "a") as log:
            log.write(line.rstrip("\n") + f" {lag:.3f}\n")


def _start_in_child() -> None:
    import _thread

    _thread.start_new_thread(_watch, ())
    # The OS thread's own id, taken before gevent patches ``threading``.
    _thread.start_new_thread(_lag_thread, (_thread.get_ident(),))


if _LOG:
    os.register_at_fork(after_in_child=_start_in_child)

"""Bench-only instrumentation: the soak's view from inside the server's worker.

``bench.soak`` puts this folder on the server's ``PYTHONPATH`` and names a
log in ``CALLWIRE_BENCH_SOAK_LOG``. In each forked worker an OS thread
(started before gevent patches ``threading``, so it is a real thread that
the worker's event loop does not schedule) writes one line every
``CALLWIRE_BENCH_SOAK_EVERY`` seconds:
``pid monotonic rss_bytes open_fds greenlets gc_objects``.

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


def _watch() -> None:
    while True:
        _real_sleep(_EVERY)
        try:
            line = _sample()
        except Exception as error:  # noqa: BLE001 - a probe must not kill the worker
            line = f"{os.getpid()} error {error!r}\n"
        with open(_LOG, "a") as log:
            log.write(line)


def _start_in_child() -> None:
    import _thread

    _thread.start_new_thread(_watch, ())


if _LOG:
    os.register_at_fork(after_in_child=_start_in_child)

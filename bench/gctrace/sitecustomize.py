"""Bench-only instrumentation: log the server's garbage-collector pauses to a file.

``bench.idle_connections`` puts this folder on the server's ``PYTHONPATH``
and names a log in ``CALLWIRE_BENCH_GC_LOG``; Python imports
``sitecustomize`` at start-up, so the gunicorn master installs the callback
and its forked worker inherits it. The server's command and code stay
exactly those of the Procfile. Every collection of generation 1 or 2, and
any collection that takes 2 ms or more, is one line:
``pid start(monotonic) generation seconds collected``.
"""

import gc
import os
import time

_LOG = os.environ.get("CALLWIRE_BENCH_GC_LOG")
_started: list[float] = []


def _record(phase: str, info: dict) -> None:
    if phase == "start":
        _started[:] = [time.monotonic()]
        return
    if not _started:
        return
    began = _started.pop()
    took = time.monotonic() - began
    if info["generation"] > 0 or took >= 0.002:
        with open(_LOG, "a") as log:
            log.write(f"{os.getpid()} {began:.6f} {info['generation']} {took:.6f} "
                      f"{info['collected']}\n")


if _LOG:
    gc.callbacks.append(_record)

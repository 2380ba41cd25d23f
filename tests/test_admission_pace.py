"""The admission check of gunicorn.conf.py (issue 12) wakes rarely on an idle worker.

It looks every 10 ms while a storm fills the worker, but an idle worker with
10,000 held sockets pays for every wake-up (issue 10's background CPU), so it
looks ten times less often while almost nothing waits for its init.
"""

from __future__ import annotations

import runpy
from pathlib import Path
from types import SimpleNamespace

import gevent
import pytest

CONF = runpy.run_path(str(Path(__file__).resolve().parents[1] / "gunicorn.conf.py"))


def sleeps_of_admission(
    monkeypatch: pytest.MonkeyPatch, waiting: int, turns: int = 5
) -> list[float]:
    """Run the admission loop for a few turns with ``waiting`` accepted sockets not yet
    initialised; return how long it slept each turn."""
    node = SimpleNamespace(shutting_down=False, hub=SimpleNamespace(count=lambda: 10_000))
    server = SimpleNamespace(pool=[None] * (10_000 + waiting), started=True,
                             stop_accepting=lambda: None, start_accepting=lambda: None)
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        node.shutting_down = len(slept) >= turns

    monkeypatch.setattr(gevent, "sleep", sleep)
    CONF["admit_at_the_pace_of_inits"]([server], node)
    return slept


def test_an_idle_worker_checks_admission_ten_times_a_second(monkeypatch):
    slept = sleeps_of_admission(monkeypatch, waiting=0)
    assert slept[1:] == [CONF["ADMISSION_QUIET_CHECK_SECONDS"]] * 4
    assert CONF["ADMISSION_QUIET_CHECK_SECONDS"] == 0.1


def test_a_worker_filling_up_checks_every_ten_milliseconds(monkeypatch):
    slept = sleeps_of_admission(monkeypatch, waiting=CONF["ADMISSION_QUIET"])
    assert slept == [CONF["ADMISSION_CHECK_SECONDS"]] * 5
    assert CONF["ADMISSION_CHECK_SECONDS"] == 0.01

"""The Procfile and gunicorn settings (README; the live tests run this very command)."""

from __future__ import annotations

import re
import runpy
import shlex

from tests.support.server import ROOT, procfile_command


def options() -> dict[str, str]:
    words = shlex.split(procfile_command())
    assert words[0] == "gunicorn"
    found: dict[str, str] = {"app": words[-1]}
    for flag, value in zip(words, words[1:], strict=False):
        if flag.startswith("-"):
            found[flag] = value
    return found


def test_web_line_runs_gunicorn_with_the_gevent_worker():
    text = (ROOT / "Procfile").read_text()
    assert re.search(r"^web: gunicorn ", text, re.MULTILINE)
    found = options()
    assert found.get("--worker-class", found.get("-k")) == "gevent"
    assert found["app"] == "wsgi:app"
    assert "geventwebsocket" not in text


def test_binds_every_interface_on_port_default_3000():
    assert options()["--bind"] == "0.0.0.0:${PORT:-3000}"


def test_workers_come_from_web_concurrency_default_1():
    assert options()["--workers"] == "${WEB_CONCURRENCY:-1}"


def test_worker_connections_are_raised_well_above_1000():
    assert int(options()["--worker-connections"]) >= 10_000
    settings = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert settings["worker_connections"] >= 10_000


def test_graceful_timeout_fits_in_herokus_30_seconds():
    assert int(options()["--graceful-timeout"]) < 30
    settings = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert settings["graceful_timeout"] < 30


def test_requirements_pin_the_stack_and_leave_out_gevent_websocket():
    text = (ROOT / "requirements.txt").read_text()
    lines = [line.split("#")[0].strip() for line in text.splitlines()]
    pins = [line for line in lines if line]
    assert pins and all("==" in line for line in pins), pins
    names = {re.split(r"[\[=]", line)[0].lower() for line in pins}
    assert {"flask", "flask-smorest", "flask-sock", "gevent", "gunicorn",
            "firebase-admin"} <= names
    assert "gevent-websocket" not in names

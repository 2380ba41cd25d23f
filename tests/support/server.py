"""Start the real service (the Procfile's gunicorn command) in a subprocess."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from tests.support.net import free_port, wait_for_port
from webapp.config import MAKE_RUN_DEFAULTS

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"

#: Settings that are secrets: no log may ever contain their values.
SECRET_SETTINGS = ("EVENTS_API_KEY", "VAPI_WEBHOOK_SECRET", "TWILIO_AUTH_TOKEN")
#: Every secret value and log file of the servers this session started
#: (checked at the end of the session by tests/conftest.py).
SECRETS_USED: set[str] = set()
LOGS_WRITTEN: list[Path] = []

#: Settings every test server gets unless a test overrides them.
BASE_ENV = {
    "FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9099",
    "EVENTS_API_KEY": "test-events-key",
    "LOG_LEVEL": "INFO",
}


def procfile_command() -> str:
    """Return the command of the Procfile's ``web:`` line."""
    text = (ROOT / "Procfile").read_text()
    match = re.search(r"^web:\s*(.+)$", text, re.MULTILINE)
    assert match, "Procfile has no web: line"
    return match.group(1).strip()


@dataclass
class LiveServer:
    """A running gunicorn master serving Callwire on 127.0.0.1."""

    port: int
    env: dict[str, str]
    process: subprocess.Popen
    log_path: Path
    api_key: str = field(default="test-events-key")

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def publish(
        self, body: object, *, key: str | None = None, timeout: float = 10
    ) -> requests.Response:
        """POST to /api/v6/call/events with the server's API key."""
        return requests.post(
            f"{self.http}/api/v6/call/events",
            json=body,
            headers={"X-API-Key": key if key is not None else self.api_key},
            timeout=timeout,
        )

    def signal(self, sig: int) -> None:
        os.killpg(self.process.pid, sig)

    def stop(self, timeout: float = 30) -> int | None:
        """Stop with SIGTERM (then SIGKILL) and return the exit code."""
        if self.process.poll() is None:
            try:
                self.signal(signal.SIGTERM)
                self.process.wait(timeout=timeout)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                with contextlib.suppress(ProcessLookupError):
                    self.signal(signal.SIGKILL)
                self.process.wait(timeout=10)
        return self.process.returncode


def start_server(
    overrides: dict[str, str] | None = None,
    *,
    port: int | None = None,
    name: str = "server",
    wait: bool = True,
) -> LiveServer:
    """Start the Procfile's command with ``overrides`` on a free loopback port."""
    port = port or free_port()
    inherited = ("REDIS_URL", "WEB_CONCURRENCY")
    env = {k: v for k, v in os.environ.items() if not k.startswith(inherited)}
    env.update(BASE_ENV)
    env.update(overrides or {})
    env["PORT"] = str(port)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    command = procfile_command().replace("0.0.0.0:", "127.0.0.1:")
    ARTIFACTS.mkdir(exist_ok=True)
    log_path = ARTIFACTS / f"{name}-{port}-{int(time.time() * 1000)}.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            ["sh", "-c", f"exec {command}"],
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    LOGS_WRITTEN.append(log_path)
    # make run's defaults are public (README) and the start-up log names them.
    SECRETS_USED.update(
        env[name] for name in SECRET_SETTINGS
        if env.get(name) and env[name] != MAKE_RUN_DEFAULTS.get(name)
    )
    server = LiveServer(port, env, process, log_path, env.get("EVENTS_API_KEY", ""))
    if wait:
        try:
            wait_for_port(port)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    raise RuntimeError(f"server exited early:\n{server.log()}")
                try:
                    if requests.get(f"{server.http}/healthz", timeout=1).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                time.sleep(0.05)
        except Exception:
            server.stop()
            raise
    return server

"""Drive the real socket.io-client (npm) from pytest through ``tests/support/sioclient.js``."""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("sioclient.js")


def node_ready() -> str | None:
    """Return why the Node client cannot run here, or None when it can."""
    if shutil.which("node") is None:
        return "node is not installed (apt-get install nodejs npm)"
    if not (ROOT / "node_modules" / "socket.io-client").is_dir():
        return "socket.io-client is not installed: run `npm ci` (make install does)"
    return None


class NodeSocketIO:
    """One socket.io-client in its own Node process; what it sees is read line by line."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            ["node", str(SCRIPT)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.seen: list[dict[str, Any]] = []
        self._unclaimed: list[dict[str, Any]] = []
        self._lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.next("ready", timeout=20)  # Node has loaded socket.io-client

    def _read(self) -> None:
        for line in self.process.stdout:
            line = line.strip()
            if line:
                self._lines.put(json.loads(line))

    def command(self, op: str, **fields: Any) -> None:
        self.process.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.process.stdin.flush()

    def connect(self, url: str, *, auth: Any = None, auth_function: bool = False,
                **options: Any) -> None:
        self.command("connect", url=url, auth=auth, authFunction=auth_function, options=options)

    def emit(self, event: str, *args: Any, ack: bool = False) -> None:
        self.command("emit", event=event, args=list(args), ack=ack)

    def next(self, kind: str | None = None, *, name: str | None = None,
             timeout: float = 5.0) -> dict[str, Any]:
        """Return the oldest unclaimed message of ``kind`` (and event ``name``).

        Messages passed over stay unclaimed for later calls, so the order of
        calls need not follow the order of arrival across kinds.
        """

        def matches(message: dict[str, Any]) -> bool:
            return (kind is None or message["type"] == kind) and (
                name is None or message.get("name") == name)

        for index, message in enumerate(self._unclaimed):
            if matches(message):
                return self._unclaimed.pop(index)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {kind or 'message'} {name or ''} within {timeout}s; "
                                   f"seen: {self.seen[-10:]}; stderr: {self._stderr()}")
            try:
                message = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            self.seen.append(message)
            if message["type"] == "failure":
                raise AssertionError(message["message"])
            if matches(message):
                return message
            self._unclaimed.append(message)

    def event(self, name: str, timeout: float = 5.0) -> dict[str, Any]:
        """Return the first argument of the next event ``name``."""
        return self.next("event", name=name, timeout=timeout)["args"][0]

    def quiet(self, seconds: float) -> list[dict[str, Any]]:
        """Return what arrives within ``seconds`` (it stays claimable by :meth:`next`)."""
        got = []
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                message = self._lines.get(timeout=remaining)
            except queue.Empty:
                break
            self.seen.append(message)
            self._unclaimed.append(message)
            got.append(message)
        return got

    def _stderr(self) -> str:
        if self.process.poll() is None:
            return "(running)"
        return self.process.stderr.read()[-2000:]

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.command("exit")
                self.process.wait(timeout=3)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait(timeout=3)
        self._reader.join(timeout=3)  # ends at EOF, now that the process is gone
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            stream.close()

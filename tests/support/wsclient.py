"""A real WebSocket client (websocket-client) with JSON helpers."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import websocket

#: What a browser sends: browsers always offer permessage-deflate.
BROWSER_HEADERS = ["Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"]


class Client:
    """One WebSocket connection speaking Callwire's JSON protocol."""

    def __init__(self, url: str, *, timeout: float = 5.0, headers: list[str] | None = None,
                 origin: str | None = None) -> None:
        options: dict[str, Any] = {"timeout": timeout, "header": headers or BROWSER_HEADERS}
        if origin is not None:
            options["origin"] = origin
        self.ws = websocket.create_connection(url, **options)

    def send_json(self, message: Any) -> None:
        self.ws.send(json.dumps(message))

    def send_raw(self, data: str | bytes) -> None:
        if isinstance(data, bytes):
            self.ws.send_binary(data)
        else:
            self.ws.send(data)

    def recv_json(self, timeout: float | None = None) -> dict[str, Any]:
        """Return the next text message as JSON; raise on timeout or close."""
        if timeout is not None:
            self.ws.settimeout(timeout)
        opcode, data = self.ws.recv_data()
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            raise ConnectionClosedError(close_code(data), data[2:].decode(errors="replace"))
        return json.loads(data)

    def recv_until(self, predicate, timeout: float = 5.0) -> dict[str, Any]:
        """Return the first message matching ``predicate``, skipping others."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no matching message")
            message = self.recv_json(timeout=remaining)
            if predicate(message):
                return message

    def init(self, user_id: str | None = None, token: str | None = None,
             last_event_id: str | None = None, **payload: Any) -> dict[str, Any]:
        """Send init and return the server's first answer."""
        body: dict[str, Any] = dict(payload)
        if user_id is not None:
            body["userId"] = user_id
        if token is not None:
            body["token"] = token
        if last_event_id is not None:
            body["lastEventId"] = last_event_id
        self.send_json({"type": "init", "payload": body})
        return self.recv_json()

    def wait_closed(self, timeout: float = 5.0) -> tuple[int | None, str]:
        """Read until the server closes; return (close code, reason). Skips data frames."""
        self.ws.settimeout(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                opcode, data = self.ws.recv_data(control_frame=True)
            except websocket.WebSocketConnectionClosedException:
                return None, ""
            except (ConnectionResetError, BrokenPipeError):
                return None, "reset"
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return close_code(data), data[2:].decode(errors="replace")
        raise TimeoutError("server did not close the connection")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close(timeout=1)
        # After a close started by the server, close() above returns early and
        # leaves the socket open (a ResourceWarning, an error under pytest).
        self.ws.shutdown()


class ConnectionClosedError(Exception):
    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"closed {code}: {reason}")
        self.code = code
        self.reason = reason


def close_code(data: bytes) -> int | None:
    return int.from_bytes(data[:2], "big") if len(data) >= 2 else None

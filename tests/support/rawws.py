"""A WebSocket client made by hand on a plain socket, for what real clients hide.

websocket-client answers pings by itself and always completes the close
handshake; the tests of heartbeats, abrupt disconnects and handshake headers
need a client that does neither.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time
from typing import Any

OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA


class RawWebSocket:
    """One client connection whose every byte the test controls."""

    def __init__(self, port: int, path: str = "/", headers: tuple[str, ...] = (),
                 timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        request = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *headers,
        ]
        self.sock.sendall(("\r\n".join(request) + "\r\n\r\n").encode())
        raw = b""
        while b"\r\n\r\n" not in raw:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            raw += chunk
        head, _, self._buffer = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:])
        }

    def send_frame(self, opcode: int, payload: bytes) -> None:
        """Send one masked frame, as a browser does."""
        mask = os.urandom(4)
        header = bytes([0x80 | opcode])
        length = len(payload)
        if length < 126:
            header += bytes([0x80 | length])
        elif length < 65536:
            header += bytes([0x80 | 126]) + struct.pack("!H", length)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", length)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def send_json(self, message: Any) -> None:
        self.send_frame(OP_TEXT, json.dumps(message).encode())

    def _read(self, count: int) -> bytes:
        while len(self._buffer) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("server closed the TCP connection")
            self._buffer += chunk
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data

    def read_frame(self) -> tuple[int, bytes]:
        """Return the next (opcode, payload); raise EOFError when the server is gone."""
        first, second = self._read(2)
        length = second & 0x7F
        if length == 126:
            length = struct.unpack("!H", self._read(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", self._read(8))[0]
        return first & 0x0F, self._read(length)

    def read_until_gone(self, timeout: float) -> list[tuple[int, bytes]]:
        """Read frames, never answering, until the TCP connection ends; return them."""
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        frames: list[tuple[int, bytes]] = []
        while time.monotonic() < deadline:
            try:
                frames.append(self.read_frame())
            except (EOFError, ConnectionResetError):
                return frames
        raise TimeoutError(f"connection still open after {timeout}s: {frames}")

    def kill(self) -> None:
        """Drop the connection without a close frame (RST), like a crashed browser."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


def close_code(payload: bytes) -> int | None:
    """Return the status code of a close frame's payload."""
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None

"""A minimal WebSocket client over raw gevent sockets, light enough to hold 10,000 on one core.

Each client offers permessage-deflate exactly as a browser does, records
whether the server accepted it, sends the init frame masked, waits for
``connected`` and then only reads: it answers ping frames with pongs and
hands text frames (with their arrival time) to a callback. One greenlet and
one socket per client; no thread, no selector, no per-message object besides
the payload.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
import time
import zlib
from collections.abc import Callable
from typing import Any

import gevent
from gevent import socket

#: What a browser sends in every handshake (docs/stack-notes.md: accepting it costs ~141 KiB).
DEFLATE_OFFER = "permessage-deflate; client_max_window_bits"
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA

#: Called with (text payload, monotonic arrival time) for every text frame.
OnText = Callable[[str, float], None]


class HandshakeError(Exception):
    """The server did not upgrade the connection or did not confirm the init."""


class ClosedError(Exception):
    """The server closed the connection (close frame or end of stream)."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"closed {code}: {reason}")
        self.code = code


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """Build one final, masked client frame."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    mask = os.urandom(4)
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(
        (mask * (length // 4 + 1))[:length], "big"
    )).to_bytes(length, "big") if length else b""
    return header + mask + masked


class RawClient:
    """One browser-like WebSocket connection to Callwire."""

    __slots__ = ("sock", "_buffer", "extensions", "user_id", "close_code", "on_text", "reader",
                 "_inflater")

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self._buffer = bytearray()
        #: The server's ``Sec-WebSocket-Extensions`` answer ("" when it refused deflate).
        self.extensions = ""
        self.user_id = ""
        self.close_code: int | None = None
        self.on_text: OnText | None = None
        self.reader: gevent.Greenlet | None = None
        #: Set when the server accepted permessage-deflate (peers such as Flask-SocketIO do).
        self._inflater: Any = None

    #: The request path of the upgrade.
    path = "/"

    # -- opening -----------------------------------------------------------------

    def open(self, host: str, port: int, init_payload: dict[str, Any], timeout: float) -> None:
        """Connect, upgrade with a deflate offer, send init and wait for ``connected``."""
        with gevent.Timeout(timeout, HandshakeError(f"no connected within {timeout}s")):
            self.sock = socket.create_connection((host, port))
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            key = base64.b64encode(os.urandom(16)).decode()
            self.sock.sendall(
                (
                    f"GET {self.path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                    f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n"
                    f"Origin: http://{host}:{port}\r\nUser-Agent: callwire-bench\r\n\r\n"
                ).encode()
            )
            self._read_upgrade(key)
            self.identify(init_payload)

    def identify(self, init_payload: dict[str, Any]) -> None:
        """Send the init frame and wait for ``connected`` (the raw Callwire protocol)."""
        self.send_text(json.dumps({"type": "init", "payload": init_payload}))
        while True:
            opcode, payload = self.read_frame()
            if opcode == OP_TEXT:
                message = json.loads(payload)
                if message.get("type") == "connected":
                    self.user_id = message["userId"]
                    return
                if message.get("type") == "error":
                    raise HandshakeError(f"init refused: {message.get('message')}")

    def _read_upgrade(self, key: str) -> None:
        while b"\r\n\r\n" not in self._buffer:
            self._fill()
        head, _, rest = bytes(self._buffer).partition(b"\r\n\r\n")
        self._buffer = bytearray(rest)
        lines = head.decode("latin-1").split("\r\n")
        if not lines[0].startswith("HTTP/1.1 101"):
            raise HandshakeError(f"no upgrade: {lines[0]!r}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        expected = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()
        if headers.get("sec-websocket-accept") != expected:
            raise HandshakeError("wrong Sec-WebSocket-Accept")
        self.extensions = headers.get("sec-websocket-extensions", "")
        if "permessage-deflate" in self.extensions:
            self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)

    # -- frames ------------------------------------------------------------------

    def send_text(self, text: str) -> None:
        """Send one masked text frame."""
        self.sock.sendall(encode_frame(OP_TEXT, text.encode()))

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ClosedError(None, "end of stream")
        self._buffer += chunk

    def read_frame(self) -> tuple[int, bytes]:
        """Return the next frame (opcode, payload); answer pings; raise on close."""
        while True:
            buffer = self._buffer
            while len(buffer) < 2:
                self._fill()
                buffer = self._buffer
            first, second = buffer[0], buffer[1]
            length, offset = second & 0x7F, 2
            if length == 126:
                offset = 4
            elif length == 127:
                offset = 10
            while len(self._buffer) < offset:
                self._fill()
            if length == 126:
                length = struct.unpack_from("!H", self._buffer, 2)[0]
            elif length == 127:
                length = struct.unpack_from("!Q", self._buffer, 2)[0]
            while len(self._buffer) < offset + length:
                self._fill()
            payload = bytes(self._buffer[offset : offset + length])
            del self._buffer[: offset + length]
            opcode = first & 0x0F
            if first & 0x40 and self._inflater is not None:  # RSV1: a compressed message
                payload = self._inflater.decompress(payload + b"\x00\x00\xff\xff")
            if not first & 0x80:
                raise ClosedError(None, "fragmented frames are not expected from Callwire")
            if opcode == OP_PING:
                self.sock.sendall(encode_frame(OP_PONG, payload))
                continue
            if opcode == OP_PONG:
                continue
            if opcode == OP_CLOSE:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                raise ClosedError(self.close_code, payload[2:].decode(errors="replace"))
            return opcode, payload

    # -- holding -----------------------------------------------------------------

    def start_reading(self, on_text: OnText | None = None) -> None:
        """Read in a greenlet until closed: pongs for pings, text frames to ``on_text``."""
        self.on_text = on_text
        self.reader = gevent.spawn(self._read_forever)

    def _read_forever(self) -> None:
        try:
            while True:
                opcode, payload = self.read_frame()
                if opcode == OP_TEXT:
                    self.on_frame(payload.decode(), time.monotonic())
        except (ClosedError, OSError):
            if self.close_code is None:
                self.close_code = -1

    def on_frame(self, text: str, arrived: float) -> None:
        """Hand a text frame to ``on_text`` (transports that wrap messages unwrap them here)."""
        if self.on_text is not None:
            self.on_text(text, arrived)

    @property
    def alive(self) -> bool:
        """True while the server has not closed this connection."""
        return self.close_code is None

    def close(self) -> None:
        """Drop the connection without a closing handshake (fast, as a killed tab does)."""
        if self.reader is not None:
            self.reader.kill(block=False)
        if self.sock is not None:
            self.sock.close()


class SocketIOClient(RawClient):
    """A socket.io-client on WebSocket only (Socket.IO v5 over Engine.IO v4), for the peer.

    Opens the Engine.IO socket, connects to namespace ``/``, emits ``init``
    with the user id (what Flask-SocketIO apps do), answers Engine.IO pings
    and hands the argument of every event to ``on_text`` as JSON text.
    """

    __slots__ = ()
    path = "/socket.io/?EIO=4&transport=websocket"

    def identify(self, init_payload: dict[str, Any]) -> None:
        """Engine.IO open, namespace connect, ``init``; wait for the ``connected`` event."""
        self._expect("0")
        self.send_text("40")
        self._expect("40")
        self.send_text("42" + json.dumps(["init", {"userId": init_payload["userId"]}]))
        name, body = self._event(self._expect("42"))
        if name != "connected":
            raise HandshakeError(f"init answered with {name}")
        self.user_id = json.loads(body)["userId"]

    def _expect(self, prefix: str) -> str:
        while True:
            opcode, payload = self.read_frame()
            if opcode != OP_TEXT:
                continue
            text = payload.decode()
            if text == "2":
                self.send_text("3")
            elif text.startswith(prefix):
                return text
            elif text.startswith("44"):
                raise HandshakeError(f"connect refused: {text}")

    @staticmethod
    def _event(text: str) -> tuple[str, str]:
        """Split ``42["name",{...}]`` into the name and the argument's JSON (no re-encoding)."""
        comma = text.index(",", 2)
        return json.loads(text[2:comma] + "]")[0], text[comma + 1 : -1]

    def on_frame(self, text: str, arrived: float) -> None:
        if text == "2":
            self.send_text("3")
        elif text.startswith("42") and self.on_text is not None:
            self.on_text(self._event(text)[1], arrived)

"""A frame fuzzer against a live server: any frame gets an error or a documented close.

Random and mutated text frames, binary frames, fragments, control frames,
reserved bits and opcodes, unmasked frames, deep nesting and odd Unicode go
to fresh sockets of a real gunicorn server. After each, the test sends a
``ping`` message: the socket either answers ``pong`` (every frame before it
was an ``error`` message or a pong control frame) or was closed with one of
the close codes the README documents, never 1011 (internal error). A socket
initialised before the storm must still receive its events afterwards, and
the server log must hold no traceback. The cases come from a fixed seed
(``CALLWIRE_FUZZ_SEED`` to explore), so a failure can be replayed.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import struct
import uuid
from collections.abc import Iterator

import pytest

from tests.support.rawws import OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, RawWebSocket
from tests.support.server import LiveServer, start_server
from tests.support.tokens import emulator_token

OP_CONTINUATION = 0x0
SEED = int(os.environ.get("CALLWIRE_FUZZ_SEED", "11"))
CASES = int(os.environ.get("CALLWIRE_FUZZ_CASES", "120"))
#: Protocol errors (1002), text that is not UTF-8 (1007), policy (1008), too large (1009).
DOCUMENTED_CLOSES = {1002, 1007, 1008, 1009}
MAX_MESSAGE = 4096


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    server = start_server({"WS_MAX_MESSAGE_BYTES": str(MAX_MESSAGE)}, name="fuzz-frames")
    yield server
    server.stop()


def frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0,
          masked: bool = True) -> bytes:
    """Build one frame, well formed or not."""
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    length = len(payload)
    mask_bit = 0x80 if masked else 0
    if length < 126:
        head += bytes([mask_bit | length])
    elif length < 65536:
        head += bytes([mask_bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", length)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def text(value: str) -> bytes:
    return frame(OP_TEXT, value.encode("utf-8"))


PING_MESSAGE = text('{"type":"ping"}')
VALID = ['{"type":"ping"}', '{"type":"init","payload":{"userId":"a@example.com"}}',
         '{"type":"auth","payload":{"token":"x"}}', '{"type":"init","payload":{"lastEventId":"1"}}']
ODD = ["\\ud800", "\\udfff", "😀", "\u2028", "\u202e", "\ufeff", "\\u0000", "\uffff", "\U0010ffff"]


def odd_json(rng: random.Random) -> str:
    parts = [rng.choice(ODD) for _ in range(rng.randint(1, 4))]
    kind = rng.choice(["type", "userId", "key"])
    if kind == "type":
        return '{"type":"' + "".join(parts) + '"}'
    if kind == "userId":
        return '{"type":"init","payload":{"userId":"' + "".join(parts) + '@x.y"}}'
    return '{"type":"ping","' + "".join(parts) + '":1}'


def mutate(rng: random.Random, data: bytes) -> bytes:
    raw = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        where = rng.randrange(len(raw) + 1)
        choice = rng.random()
        if choice < 0.4 and raw:
            raw[min(where, len(raw) - 1)] = rng.randrange(256)
        elif choice < 0.7:
            raw[where:where] = bytes([rng.randrange(256)])
        elif raw:
            del raw[min(where, len(raw) - 1)]
    return bytes(raw)


def fuzz_case(rng: random.Random) -> tuple[str, bytes]:
    """Return (description, bytes to send) for one case."""
    kind = rng.choice([
        "random-text", "mutated", "binary", "fragments", "control", "reserved", "nesting",
        "odd-unicode", "oversized", "unmasked", "numbers",
    ])
    if kind == "random-text":
        chars = "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0xD800),
                                        rng.randrange(0xE000, 0x110000)]))
                        for _ in range(rng.randint(0, 40)))
        return kind, text(chars)
    if kind == "mutated":
        return kind, frame(OP_TEXT, mutate(rng, rng.choice(VALID).encode()))
    if kind == "binary":
        return kind, frame(OP_BINARY, rng.choice([b"", os.urandom(rng.randint(1, 64)),
                                                   rng.choice(VALID).encode()]))
    if kind == "fragments":
        message = rng.choice(VALID).encode()
        cut = rng.randint(0, len(message))
        pieces = [frame(OP_TEXT, message[:cut], fin=False)]
        if rng.random() < 0.5:
            pieces.append(frame(OP_PING, b"between"))  # control frames may interleave
        if rng.random() < 0.2:
            pieces.append(frame(OP_TEXT, b"{}", fin=True))  # a new message mid-fragment: 1002
        pieces.append(frame(OP_CONTINUATION, message[cut:], fin=True))
        if rng.random() < 0.2:
            pieces.append(frame(OP_CONTINUATION, b"{}", fin=True))  # nothing to continue
        return kind, b"".join(pieces)
    if kind == "control":
        return kind, rng.choice([
            frame(OP_PING, os.urandom(rng.randint(0, 125))),
            frame(OP_PING, os.urandom(126)),  # control payloads stop at 125 bytes
            frame(OP_PING, b"x", fin=False),  # control frames cannot be fragmented
            frame(OP_PONG, b"unsolicited"),
            frame(OP_CLOSE, struct.pack("!H", rng.choice([1000, 1001, 999, 1005, 5000]))),
            frame(OP_CLOSE, b"\x03"),  # a one-byte close payload
        ])
    if kind == "reserved":
        return kind, rng.choice([
            frame(OP_TEXT, VALID[0].encode(), rsv=rng.randint(1, 7)),
            frame(rng.choice([0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xF]), b"{}"),
        ])
    if kind == "nesting":
        depth = rng.choice([33, 500, 999, 1000, 1001, 2000])
        inner = "[" * depth + "]" * depth
        return kind, text(rng.choice([inner, '{"type":"init","payload":{"x":' + inner + "}}"]))
    if kind == "odd-unicode":
        return kind, text(odd_json(rng))
    if kind == "oversized":
        return kind, text('{"type":"ping","pad":"' + "x" * (MAX_MESSAGE + 10) + '"}')
    if kind == "unmasked":
        return kind, frame(OP_TEXT, VALID[0].encode(), masked=False)
    number = rng.choice(["NaN", "-Infinity", "1e400", "9" * 5000, "-0", "1e-400"])
    return kind, text('{"type":"init","payload":{"lastEventId":' + number + "}}")


def outcome(client: RawWebSocket) -> tuple[str, object]:
    """After a case and a ping message: ("open", None) or ("closed", code)."""
    client.sock.settimeout(5)
    with contextlib.suppress(OSError):  # closed already? its close frame is still readable
        client.sock.sendall(PING_MESSAGE)
    while True:
        try:
            opcode, payload = client.read_frame()
        except (EOFError, ConnectionResetError):
            return "closed", None
        if opcode == OP_CLOSE:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
            return "closed", code
        if opcode in (OP_PONG, OP_PING):
            continue
        message = json.loads(payload)
        if message == {"type": "pong"}:
            return "open", None
        assert message.get("type") in {"error", "connected"}, message


def test_no_frame_can_crash_a_socket_or_the_server(live: LiveServer) -> None:
    owner = f"fuzz-{uuid.uuid4().hex[:8]}@example.com"
    canary = RawWebSocket(live.port)
    try:
        storm(live, canary, owner)
    finally:
        canary.close()
    assert "Traceback" not in live.log(), live.log()[-3000:]


def storm(live: LiveServer, canary: RawWebSocket, owner: str) -> None:
    canary.sock.sendall(text(json.dumps({"type": "init", "payload": {
        "token": emulator_token(owner)}})))
    assert json.loads(canary.read_frame()[1])["type"] == "connected"

    rng = random.Random(SEED)
    seen: dict[str, set] = {}
    for number in range(CASES):
        kind, data = fuzz_case(rng)
        client = RawWebSocket(live.port)
        assert client.status == 101
        try:
            client.sock.sendall(data)
            state, code = outcome(client)
        finally:
            client.close()
        # A client's own close frame is answered by echoing its code (RFC 6455 §5.5.1).
        echoed = data[0] & 0x0F == OP_CLOSE
        assert state == "open" or echoed or code in DOCUMENTED_CLOSES | {None}, (
            number, kind, code)
        assert code != 1011, (number, kind)
        seen.setdefault(kind, set()).add(state if code is None else code)

    # Every kind ran, and the storm cost the canary nothing.
    assert len(seen) == 11, seen
    call_id = f"fuzz-{uuid.uuid4().hex[:8]}"
    answer = live.publish({"callId": call_id, "userId": owner, "status": "ringing"})
    assert answer.status_code == 200, answer.text
    event = json.loads(canary.read_frame()[1])
    assert (event["callId"], event["status"]) == (call_id, "ringing")

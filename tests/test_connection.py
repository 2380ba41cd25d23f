"""SafeSocket: whole writes under concurrency, a write deadline, clean and abortive closes.

docs/stack-notes.md: simple-websocket's ``Server.send`` uses ``socket.send`` and
ignores short writes; every write must be a whole ``sendall`` under a lock,
bounded in time. Real (gevent) socket pairs, no mocks.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import gevent
import gevent.event
import pytest
from gevent import socket
from simple_websocket import ConnectionClosed

from webapp import connection
from webapp.connection import CLOSE_GRACE_SECONDS, SafeSocket


@pytest.fixture
def pair():
    """A connected TCP pair on loopback (resets exist only in TCP)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        left = socket.create_connection(listener.getsockname())
        right, _ = listener.accept()
    yield left, right
    for end in (left, right):
        end.close()


def read_exactly(sock, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(min(1 << 20, count - len(data)))
        assert chunk, "peer closed early"
        data += chunk
    return data


def test_concurrent_large_writes_stay_whole(pair):
    left, right = pair
    safe = SafeSocket(left, write_timeout=10)
    frames = [bytes([n]) * (256 * 1024 + n) for n in range(20)]
    writers = [gevent.spawn(safe.send, frame) for frame in frames]
    received = gevent.spawn(read_exactly, right, sum(map(len, frames)))
    gevent.joinall([*writers, received], raise_error=True, timeout=20)
    data = received.value
    # Each frame is one unbroken run of its byte: no interleaving of partial writes.
    runs, position = [], 0
    while position < len(data):
        byte = data[position]
        end = position
        while end < len(data) and data[end] == byte:
            end += 1
        runs.append((byte, end - position))
        position = end
    assert sorted(runs) == sorted((n, 256 * 1024 + n) for n in range(20))
    assert not safe.broken


def test_send_now_never_waits_and_the_next_send_finishes_its_frame_first(pair):
    left, right = pair
    safe = SafeSocket(left, write_timeout=10)
    frames, started = [], time.monotonic()
    while not safe.unfinished:  # the peer does not read yet: fill the buffers
        assert safe.idle
        frames.append(bytes([len(frames) % 251]) * 65536)
        safe.send_now(frames[-1])
    assert time.monotonic() - started < 2  # never waited for the peer
    assert not safe.idle
    frames.append(b"after")
    received = gevent.spawn(read_exactly, right, sum(map(len, frames)))
    safe.send(frames[-1])  # waits for the peer, writes the unfinished frame first
    assert received.get(timeout=10) == b"".join(frames)
    assert safe.idle and not safe.broken


def test_a_peer_that_does_not_read_times_the_write_out_and_breaks_the_socket(pair):
    left, right = pair
    safe = SafeSocket(left, write_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        for _ in range(1000):  # fill every buffer: the peer never reads
            safe.send(b"x" * 65536)
    assert 0.25 <= time.monotonic() - started < 3
    assert safe.broken
    started = time.monotonic()
    with pytest.raises(BrokenPipeError):
        safe.send(b"after")
    assert time.monotonic() - started < 0.1  # fails at once


def test_a_killed_writer_breaks_the_socket(pair):
    left, _right = pair
    safe = SafeSocket(left, write_timeout=30)
    writer = gevent.spawn(lambda: [safe.send(b"y" * 65536) for _ in range(1000)])
    gevent.sleep(0.1)
    assert not writer.dead
    writer.kill(timeout=1)
    assert safe.broken
    with pytest.raises(BrokenPipeError):
        safe.send(b"z")


def test_close_delivers_what_was_sent_even_with_unread_input(pair):
    left, right = pair
    safe = SafeSocket(left, write_timeout=5)
    right.sendall(b"unread input " * 1000)  # would turn a plain close into a reset
    safe.send(b"last frame")
    closer = gevent.spawn(safe.close)
    assert read_exactly(right, len(b"last frame")) == b"last frame"
    assert right.recv(10) == b""  # an orderly end, not a reset
    right.close()
    closer.join(timeout=CLOSE_GRACE_SECONDS + 1)
    assert closer.dead


def test_close_waits_for_the_peer_at_most_the_grace_period(pair, monkeypatch):
    monkeypatch.setattr(connection, "CLOSE_GRACE_SECONDS", 0.3)
    left, _right = pair
    safe = SafeSocket(left, write_timeout=5)
    started = time.monotonic()
    safe.close()  # the peer never closes its side
    assert 0.25 <= time.monotonic() - started <= 0.8


def test_abort_resets_the_connection(pair):
    left, right = pair
    safe = SafeSocket(left, write_timeout=5)
    safe.send(b"half a frame")
    safe.abort()
    assert safe.broken
    safe.close()  # broken: no drain, immediate
    with pytest.raises(ConnectionResetError):
        while right.recv(1024):
            pass


def test_pings_of_sockets_opened_apart_fall_due_together_and_never_late(monkeypatch):
    """Pings are due on a grid of 0.2 % of the interval: sockets opened at different
    moments ping in the same turn of the loop, never later than the interval."""
    due = []
    for now in (1000.001, 1000.02, 1000.0499):
        monkeypatch.setattr(connection.time, "monotonic", lambda now=now: now)
        opened = connection.WebSocketConnection(
            SimpleNamespace(ping_interval=25.0), send_queue=8, write_timeout=1.0)
        due.append(opened._next_ping)
        assert now + 25.0 * 0.998 <= due[-1] <= now + 25.0
    assert due == [pytest.approx(1025.0, abs=1e-6)] * 3
    monkeypatch.setattr(connection.time, "monotonic", lambda: 1000.06)
    assert connection.next_ping_at(25.0) == pytest.approx(1025.05, abs=1e-6)


def _open_server_wsproto():
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Request

    server, client = WSConnection(ConnectionType.SERVER), WSConnection(ConnectionType.CLIENT)
    server.receive_data(client.send(Request(host="x", target="/")))
    list(server.events())
    server.send(AcceptConnection())
    return server


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
@pytest.mark.parametrize("char", ["a", "é", "☎"])
def test_text_frame_is_what_wsproto_writes(size, char):
    from wsproto.events import TextMessage

    text = (char * size)[: max(size, 0)]
    assert connection.text_frame(text) == bytes(
        _open_server_wsproto().send(TextMessage(data=text))
    )


def test_inline_send_is_refused_once_the_websocket_is_closing(pair):
    from types import SimpleNamespace

    from wsproto.events import CloseConnection
    from wsproto.utilities import LocalProtocolError

    server = _open_server_wsproto()
    ws = SimpleNamespace(sock=SafeSocket(pair[0], 1.0), ws=server, connected=True)
    assert connection.send_without_waiting(ws, "first")
    assert pair[1].recv(100) == connection.text_frame("first")
    server.send(CloseConnection(code=1000))
    with pytest.raises(LocalProtocolError):
        connection.send_without_waiting(ws, "late")


# -- the shutdown pass: a close frame written without the session --------------------------


def server_connection(left) -> connection.WebSocketConnection:
    """A WebSocketConnection over a real simple-websocket Server on ``left`` (handshake done)."""
    from simple_websocket import Server

    environ = {
        "werkzeug.socket": SafeSocket(left, write_timeout=5),
        "HTTP_HOST": "127.0.0.1", "HTTP_UPGRADE": "websocket", "HTTP_CONNECTION": "Upgrade",
        "HTTP_SEC_WEBSOCKET_KEY": "dGhlIHNhbXBsZSBub25jZQ==", "HTTP_SEC_WEBSOCKET_VERSION": "13",
    }
    ws = Server(environ, ping_interval=25, thread_class=connection.InlineReader,
                event_class=gevent.event.Event)
    return connection.WebSocketConnection(ws, send_queue=10, write_timeout=5)


def read_until_eof(sock) -> bytes:
    data = b""
    sock.settimeout(2)
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_send_close_now_writes_1012_and_ends_our_side_before_the_session_runs(pair):
    left, right = pair
    conn = server_connection(left)
    assert conn.send_close_now(1012, "Server restarting")
    received = read_until_eof(right)  # FIN follows the close frame: no session had to run
    head, _, frames = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    assert frames[0] == 0x88 and frames[2:4] == (1012).to_bytes(2, "big")
    assert frames[4:] == b"Server restarting"
    conn.deliver('{"type":"late"}', None)  # nothing more is written after the close frame
    right.close()  # the peer answers: the session's next receive ends, logging why
    with pytest.raises(ConnectionClosed):
        conn.receive(2)
    assert conn.end_reason == "closed 1012: Server restarting"
    conn.linger()


def test_send_close_now_leaves_a_connection_that_is_writing_to_its_session(pair):
    left, right = pair
    conn = server_connection(left)
    conn._writer = gevent.spawn(gevent.sleep, 1)  # a write under way
    assert not conn.send_close_now(1012, "Server restarting")
    conn._writer.kill()
    conn._writer = None
    conn.send('{"type":"pong"}')  # still open: the session closes it its own way
    right.settimeout(2)
    assert b'{"type":"pong"}' in right.recv(65536)

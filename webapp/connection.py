"""One client connection: its user, its bounded outgoing queue and its writer.

:class:`Connection` is transport-neutral: it queues frames, buffers live
events while a resume or snapshot is being read (the seam), drops events the
client already has, and asks its transport to write. A slow client only hurts
itself: delivery never waits for a client. A frame is written at once, in
the delivering greenlet, when nothing waits before it and the socket takes
it without waiting; anything else goes to a bounded queue, which a writer
greenlet that exists only while there is something to send writes, and a
queue that overflows asks the session to close with 4008.

:class:`WebSocketConnection` is the flask-sock / simple-websocket transport.
:class:`SafeSocket` makes its raw socket writes whole and bounded in time
(docs/stack-notes.md: ``Server.send`` uses ``socket.send`` and ignores short writes).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import select
import socket
import struct
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import gevent
import gevent.lock
from gevent import monkey
from simple_websocket import ConnectionClosed
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection, Ping
from wsproto.utilities import LocalProtocolError

from webapp import metrics
from webapp.brokers.base import ConnectionInfo
from webapp.config import DEFAULT_SEND_QUEUE_BYTES
from webapp.events import event_id_order, utc_timestamp

if TYPE_CHECKING:
    from webapp.admission import Ticket

logger = logging.getLogger(__name__)

_ids = itertools.count(1)

#: Close codes of docs/protocol.md §5.
CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_RESTART = 1012
#: Try again later: the server cannot serve this now (broker unreachable or busy).
CLOSE_TRY_AGAIN = 1013
CLOSE_TOKEN_EXPIRED = 4001
CLOSE_TOO_SLOW = 4008


def frame_bytes(frame: str) -> int:
    """Return the UTF-8 size of a frame (frames are mostly ASCII, which costs nothing)."""
    return len(frame) if frame.isascii() else len(frame.encode("utf-8", "surrogatepass"))


#: Queued frames after which delivery lets the writers run (``Hub.deliver``).
WRITER_TURN_BACKLOG = 32

#: How long closing waits for the frame being written, then for the close
#: frame, before it gives up on the peer and drops the TCP connection.
CLOSE_GRACE_SECONDS = 2.0


def accepted_at(event_id: str | None) -> float:
    """Return the monotonic moment an event was accepted, read from its id.

    Ids are the accepting clock's time in microseconds (Redis ``TIME``, or this
    process), so publish-to-write latency needs no extra field on the wire. A
    test message (no id), or an id from a clock far off ours, counts from now.
    """
    now = time.monotonic()
    order = event_id_order(event_id)
    if order < 0:
        return now
    age = time.time() - order / 1_000_000
    return now - age if 0.0 < age < 3600.0 else now


_HEADER_16 = struct.Struct("!BBH")
_HEADER_64 = struct.Struct("!BBQ")


def text_frame(text: str) -> bytes:
    """Return ``text`` as one final, unmasked WebSocket text frame (RFC 6455 §5.2).

    The bytes wsproto writes for a server's ``TextMessage`` without
    extensions (none is ever negotiated: both transports remove the
    permessage-deflate offer, and an uncompressed message is valid even
    where one is), built directly: wsproto's ``send`` costs about 5 µs per
    frame in event objects, state checks and extension hooks, this 0.3 µs,
    and every delivered event is a frame (bench/README.md, issue 10).
    """
    data = text.encode("utf-8")
    size = len(data)
    if size < 126:
        return bytes((0x81, size)) + data
    if size < 65536:
        return _HEADER_16.pack(0x81, 126, size) + data
    return _HEADER_64.pack(0x81, 127, size) + data


def send_without_waiting(ws: Any, text: str) -> bool:
    """Send a text frame on a simple-websocket ``Server`` if its socket is idle; else False.

    What ``Server.send`` does, with :meth:`SafeSocket.send_now`: a write that
    never waits, whose unwritten rest the next :meth:`SafeSocket.send` writes
    first. Both WebSocket transports write inline through this. Refused, as
    wsproto refuses it, once the WebSocket is no longer open (a close frame
    was sent or received).
    """
    sock = ws.sock
    if not isinstance(sock, SafeSocket) or not sock.idle:
        return False
    if not ws.connected:
        raise ConnectionClosed(ws.close_reason, ws.close_message)
    state = ws.ws.state
    if state is not ConnectionState.OPEN:
        raise LocalProtocolError(f"a message cannot be sent in state {state}")
    sock.send_now(text_frame(text))
    return True


class SafeSocket:
    """Wrap a (gevent) socket so every write is whole, in order, under one lock, with a deadline.

    A write that cannot finish in ``write_timeout`` seconds (or is interrupted)
    may leave a frame half-written, which cannot be recovered: the socket is
    then marked broken, every later write fails at once, and :meth:`abort`
    drops the connection. :meth:`send_now` writes without waiting at all and
    keeps what the kernel did not take, which the next :meth:`send` writes first.
    """

    def __init__(self, sock: socket.socket, write_timeout: float) -> None:
        self._sock = sock
        self.write_timeout = write_timeout
        # A gevent lock, not threading's: writers are greenlets, patched or not.
        self._lock = gevent.lock.Semaphore()
        self.broken = False
        #: What :meth:`send_now` could not write at once; written first by :meth:`send`.
        self._rest: memoryview | None = None

    @property
    def idle(self) -> bool:
        """True when no write is in progress or left unfinished: :meth:`send_now` may write."""
        return self._rest is None and not self._lock.locked()

    @property
    def unfinished(self) -> bool:
        """True when :meth:`send_now` left part of its data for :meth:`send` to write."""
        return self._rest is not None

    def send_now(self, data: bytes) -> None:
        """Write ``data`` without waiting; only when :attr:`idle` (the caller checks).

        What the kernel does not take at once is kept, and the next
        :meth:`send` writes it before anything else (``send(b"")`` just
        finishes it), so frames stay whole and in order.
        """
        if self.broken:
            raise BrokenPipeError("connection already failed a write")
        try:
            sent = self._sock.send(data, 0, 0.0)  # gevent: timeout 0, never wait
        except BlockingIOError:
            sent = 0
        except BaseException:
            self.broken = True
            raise
        if sent < len(data):
            self._rest = memoryview(data)[sent:]

    def send(self, data: bytes) -> int:
        with self._lock:
            if self.broken:
                raise BrokenPipeError("connection already failed a write")
            deadline = gevent.Timeout(self.write_timeout)
            try:
                with deadline:
                    if self._rest is not None:
                        self._sock.sendall(self._rest)
                        self._rest = None
                    # One send() is nearly always the whole frame; gevent's sendall
                    # costs an extra getsockopt() system call per frame (bench/README.md).
                    sent = self._sock.send(data) if data else 0
                    if sent < len(data):
                        self._sock.sendall(memoryview(data)[sent:])
            except gevent.Timeout as timeout:
                self.broken = True
                if timeout is not deadline:
                    raise
                raise TimeoutError("write timed out: peer is not reading") from None
            except BaseException:
                # A failed write, or the writer killed mid-frame: the stream is not whole.
                self.broken = True
                raise
        return len(data)

    def abort(self) -> None:
        """Drop the connection now with a TCP reset, discarding what the peer never read."""
        self.broken = True
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # Wake a blocked reader; the close that follows sends the reset (no FIN first).
            self._sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass

    sendall = send

    def close(self) -> None:
        """Close once the peer has had our last frames: end our side, drain theirs, close.

        Closing with unread input makes the kernel answer with a reset, which
        can destroy a close frame (1008, 1009, ...) before the peer reads it;
        so unread input is drained first, for at most ``CLOSE_GRACE_SECONDS``.
        """
        if not self.broken:
            with contextlib.suppress(OSError), gevent.Timeout(CLOSE_GRACE_SECONDS, False):
                self._sock.shutdown(socket.SHUT_WR)
                while self._sock.recv(65536):
                    pass
        self._sock.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class Connection:
    """Transport-neutral state of one client connection."""

    transport_name = "abstract"

    def __init__(
        self,
        *,
        send_queue: int,
        remote: str = "",
        send_queue_bytes: int = DEFAULT_SEND_QUEUE_BYTES,
    ) -> None:
        self.id = f"c{next(_ids)}"
        self.remote = remote
        self.user_id: str | None = None
        self.connected_at: str | None = None
        self.token_expires_at: float | None = None
        self.close_requested: tuple[int, str] | None = None
        self._limit = send_queue
        self._byte_limit = send_queue_bytes
        #: (frame, queued at, its UTF-8 size) of every frame not yet handed to the transport.
        self._queue: deque[tuple[str, float | None, int]] = deque()
        #: UTF-8 bytes of the frames in the queue, plus the one being written.
        self._queued_bytes = 0
        #: This client's place under the handshake caps (``webapp.admission``), if any.
        self.admission: Ticket | None = None
        #: Who runs :meth:`_drain` now (a greenlet, or what a transport chose), or None.
        self._writer: Any = None
        #: (queued at, UTF-8 size) of a frame written in part at once, which the writer finishes.
        self._unfinished: tuple[float | None, int] | None = None
        self._closed = False
        #: Live (frame, event id) held back while history is read, or None when live.
        self._seam: list[tuple[str, str | None]] | None = None
        self.last_event_id: str | None = None

    # -- called by the session -------------------------------------------------

    def send(self, message_frame: str) -> None:
        """Queue a control frame (connected, error, pong) in order with everything else."""
        self._enqueue(message_frame, None)

    def begin_seam(self) -> None:
        """Hold live events back until :meth:`end_seam` (resume or snapshot in progress)."""
        self._seam = []

    def end_seam(self, frames: list[tuple[str, str, str]], latest_id: str | None) -> None:
        """Send history ``frames`` (frame, id, callId), then the live events held back.

        ``latest_id`` is the user's newest id when the history (replay or
        snapshot) was read: a held event up to it is already in that history,
        replayed or summed up by the snapshot, and is dropped; newer ones
        follow in order, so ids keep increasing and nothing is sent twice.
        """
        held = self._seam or []
        self._seam = None
        newest = event_id_order(latest_id)
        for frame, event_id, _call_id in frames:
            self._enqueue(frame, None)
            newest = max(newest, event_id_order(event_id))
        for frame, event_id in held:
            if event_id is not None:
                order = event_id_order(event_id)
                if order <= newest:
                    continue
                newest = order
            self._enqueue(frame, accepted_at(event_id))
        if newest >= 0:
            self.last_event_id = f"{newest:016d}"

    def send_close_now(self, code: int, reason: str) -> bool:
        """Send a close frame now, without waiting or waking the session; False if it cannot.

        A shutdown closes thousands of sockets at once (``Realtime.shutdown``);
        where the transport can, it does so in one pass, and each session then
        ends once, on its peer's answer. Transports without such a close keep
        the default: the caller falls back to :meth:`request_close`.
        """
        return False

    def request_close(self, code: int, reason: str) -> None:
        """Ask the session that owns this connection to close it (from any greenlet)."""
        if self.close_requested is None:
            self.close_requested = (code, reason)
            self._clear_queue()
            self._wake_session()

    def wants_writer_turn(self) -> bool:
        """True once enough waits in the queue that the writer should run before more comes.

        Half the queue bound, at most :data:`WRITER_TURN_BACKLOG` frames, or half
        the byte bound: a client that keeps up never gets near either bound
        during a burst.
        """
        return (
            len(self._queue) >= min(WRITER_TURN_BACKLOG, max(1, self._limit // 2))
            or self._queued_bytes * 2 >= self._byte_limit
        )

    def info(self) -> ConnectionInfo:
        """Describe this connection for the clients endpoint."""
        return ConnectionInfo(
            id=self.id,
            user_id=self.user_id or "",
            connected_at=self.connected_at or "",
            transport=self.transport_name,
        )

    def log_context(self) -> dict[str, str | None]:
        """Log fields for lines written about this connection from another greenlet."""
        return {"connection_id": self.id, "user": self.user_id, "transport": self.transport_name}

    def mark_initialised(self, user_id: str) -> None:
        """Record the user this connection now belongs to."""
        self.user_id = user_id
        self.connected_at = utc_timestamp()

    def mark_closed(self) -> None:
        """Stop accepting frames; called once the transport is gone."""
        self._closed = True
        self._clear_queue()

    # -- called by the hub (any greenlet) ---------------------------------------

    def deliver(self, frame: str, event_id: str | None) -> bool:
        """Queue a live message; return False if the client already has it or is gone."""
        if self._closed or self.close_requested is not None:
            return False
        if self._seam is not None:
            self._seam.append((frame, event_id))
            return True
        if event_id is not None:
            order = event_id_order(event_id)
            if order <= event_id_order(self.last_event_id):
                return False
            self.last_event_id = event_id
        return self._enqueue(frame, accepted_at(event_id))

    # -- internals -------------------------------------------------------------

    def _enqueue(self, frame: str, queued_at: float | None) -> bool:
        if self._closed or self.close_requested is not None:
            return False
        size = frame_bytes(frame)
        # A frame larger than the byte bound still goes out alone, so one big
        # event cannot lock its owner out; behind others it overflows.
        over_bytes = self._queued_bytes > 0 and self._queued_bytes + size > self._byte_limit
        if len(self._queue) >= self._limit or over_bytes:
            metrics.SLOW_CLIENTS_DROPPED.labels("queue_full").inc()
            logger.warning(
                "connection %s user=%s too slow: %d messages (%d bytes) waiting, "
                "closing with 4008",
                self.id, self.user_id, len(self._queue), self._queued_bytes,
                extra=self.log_context(),
            )
            self.request_close(CLOSE_TOO_SLOW, "Too slow: outgoing queue is full")
            return False
        if self._writer is None and not self._queue:
            # Nothing waits before this frame: write it now if the socket takes it
            # without waiting, with no writer greenlet to spawn and switch to.
            try:
                written = self._write_now(frame)
            except Exception as error:  # noqa: BLE001 - any transport failure ends the client
                self._write_failed(error)
                return False
            if written:
                metrics.note_queue_depth(1)  # this frame was the outgoing queue, for a moment
                if self._write_unfinished():
                    # The kernel took part of it: the writer finishes it first.
                    self._unfinished = (queued_at, size)
                    self._queued_bytes += size
                    self._start_writer()
                elif queued_at is not None:
                    metrics.DELIVERY_LATENCY.observe(time.monotonic() - queued_at)
                    metrics.EVENTS_DELIVERED.inc()
                return True
        self._queue.append((frame, queued_at, size))
        self._queued_bytes += size
        metrics.note_queue_depth(len(self._queue))
        if self._writer is None:
            self._start_writer()
        return True

    def _start_writer(self) -> None:
        """Have :meth:`_drain` run soon and set ``_writer`` until it has (a greenlet here)."""
        self._writer = gevent.spawn(self._drain)

    def _drain(self) -> None:
        """Write queued frames until the queue is empty, then let the greenlet end."""
        delivered = 0
        try:
            if self._unfinished is not None:
                queued_at, size = self._unfinished
                try:
                    self._finish_write()
                except Exception as error:  # noqa: BLE001 - any transport failure ends the client
                    self._write_failed(error)
                    return
                finally:
                    self._unfinished = None
                    self._queued_bytes -= size
                if queued_at is not None:
                    delivered += 1
                    metrics.DELIVERY_LATENCY.observe(time.monotonic() - queued_at)
            while self._queue and not self._closed:
                frame, queued_at, size = self._queue.popleft()
                # Still counted while written: the frame and its encodings are in memory.
                try:
                    self._write(frame)
                except Exception as error:  # noqa: BLE001 - any transport failure ends the client
                    self._write_failed(error)
                    return
                finally:
                    self._queued_bytes -= size
                if queued_at is not None:
                    delivered += 1
                    metrics.DELIVERY_LATENCY.observe(time.monotonic() - queued_at)
        finally:
            self._writer = None
            if delivered:  # one update per run of the writer, not per frame
                metrics.EVENTS_DELIVERED.inc(delivered)

    def _write_failed(self, error: Exception) -> None:
        """A write failed or timed out: the stream is not whole, close with 4008."""
        logger.warning(
            "delivery to connection %s user=%s failed: %s",
            self.id, self.user_id, error or type(error).__name__,
            extra=self.log_context(),
        )
        if self.close_requested is None:  # counted once per connection
            metrics.SLOW_CLIENTS_DROPPED.labels("write_failed").inc()
        self.request_close(CLOSE_TOO_SLOW, "Too slow: write timed out")

    def _clear_queue(self) -> None:
        """Drop every waiting frame (the one being written stays counted until it is done)."""
        for _frame, _queued_at, size in self._queue:
            self._queued_bytes -= size
        self._queue.clear()

    def _write(self, frame: str) -> None:
        raise NotImplementedError

    def _write_now(self, frame: str) -> bool:
        """Write ``frame`` without waiting and return True, or return False and write nothing.

        True even when the socket took only part of it: :meth:`_write_unfinished`
        then says so, and the writer calls :meth:`_finish_write` before anything else.
        Transports without such a write keep the default: every frame is queued.
        """
        return False

    def _write_unfinished(self) -> bool:
        return False

    def _finish_write(self) -> None:
        """Write the rest of what :meth:`_write_now` began (waiting, with the write deadline)."""

    def _wake_session(self) -> None:
        raise NotImplementedError


#: What ``WebSocketConnection.receive`` returns when another greenlet woke it.
WAKE = object()

#: Pings fall due on a grid of this share of the interval (50 ms of 25 s), so
#: sockets opened at different moments ping in the same turn of the loop: one
#: wake-up of the loop (and of the peer's) for several pings, not one for each.
#: A coarser grid saves more idle CPU but makes bursts others wait behind: 1 %
#: (100 pings a turn at 10,000 sockets) doubled the p99 of events delivered
#: meanwhile (bench/README.md).
PING_GRID_SHARE = 0.002


def next_ping_at(interval: float) -> float:
    """Return when the next ping is due: ``interval`` from now, brought back onto the grid.

    Never later than ``interval``, at most 0.2 % earlier, so a client still
    hears from us within the interval that keeps proxies open.
    """
    due = time.monotonic() + interval
    return due - due % (interval * PING_GRID_SHARE)

#: ``select.poll`` as the OS has it (gevent's would wait on the hub; a zero-timeout
#: check must not yield).
_unpatched_poll = monkey.get_original("select", "poll")


class InlineReader:
    """Stand-in for simple-websocket's reader thread (``thread_class``): it never runs.

    simple-websocket reads every socket in a background thread (a greenlet
    under gevent) with its own selector, next to the session's greenlet: about
    13 KiB of each idle connection's 48 KiB (bench/README.md). Instead,
    :meth:`WebSocketConnection.receive` does that reading in the session's
    greenlet, which waits for input anyway.
    """

    name = "callwire-inline-reader"

    def __init__(self, target: Any = None, **_: Any) -> None:
        pass

    def start(self) -> None:
        """Do nothing: the session's greenlet reads."""

    def join(self, timeout: float | None = None) -> None:
        """Do nothing: there is no thread to wait for."""


class InlineSocket:
    """Read a simple-websocket ``Server`` in the calling greenlet (see :class:`InlineReader`).

    Both transports (the raw protocol and Socket.IO's WebSocket) read this
    way: wait until the socket is readable or the event is set, feed what
    arrived to wsproto (which answers pings and close frames), and on the
    way out close the socket and break wsproto's parser cycle.
    """

    __slots__ = ("ws", "_watcher")

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        #: The hub's read watcher on the socket, made on first wait.
        self._watcher: Any = None

    def wait_readable(self, seconds: float | None) -> bool:
        """Wait until the socket is readable or ``ws.event`` is set; False on timeout."""
        ws = self.ws
        if self._watcher is None:
            self._watcher = gevent.get_hub().loop.io(ws.sock.fileno(), 1)
        ws.event.clear()
        self._watcher.start(self._readable)
        try:
            return ws.event.wait(seconds)
        finally:
            self._watcher.stop()

    def _readable(self) -> None:
        """Wake the waiting greenlet once.

        The watcher is level-triggered: left running, it fires again on every
        turn of the loop until the woken greenlet gets its turn, which in a
        storm (thousands of sockets readable at once, each waiting behind the
        others) made the loop call thousands of callbacks per turn.
        """
        self._watcher.stop()
        self.ws.event.set()

    def readable_now(self) -> bool:
        """Return True if the socket has input (or an end) waiting, without waiting."""
        poller = _unpatched_poll()
        poller.register(self.ws.sock.fileno(), select.POLLIN)
        return bool(poller.poll(0))

    def read_once(self) -> None:
        """Read what the socket has and let wsproto turn it into frames and answers."""
        ws = self.ws
        try:
            data = ws.sock.recv(ws.receive_bytes)
        except OSError:
            data = b""
        if not data:
            ws.connected = False
            return
        try:
            ws.ws.receive_data(data)
            ws.connected = ws._handle_events()
        except (LocalProtocolError, OSError):
            ws.connected = False

    def release(self) -> None:
        """Close the socket (bounded drain: SafeSocket.close) and free what holds it.

        wsproto's frame parser holds its own generator, which holds the parser:
        a cycle that only a full collection frees, and gunicorn.conf.py freezes
        long-lived objects out of the collector. Break it so it dies with us.
        """
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
        with contextlib.suppress(OSError):
            self.ws.sock.close()
        proto = getattr(getattr(self.ws.ws, "connection", None), "_proto", None)
        if proto is not None:
            proto._parse_more = None


class WebSocketConnection(Connection):
    """A connection over a simple-websocket ``Server`` (flask-sock)."""

    transport_name = "websocket"

    def __init__(
        self,
        ws: Any,
        *,
        send_queue: int,
        write_timeout: float,
        remote: str = "",
        send_queue_bytes: int = DEFAULT_SEND_QUEUE_BYTES,
    ) -> None:
        super().__init__(send_queue=send_queue, remote=remote, send_queue_bytes=send_queue_bytes)
        self._ws = ws
        self._write_timeout = write_timeout
        self._reading = InlineSocket(ws)
        interval = getattr(ws, "ping_interval", None)
        self._next_ping = next_ping_at(interval) if interval else None
        #: Consecutive pings the peer left unanswered; two drop it (docs/protocol.md).
        self._missed_pings = 0
        #: Why this side ended the connection when the session learns it late (logged).
        self.end_reason: str | None = None
        #: :meth:`send_close_now` wrote (or began writing) the close frame.
        self._close_sent = False

    def receive(self, timeout: float | None) -> Any:
        """Return the next frame, None on timeout, or :data:`WAKE`; raise when closed.

        Does in this greenlet what simple-websocket's reader thread would
        (see :class:`InlineReader`): waits until the socket is readable (or
        :meth:`_wake_session` sets the event), feeds wsproto, which answers
        pings and close frames, and sends a ping every ``ping_interval``,
        closing with 1011 a peer that left two consecutive pings unanswered.
        """
        ws = self._ws
        deadline = None if timeout is None else time.monotonic() + timeout
        while not ws.input_buffer:
            if not ws.connected:
                raise ConnectionClosed(ws.close_reason, ws.close_message)
            now = time.monotonic()
            if self._next_ping is not None and now >= self._next_ping:
                self._ping()
                continue
            if deadline is not None and now >= deadline:
                # A busy server may wake this greenlet late, after input arrived:
                # what the peer sent in time is read before the deadline counts.
                if not self._reading.readable_now():
                    return None
                self._reading.read_once()
                continue
            waits = [t - now for t in (deadline, self._next_ping) if t is not None]
            if self._reading.wait_readable(min(waits) if waits else None) and not ws.input_buffer:
                self._reading.read_once()
        return ws.input_buffer.pop(0)

    def _ping(self) -> None:
        """Send the next ping, or close with 1011 if the last two got no pong.

        1011, not 1008: a missed pong may be the server's own stall (a storm,
        a busy box), and a client that is still alive must retry, not stop.
        """
        ws = self._ws
        self._next_ping = next_ping_at(ws.ping_interval)
        self._missed_pings = 0 if ws.pong_received else self._missed_pings + 1
        if self._missed_pings >= 2:
            self.end_reason = f"closed {CLOSE_INTERNAL}: no pong to two pings"
            with contextlib.suppress(Exception):  # the peer may be gone already
                ws.close(reason=CLOSE_INTERNAL, message="Ping/Pong timeout")
            ws.connected = False
            return
        ws.pong_received = False
        try:
            ws.sock.send(ws.ws.send(Ping()))
        except OSError:
            ws.connected = False

    def close(self, code: int, reason: str) -> None:
        """Flush what is queued, then send a close frame with ``code``.

        A peer that does not take them within the grace period is not reading:
        the frame in flight is abandoned and the TCP connection dropped, so a
        dead client costs a bounded time and no kernel buffers.
        """
        grace = min(self._write_timeout, CLOSE_GRACE_SECONDS)
        writer = self._writer
        if writer is not None:
            writer.join(timeout=grace)
            if not writer.dead:
                writer.kill(timeout=grace)
        self.mark_closed()
        sock = getattr(self._ws, "sock", None)
        if isinstance(sock, SafeSocket):
            sock.write_timeout = grace
        with contextlib.suppress(Exception):  # the peer may be gone already
            if self._close_sent and isinstance(sock, SafeSocket):
                sock.send(b"")  # the rest of send_close_now's frame, if the kernel left some
            else:
                self._ws.close(reason=code, message=reason)
        if isinstance(sock, SafeSocket) and sock.broken:
            sock.abort()

    def send_close_now(self, code: int, reason: str) -> bool:
        """Send the close frame and end our side (FIN) at once, in the caller's greenlet.

        Only when nothing is being written or waits to be: then no greenlet is
        woken or switched to, and the session ends once, when the peer answers
        with its close frame or FIN (``receive`` raises, the log line gives
        ``end_reason``). A frame the kernel takes only in part is finished by
        the session (woken with :meth:`request_close`), within the write grace.
        """
        ws = self._ws
        sock = ws.sock
        if (self._writer is not None or self._queue or self.close_requested is not None
                or not ws.connected or not isinstance(sock, SafeSocket) or not sock.idle):
            return False
        self.end_reason = f"closed {code}: {reason}"
        self._close_sent = True
        try:
            sock.send_now(ws.ws.send(CloseConnection(code, reason)))
        except (OSError, LocalProtocolError):
            ws.connected = False
            self.request_close(code, reason)
            return True
        ws.connected = False
        self.mark_closed()
        if sock.unfinished:
            self.request_close(code, reason)
        else:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
        return True

    def linger(self) -> None:
        """Close the socket once the peer has seen our close (bounded; SafeSocket.close).

        The server would close the socket as soon as the handler returns;
        draining first lets a close frame reach the peer instead of a reset.
        """
        self._reading.release()

    def _write(self, frame: str) -> None:
        self._ws.send(frame)

    def _write_now(self, frame: str) -> bool:
        return send_without_waiting(self._ws, frame)

    def _write_unfinished(self) -> bool:
        return self._ws.sock.unfinished

    def _finish_write(self) -> None:
        self._ws.sock.send(b"")

    def _wake_session(self) -> None:
        # simple-websocket's receive() waits for input_buffer under its event;
        # a sentinel in the buffer is the only way to wake it without data.
        self._ws.input_buffer.append(WAKE)
        self._ws.event.set()

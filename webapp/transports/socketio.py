"""The Socket.IO layer (docs/protocol.md §9): socket.io-client frontends on the same hub.

Socket.IO v5 over Engine.IO v4 at ``/socket.io/``, built on python-socketio /
python-engineio in gevent mode and mounted around the Flask app's
``wsgi_app``: only ``/socket.io/...`` reaches it, flask-sock's ``/`` and
``/ws`` are untouched. A Socket.IO client is a :class:`SocketIOConnection`
in the hub (same queue bound, seam and dedup as the raw path) and meets the
rules of ``webapp.client_rules`` (identify, refresh, deadlines).

Where the libraries fall short of docs/protocol.md §9, this module fixes it at our seam:

- the WebSocket transport (``_async['websocket']``) strips nothing itself but
  :meth:`CallwireEngineIO.handle_request` removes the permessage-deflate offer
  first (the library would accept it, ~90 KiB per socket), and
  :class:`EngineWebSocket` reads in the request's own greenlet and writes what
  Engine.IO queued from there too: no reader thread, writer or ping greenlet
  per socket (:class:`CallwireEngineSocket` pings from a loop timer);
- our :class:`~webapp.connection.Connection` queue stays authoritative:
  Engine.IO's own queue is unbounded, so a write waits while it holds more
  than :data:`EIO_BACKLOG` packets, and a client that does not drain it in
  ``WS_WRITE_TIMEOUT`` fills our bounded queue and is closed as too slow;
- garbage from clients (bad polling bodies, undecodable packets, binary
  attachments, events that are not ``[name, ...]``) gets a 400, an ``error``
  event or a closed transport, never a traceback or a 500;
- Socket.IO has no close codes, so each end is rendered as docs/protocol.md §9 says: an
  ``error`` event, then a server disconnect (authentication, limits, token
  expiry: socket.io-client stays down) or a closed transport (shutdown, slow
  consumer, internal error: it reconnects by itself and resumes).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import engineio
import engineio.exceptions
import engineio.packet as eio_packet
import engineio.payload
import engineio.socket
import gevent
import gevent.event
import gevent.queue
import simple_websocket
import socketio
import socketio.exceptions
import socketio.packet as sio_packet

from webapp import logs, metrics
from webapp.admission import Refused, Ticket, client_address
from webapp.client_rules import ClientRules, CloseClient
from webapp.connection import (
    CLOSE_POLICY,
    CLOSE_RESTART,
    CLOSE_TOKEN_EXPIRED,
    CLOSE_TOO_SLOW,
    Connection,
    InlineReader,
    InlineSocket,
    SafeSocket,
    send_without_waiting,
)
from webapp.protocol import INVALID_FORMAT, ProtocolError, encode, error, pong
from webapp.realtime import Realtime

logger = logging.getLogger(__name__)

#: Where socket.io-client looks by default.
PATH = "socket.io"

#: Engine.IO's pingTimeout (docs/protocol.md §9): with the 25 s interval, a silent client
#: is dropped within 45 s, inside Heroku's 55 s idle limit.
PING_TIMEOUT = 20

#: Packets Engine.IO may hold for one client before our writer waits for it
#: to drain (its queue is unbounded; ours is the bounded one, WS_SEND_QUEUE).
EIO_BACKLOG = 16

#: Ends that must not be retried blindly: socket.io-client stays down after a
#: server disconnect. Every other end closes the transport, and it reconnects.
SERVER_DISCONNECT_CODES = frozenset({CLOSE_POLICY, CLOSE_TOKEN_EXPIRED})

#: Environ keys: the admission ticket of a new session, and the client's address.
ADMISSION_KEY = "callwire.admission"
ADDRESS_KEY = "callwire.address"

#: What :meth:`EngineWebSocket.wait` returns when Engine.IO queued something to send.
WAKE = object()

#: What the libraries' packet decoders raise on garbage (a deep JSON array is a
#: RecursionError; UnicodeDecodeError and binascii.Error are ValueErrors).
UNDECODABLE = (ValueError, KeyError, IndexError, TypeError, RecursionError)

#: The Engine.IO packet type that carries a Socket.IO packet, as sent.
EIO_MESSAGE = str(eio_packet.MESSAGE)

_decoder = json.JSONDecoder()

#: The last frame :func:`event_packet` turned into a packet, and that packet: the
#: connections of one user are written one after the other with the same frame.
_last_packet: tuple[str, str] = ("", "")


def event_packet(frame: str) -> str:
    """Return the Socket.IO EVENT packet that carries one server message frame.

    The event name is the message's ``event`` (call events, test messages) or
    ``type`` (connected, error, pong, authenticated); frames come from
    :func:`webapp.protocol.encode`, so the name is read off the frame's first
    key instead of decoding the whole frame again, and once per frame, not
    once per connection it is written to.
    """
    global _last_packet
    last_frame, packet = _last_packet
    if frame is last_frame:
        return packet
    packet = _event_packet(frame)
    _last_packet = (frame, packet)
    return packet


def _event_packet(frame: str) -> str:
    for prefix in ('{"event":"', '{"type":"'):
        if frame.startswith(prefix):
            start = len(prefix) - 1
            _, end = _decoder.raw_decode(frame, start)
            return f"2[{frame[start:end]},{frame}]"
    message = json.loads(frame)
    name = message.get("event") or message.get("type") or "message"
    return f"2[{json.dumps(str(name), ensure_ascii=False)},{frame}]"


class InvalidPayload(engineio.exceptions.EngineIOError):
    """A long-polling POST body that is not an Engine.IO payload."""


# -- Engine.IO ------------------------------------------------------------------


class NotifyingQueue(gevent.queue.JoinableQueue):
    """Engine.IO's per-socket queue, which can wake a WebSocket loop when a packet is put."""

    waker: Callable[[], None] | None = None

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        waker = self.waker
        if waker is not None:
            waker()


class EngineWebSocket:
    """Engine.IO's WebSocket for the gevent driver, read and written from one greenlet.

    The library's driver wraps simple-websocket with a reader thread per
    socket and runs a writer greenlet next to it; this one reads in the
    request's greenlet (as ``webapp.connection.InlineReader`` does for the raw
    path) and is woken by :class:`NotifyingQueue` when there is something to
    write. Every write is a whole, time-bounded ``sendall``
    (:class:`~webapp.connection.SafeSocket`), and frames larger than
    ``WS_MAX_MESSAGE_BYTES`` are refused with close code 1009.
    """

    def __init__(self, handler: Callable[[EngineWebSocket], Any], server: CallwireEngineIO):
        self.handler = handler
        self.server = server
        self.ws: simple_websocket.Server | None = None
        self._reading: InlineSocket | None = None
        self._wake_pending = False

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        for key in ("gunicorn.socket", "werkzeug.socket"):
            raw = environ.get(key)
            if raw is not None and not isinstance(raw, SafeSocket):
                environ[key] = SafeSocket(raw, self.server.write_timeout)
        self.ws = simple_websocket.Server(
            environ,
            thread_class=InlineReader,
            event_class=gevent.event.Event,
            max_message_size=self.server.max_http_buffer_size,
        )
        self._reading = InlineSocket(self.ws)
        try:
            self.handler(self)
        except Exception:
            # The 101 is sent: no HTTP answer is possible any more, only a log line.
            logger.exception("engine.io WebSocket failed")
        finally:
            self._reading.release()
        # As the library's driver does: the response was the handshake.
        if self.ws.mode == "gunicorn":
            raise StopIteration()
        if self.ws.mode == "werkzeug":
            raise ConnectionError()
        return []

    def wait(self, timeout: float | None = None) -> Any:
        """Return the next message, :data:`WAKE`, or None once closed (or on timeout)."""
        ws = self.ws
        deadline = None if timeout is None else time.monotonic() + timeout
        while not ws.input_buffer:
            if not ws.connected:
                return None
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            if self._reading.wait_readable(remaining) and not ws.input_buffer:
                self._reading.read_once()
        message = ws.input_buffer.pop(0)
        if message is WAKE:
            self._wake_pending = False
        return message

    def wake(self) -> None:
        """Make :meth:`wait` return :data:`WAKE` (called when Engine.IO queued a packet)."""
        if not self._wake_pending and self.ws is not None:
            self._wake_pending = True
            self.ws.input_buffer.append(WAKE)
            self.ws.event.set()

    def send(self, message: str | bytes) -> None:
        self.ws.send(message)

    def send_now(self, message: str) -> bool:
        """Write ``message`` without waiting if nothing is being written; False if not now.

        What ``send`` does, with :meth:`SafeSocket.send_now`: what the kernel
        does not take at once is kept and written first by the next write.
        """
        return send_without_waiting(self.ws, message)

    @property
    def unfinished(self) -> bool:
        """True when :meth:`send_now` left part of a frame to write."""
        return self.ws.sock.unfinished

    def finish(self) -> None:
        """Write what :meth:`send_now` left (waiting, with the write deadline)."""
        self.ws.sock.send(b"")

    def close(self) -> None:
        with contextlib.suppress(Exception):  # the peer may be gone already
            if self.ws.connected:
                self.ws.close()


class CallwireEngineSocket(engineio.socket.Socket):
    """An Engine.IO socket with Callwire's WebSocket loop, timer pings and strict bodies.

    The library creates its sockets itself; :class:`CallwireEngineIO` gives
    each new one this class before anything else uses it (it adds no state
    of its own beyond class-level defaults).
    """

    _ping_timer: Any = None
    #: Set by the ping timer for the WebSocket loop to send the ping (:meth:`_flush`).
    _ping_pending = False
    #: This session's place under the handshake caps (``webapp.admission``).
    admission: Ticket | None = None
    #: The WebSocket while its loop serves this session (after the upgrade), else None.
    websocket: EngineWebSocket | None = None
    #: The Socket.IO client (namespace ``/``) on this session, once connected.
    connection: SocketIOConnection | None = None
    #: ``X-Request-ID`` of the request that opened this session: every later request
    #: of the session logs under it, as a raw socket's lines carry its upgrade's.
    request_id: str | None = None

    def schedule_ping(self) -> None:
        """Ping after ``pingInterval`` from a loop timer, not a sleeping greenlet per socket."""
        if self.last_ping:
            self.last_ping = None
            self._start_timer(self.server.ping_interval, self._ping_due)

    def _start_timer(self, seconds: float, callback: Callable[[], None]) -> None:
        """(Re)start this socket's one timer: the next ping, or the pong it waits for."""
        timer = self._ping_timer
        if timer is not None:
            timer.stop()
        timer = gevent.get_hub().loop.timer(seconds)
        self._ping_timer = timer
        timer.start(callback)

    def _pong_overdue(self) -> None:
        """No pong within ``pingTimeout`` of the ping: the client is gone.

        The library finds such clients with a task that visits every socket
        once per ``pingTimeout`` (at 10,000 sockets, a wake-up every 2 ms:
        about 10 % of a core); this socket's own timer does it
        (``monitor_clients=False``), and on time.
        """
        self._ping_timer = None
        if self.last_ping and not self.closing and not self.closed:
            # Runs in the hub: closing runs handlers.
            gevent.spawn(self.close, wait=False, abort=False,
                         reason=self.server.reason.PING_TIMEOUT)

    def _ping_due(self) -> None:
        self._ping_timer = None
        # Runs in the hub: sending may close a timed-out socket, which runs handlers,
        # so the WebSocket loop sends it, or (long-polling) a greenlet.
        ws = self.websocket
        if ws is not None:
            self._ping_pending = True
            ws.wake()
        else:
            gevent.spawn(self._send_ping_now)

    def _send_ping_now(self) -> None:
        if not self.closing and not self.closed:
            self.last_ping = time.time()
            self.send(eio_packet.Packet(eio_packet.PING))
            if not self.closed:
                self._start_timer(self.server.ping_timeout, self._pong_overdue)

    def close(self, wait: bool = True, abort: bool = False, reason: str | None = None) -> None:
        """Close without waiting for the client to drain the queue (it may never come back)."""
        timer = self._ping_timer
        if timer is not None:
            timer.stop()
            self._ping_timer = None
        super().close(wait=False, abort=abort, reason=reason)
        # The library's monitor task removed closed sockets; it does not run.
        sockets = self.server.sockets
        if self.closed and sockets.get(self.sid) is self:
            del sockets[self.sid]
        if self.admission is not None:
            self.admission.release()

    def _bind_request_id(self) -> None:
        if self.request_id is not None:
            logs.request_id.set(self.request_id)

    def handle_get_request(self, environ: dict[str, Any], start_response: Any) -> Any:
        """Serve a long-polling GET (or the upgrade) under the session's request id."""
        self._bind_request_id()
        return super().handle_get_request(environ, start_response)

    def handle_post_request(self, environ: dict[str, Any]) -> None:
        """Read a long-polling POST body; a body that is not a payload is a 400."""
        self._bind_request_id()
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise InvalidPayload("invalid Content-Length") from None
        if length > self.server.max_http_buffer_size:
            raise engineio.exceptions.ContentTooLongError()
        body = environ["wsgi.input"].read(length)
        try:
            # UnicodeDecodeError and binascii.Error are ValueErrors too.
            packets = engineio.payload.Payload(encoded_payload=body.decode("utf-8")).packets
        except UNDECODABLE as problem:
            logger.info("engine.io %s: invalid polling body (%s)", self.sid, problem)
            raise InvalidPayload(str(problem)) from None
        for pkt in packets:
            self.receive(pkt)

    def _websocket_handler(self, ws: EngineWebSocket) -> list[bytes]:
        """Serve the WebSocket transport: upgrade (or connect), then read and write until closed."""
        server = self.server
        if self.connected:
            # An upgrade from long-polling: the probe, then the UPGRADE packet.
            self.upgrading = True
            if ws.wait(server.ping_timeout) != "2probe":
                self.upgrading = False
                return []
            ws.send("3probe")
            self.queue.put(eio_packet.Packet(eio_packet.NOOP))  # ends the pending poll
            if ws.wait(server.ping_timeout) != "5":
                self.upgrading = False
                return []
            self.upgraded = True
            self.upgrading = False
        else:
            self.connected = True
            self.upgraded = True
        self.queue.waker = ws.wake
        self.websocket = ws
        reason = server.reason.TRANSPORT_CLOSE
        try:
            while self._flush(ws):
                data = ws.wait()
                if data is WAKE:
                    continue
                if data is None:
                    break
                try:
                    pkt = eio_packet.Packet(encoded_packet=data)
                    self.receive(pkt)
                except engineio.exceptions.SocketIsClosedError:
                    break
                except (*UNDECODABLE, engineio.exceptions.UnknownPacketError):
                    logger.info("engine.io %s: invalid packet, closing the transport", self.sid)
                    reason = server.reason.TRANSPORT_ERROR
                    break
        finally:
            self.queue.waker = None
            self.websocket = None
            if self.connection is not None:
                self.connection.writer_gone(ws)
            self.close(wait=False, abort=True, reason=reason)
            ws.close()
        return []

    def _flush(self, ws: EngineWebSocket) -> bool:
        """Write a due ping, every packet Engine.IO queued, then the Socket.IO client's
        events; False once the socket closed or a write failed."""
        if self._ping_pending:
            self._ping_pending = False
            self._send_ping_now()
        queue = self.queue
        while True:
            try:
                pkt = queue.get(block=False)
            except gevent.queue.Empty:
                if self.connection is not None:
                    self.connection.write_pending(ws)
                return True
            try:
                if pkt is None:
                    return False
                ws.send(pkt.encode())
            except TimeoutError as failure:
                # A peer that stopped reading (WS_WRITE_TIMEOUT): the client sees the
                # transport close, reconnects and resumes.
                metrics.SLOW_CLIENTS_DROPPED.labels("write_failed").inc()
                logger.warning("engine.io %s too slow: %s, closing the transport",
                               self.sid, failure)
                return False
            except Exception as failure:  # noqa: BLE001 - any write failure ends the transport
                logger.info("engine.io %s: write failed (%s): peer gone",
                            self.sid, failure or type(failure).__name__)
                return False
            finally:
                queue.task_done()


class CallwireEngineIO(engineio.Server):
    """python-engineio's server with Callwire's socket class, driver and request guard."""

    def __init__(self, *, node: Realtime, **options: Any) -> None:
        super().__init__(**options)
        self.node = node
        self.write_timeout = node.settings.write_timeout
        self._async = {**self._async, "websocket": EngineWebSocket, "queue": NotifyingQueue}

    def _trigger_event(self, event: str, *args: Any, **kwargs: Any) -> Any:
        if event == "connect":
            # The first moment a new socket is ours to see, before it is used.
            sock = self.sockets.get(args[0])
            if type(sock) is engineio.socket.Socket:
                sock.__class__ = CallwireEngineSocket
                sock.admission = args[1].pop(ADMISSION_KEY, None)
                sock.request_id = logs.request_id.get()
        return super()._trigger_event(event, *args, **kwargs)

    def handle_request(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        """Serve one Engine.IO request; refuse deflate, new sessions over the caps, and garbage.

        A new session (no ``sid``) is admitted under the same handshake caps as
        a raw WebSocket (``webapp.admission``): 503 when the worker is full or
        stopping, 429 when its address has too many sockets waiting for init.
        """
        environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)
        if "sid=" not in environ.get("QUERY_STRING", ""):
            refusal = self._admit(environ)
            if refusal is not None:
                return _refuse(start_response, *refusal)
        try:
            return super().handle_request(environ, start_response)
        except (StopIteration, ConnectionError):
            raise  # the WebSocket driver's way of telling the server the response was sent
        except Exception as problem:  # noqa: BLE001 - a client's garbage is a 400, not a 500
            logger.warning(
                "socket.io request %s %s refused: %s: %s", environ.get("REQUEST_METHOD"),
                environ.get("QUERY_STRING", "")[:200], type(problem).__name__, problem,
            )
            start_response("400 BAD REQUEST", [("Content-Type", "text/plain")], sys.exc_info())
            return [b'"Bad Request"']
        finally:
            # A session that was never created gives its place back at once.
            ticket = environ.pop(ADMISSION_KEY, None)
            if ticket is not None:
                ticket.release()

    def _admit(self, environ: dict[str, Any]) -> tuple[int, str, int] | None:
        node = self.node
        if node.shutting_down:
            return 503, "Server restarting", 1
        address = client_address(environ, node.settings.forwarded_for_hops)
        environ[ADDRESS_KEY] = address
        try:
            environ[ADMISSION_KEY] = node.admission.admit(address)
        except Refused as refusal:
            return refusal.status, refusal.message, refusal.retry_after
        return None


def _refuse(start_response: Any, status: int, message: str, retry_after: int) -> list[bytes]:
    start_response(
        f"{status} {HTTPStatus(status).phrase.upper()}",
        [("Content-Type", "application/json"), ("Retry-After", str(retry_after))],
    )
    return [json.dumps({"success": False, "message": message}).encode()]


# -- Socket.IO ------------------------------------------------------------------


class SocketIOConnection(Connection):
    """A client connected over Socket.IO (namespace ``/``), as the hub sees it."""

    transport_name = "socket.io"

    def __init__(
        self,
        layer: SocketIOLayer,
        sid: str,
        eio_socket: engineio.socket.Socket,
        *,
        send_queue: int,
        send_queue_bytes: int,
        write_timeout: float,
        remote: str = "",
    ) -> None:
        super().__init__(send_queue=send_queue, send_queue_bytes=send_queue_bytes, remote=remote)
        self.layer = layer
        self.sid = sid
        self.eio_socket = eio_socket
        self.write_timeout = write_timeout
        self.rules = ClientRules(layer.node, self)
        self.deadline_timer: Any = None
        #: Set once the namespace's CONNECT packet is queued: nothing is written
        #: before, so ``connected`` and history follow the client's ``connect`` event.
        self._ready = False

    def mark_ready(self) -> None:
        """Let writes through (the CONNECT packet is queued)."""
        if not self._ready:
            self._ready = True
            if self._queue and self._writer is None:
                self._start_writer()

    def send_now(self, frame: str) -> None:
        """Queue ``frame`` on Engine.IO directly, ahead of our queue (an end's last word)."""
        with contextlib.suppress(engineio.exceptions.SocketIsClosedError):
            self.eio_socket.send(eio_packet.Packet(eio_packet.MESSAGE, data=event_packet(frame)))

    def _start_writer(self) -> None:
        """Over WebSocket, the session's loop writes (:meth:`write_pending`); over
        long-polling, a writer greenlet hands packets to Engine.IO's queue."""
        if not self._ready:
            return  # mark_ready starts it
        ws = self.eio_socket.websocket
        if ws is None:
            super()._start_writer()
            return
        self._writer = ws
        ws.wake()

    def _write_now(self, frame: str) -> bool:
        """Hand the event over now, with no writer greenlet, when nothing has to wait.

        Over WebSocket, when Engine.IO has nothing queued before it: written
        now. Over long-polling, while Engine.IO's queue is under
        :data:`EIO_BACKLOG`: put on it (which wakes the held GET), as the
        writer would, without the writer greenlet and its turn of the loop.
        """
        if not self._ready:
            return False
        sock = self.eio_socket
        ws = sock.websocket
        if ws is None:
            if sock.queue.qsize() >= EIO_BACKLOG:
                return False
            if sock.closed:
                raise engineio.exceptions.SocketIsClosedError()
            sock.queue.put(eio_packet.Packet(eio_packet.MESSAGE, data=event_packet(frame)))
            return True
        if sock.queue.qsize():
            return False
        return ws.send_now(EIO_MESSAGE + event_packet(frame))

    def _write_unfinished(self) -> bool:
        ws = self.eio_socket.websocket
        return ws is not None and ws.unfinished

    def _finish_write(self) -> None:
        writer = self._writer
        if isinstance(writer, EngineWebSocket):
            writer.finish()

    def write_pending(self, ws: EngineWebSocket) -> None:
        """Write the queue from the loop of ``ws``, if it was asked to (:meth:`_start_writer`)."""
        if self._writer is ws:
            self._drain()

    def writer_gone(self, ws: EngineWebSocket) -> None:
        """The loop of ``ws`` ended: it writes no more."""
        if self._writer is ws:
            self._writer = None

    def _write(self, frame: str) -> None:
        packet = event_packet(frame)
        writer = self._writer
        if isinstance(writer, EngineWebSocket):
            # In the WebSocket's own loop: the Engine.IO MESSAGE packet, written now.
            # A peer that stops reading blocks this write (WS_WRITE_TIMEOUT) while our
            # bounded queue fills: either way it is closed as too slow.
            writer.send(EIO_MESSAGE + packet)
            return
        self.eio_socket.send(eio_packet.Packet(eio_packet.MESSAGE, data=packet))
        queue = self.eio_socket.queue
        if queue.qsize() > EIO_BACKLOG and not queue.join(self.write_timeout):
            raise TimeoutError("Engine.IO queue did not drain: peer is not reading")

    def _wake_session(self) -> None:
        # request_close runs in the hub's caller (a publish, a shutdown): end elsewhere.
        gevent.spawn(self.layer.end_requested, self)


def mount(layer: Callable[..., Any], inner: Callable[..., Any], prefix: str) -> Callable[..., Any]:
    """Return a WSGI app: ``prefix...`` to the Socket.IO server, every other request to ``inner``.

    What the library's ``WSGIApp`` does for us, without its cost on every
    request (it defines a class per request for eventlet, which we do not run,
    and keeps it in the environ: ~3.7 KiB for each raw WebSocket's whole life;
    about 4 % of the worker's CPU under a stream of one-event POSTs). A
    closure, not a class with ``__call__``: calling an instance nests a C
    frame, which a WebSocket's parked greenlet keeps for its whole life.
    """

    def mounted(environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO")
        if path is not None and path.startswith(prefix):
            return layer(environ, start_response)
        return inner(environ, start_response)

    return mounted


class CallwireManager(socketio.Manager):
    """python-socketio's client manager without its disconnect that walks every room.

    The library's ``basic_disconnect`` copies the namespace's room map and
    tests each room for the client: with one room per client that is O(n)
    per disconnect, and 10,000 clients leaving took minutes of a worker's
    CPU (bench/README.md). Callwire clients are only ever in their own room
    and the namespace's ``None`` room, so only those two are left.
    """

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        rooms = self.rooms.get(namespace)
        if rooms is None:
            return
        for room in (sid, None):
            members = rooms.get(room)
            if members is not None and sid in members:
                self.basic_leave_room(sid, namespace, room)
        self.callbacks.pop(sid, None)
        for pending in (self.pending_connect, self.pending_disconnect):
            waiting = pending.get(namespace)
            if waiting is not None and sid in waiting:
                waiting.remove(sid)
                if not waiting:
                    del pending[namespace]


class SocketIOLayer(socketio.Server):
    """The Socket.IO server bound to a :class:`Realtime` node: handlers, ends and guards."""

    def __init__(self, node: Realtime) -> None:
        settings = node.settings
        library_logger = logging.getLogger("webapp.transports.socketio.library")
        if library_logger.level == logging.NOTSET:
            # The libraries log every packet at INFO; keep their warnings and errors.
            library_logger.setLevel(logging.WARNING)
        super().__init__(
            client_manager=CallwireManager(),
            async_mode="gevent",
            # Handlers run in the greenlet that read the packet, in order: an
            # auth sent right after init is judged after it.
            async_handlers=False,
            cors_allowed_origins=list(settings.allowed_origins) or "*",
            # Engine.IO announces whole seconds (it truncates), so at least 1.
            ping_interval=max(1, round(settings.ping_interval)),
            ping_timeout=PING_TIMEOUT,
            max_http_buffer_size=settings.max_message_bytes,
            # Each socket's own timer finds clients that stopped answering pings
            # (CallwireEngineSocket._pong_overdue), not a task that visits them all.
            monitor_clients=False,
            logger=library_logger,
            engineio_logger=library_logger,
            node=node,
        )
        self.node = node
        self.connections: dict[str, SocketIOConnection] = {}
        self.on("connect", self._on_connect)
        self.on("disconnect", self._on_disconnect)
        self.on("init", self._on_init)
        self.on("auth", self._on_auth)
        self.on("ping", self._on_ping)
        self.on("*", self._on_unknown)
        node.shutdown_hooks.append(self.close_unnamed_sessions)

    def _engineio_server_class(self) -> type[engineio.Server]:
        return CallwireEngineIO

    def wsgi_app(self, inner: Callable[..., Any]) -> Callable[..., Any]:
        """Return a WSGI app that serves ``/socket.io/`` here and everything else with ``inner``."""
        return mount(self.handle_request, inner, f"/{PATH}/")

    # -- library hooks ----------------------------------------------------------

    def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> None:
        # The library keeps the environ for the client's whole life; keep only
        # what we read (the full one holds the request and its socket).
        kept = {k: environ[k] for k in ("REMOTE_ADDR", ADDRESS_KEY) if k in environ}
        super()._handle_eio_connect(eio_sid, kept)

    def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        """Dispatch one Socket.IO packet; refuse what our protocol has no use for."""
        if not isinstance(data, str):
            self._refuse_format(eio_sid, "binary message")
            return
        try:
            pkt = self.packet_class(encoded_packet=data)
        except UNDECODABLE as problem:
            self._refuse_format(eio_sid, f"undecodable packet ({problem})")
            return
        kind = pkt.packet_type
        if kind == sio_packet.CONNECT:
            self._handle_connect(eio_sid, pkt.namespace, pkt.data)
        elif kind == sio_packet.DISCONNECT:
            self._handle_disconnect(eio_sid, pkt.namespace, self.reason.CLIENT_DISCONNECT)
        elif kind == sio_packet.EVENT:
            event = pkt.data
            if not (isinstance(event, list) and event and isinstance(event[0], str)):
                self._refuse_format(eio_sid, "event is not [name, ...]")
                return
            if event[0] in self.reserved_events:
                # The library would run the connect (or disconnect) handler again.
                sid = self.manager.sid_from_eio_sid(eio_sid, pkt.namespace or "/")
                answer = self._on_unknown(event[0], sid) if sid is not None else None
                if answer is not None and pkt.id is not None:
                    self._send_packet(eio_sid, self.packet_class(
                        sio_packet.ACK, namespace=pkt.namespace, id=pkt.id, data=[answer]))
                return
            self._handle_event(eio_sid, pkt.namespace, pkt.id, event)
        elif kind == sio_packet.ACK:
            if isinstance(pkt.data, list):
                self._handle_ack(eio_sid, pkt.namespace, pkt.id, pkt.data)
        else:
            # Binary events and acks (attachments), CONNECT_ERROR, unknown types.
            self._refuse_format(eio_sid, f"packet type {kind!r}")

    def _handle_connect(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        if (namespace or "/") != "/":
            # The library answers a bare string, which socket.io-client turns into an
            # error without a message; answer as the JavaScript server does.
            self._send_packet(eio_sid, self.packet_class(
                sio_packet.CONNECT_ERROR, data={"message": "Invalid namespace"},
                namespace=namespace))
            return
        try:
            super()._handle_connect(eio_sid, namespace, data)
        finally:
            sid = self.manager.sid_from_eio_sid(eio_sid, namespace or "/")
            connection = self.connections.get(sid) if sid is not None else None
            if connection is not None:
                connection.mark_ready()

    def _refuse_format(self, eio_sid: str, what: str) -> None:
        logger.info("socket.io %s: %s refused", eio_sid, what)
        sid = self.manager.sid_from_eio_sid(eio_sid, "/")
        connection = self.connections.get(sid) if sid is not None else None
        if connection is not None:
            connection.send(encode(error(INVALID_FORMAT)))

    # -- handlers -----------------------------------------------------------------

    def _on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> bool:
        node = self.node
        eio_sid = self.manager.eio_sid_from_sid(sid, "/")
        eio_socket = self.eio._get_socket(eio_sid)
        connection = SocketIOConnection(
            self,
            sid,
            eio_socket,
            send_queue=node.settings.send_queue,
            send_queue_bytes=node.settings.send_queue_bytes,
            write_timeout=node.settings.write_timeout,
            remote=environ.get(ADDRESS_KEY) or environ.get("REMOTE_ADDR", ""),
        )
        # The session's place under the handshake caps: init frees it from the
        # per-address count, the end of the connection (or session) gives it back.
        connection.admission = getattr(eio_socket, "admission", None)
        eio_socket.connection = connection
        self.connections[sid] = connection
        node.opened(connection)
        logger.info("connection %s opened from %s (socket.io %s)",
                    connection.id, connection.remote or "?", self.transport(sid))
        try:
            if node.shutting_down:
                raise CloseClient(CLOSE_RESTART, "Server restarting")
            if auth is not None and not isinstance(auth, dict):
                raise ProtocolError("Invalid auth payload: expected an object")
            if auth and (auth.get("userId") is not None or auth.get("token") is not None):
                connection.rules.identify(auth)
        except (ProtocolError, CloseClient) as refusal:
            code = refusal.code if isinstance(refusal, CloseClient) else CLOSE_POLICY
            message = refusal.message if isinstance(refusal, CloseClient) else str(refusal)
            self._forget(connection, f"refused {code}: {message}")
            raise socketio.exceptions.ConnectionRefusedError(message, {"code": code}) from None
        self._arm_deadline(connection)
        return True

    def _on_disconnect(self, sid: str, reason: str | None = None) -> None:
        connection = self.connections.get(sid)
        if connection is not None:
            self._forget(connection, f"socket.io: {reason}")

    def _on_init(self, sid: str, payload: Any = None, *_: Any) -> dict[str, Any] | None:
        # connected goes out from attach; the acknowledgement carries it too.
        return self._apply(sid, "init", payload, lambda c, p: c.rules.identify(p), emit=False)

    def _on_auth(self, sid: str, payload: Any = None, *_: Any) -> dict[str, Any] | None:
        return self._apply(sid, "auth", payload, lambda c, p: c.rules.refresh(p), emit=True)

    def _apply(
        self,
        sid: str,
        kind: str,
        payload: Any,
        rule: Callable[[SocketIOConnection, dict[str, Any]], dict[str, Any]],
        *,
        emit: bool,
    ) -> dict[str, Any] | None:
        """Run one client rule (init or auth) and answer it as the acknowledgement.

        A refusal that ends the client is carried out after the
        acknowledgement, so the client reads why before it is disconnected.
        """
        connection = self.connections.get(sid)
        if connection is None:
            return None
        if payload is None:
            payload = {}
        try:
            if not isinstance(payload, dict):
                raise ProtocolError(f"Invalid {kind} payload: expected an object")
            answer = rule(connection, payload)
        except ProtocolError as problem:
            return self._answer_error(connection, str(problem))
        except CloseClient as close:
            gevent.spawn(self.end, connection, close)
            return error(close.message or "")
        if emit:
            connection.send(encode(answer))
        self._arm_deadline(connection)
        return answer

    def _on_ping(self, sid: str, *_: Any) -> dict[str, Any] | None:
        connection = self.connections.get(sid)
        if connection is None:
            return None
        answer = pong()
        connection.send(encode(answer))
        return answer

    def _on_unknown(self, event: str, sid: str, *_: Any) -> dict[str, Any] | None:
        connection = self.connections.get(sid)
        if connection is None:
            return None
        return self._answer_error(connection, f"Unknown message type: {event[:64]}")

    def _answer_error(self, connection: SocketIOConnection, message: str) -> dict[str, Any]:
        answer = error(message)
        connection.send(encode(answer))
        return answer

    # -- deadlines and ends ---------------------------------------------------------

    def _arm_deadline(self, connection: SocketIOConnection) -> None:
        """(Re)start the one timer that checks the init deadline and the token's expiry."""
        timer = connection.deadline_timer
        if timer is not None:
            timer.stop()
            connection.deadline_timer = None
        wait = connection.rules.seconds_to_deadline()
        if wait is None or connection.sid not in self.connections:
            return
        timer = gevent.get_hub().loop.timer(wait + 0.01)
        connection.deadline_timer = timer
        timer.start(self._deadline_due, connection)

    def _deadline_due(self, connection: SocketIOConnection) -> None:
        gevent.spawn(self._check_deadline, connection)

    def _check_deadline(self, connection: SocketIOConnection) -> None:
        if connection.sid not in self.connections:
            return
        try:
            connection.rules.check_deadlines()
        except CloseClient as close:
            self.end(connection, close)
            return
        self._arm_deadline(connection)

    def end_requested(self, connection: SocketIOConnection) -> None:
        """Carry out ``connection.request_close`` (slow consumer, shutdown)."""
        if connection.close_requested is not None:
            code, text = connection.close_requested
            self.end(connection, CloseClient(code, text))

    def end(self, connection: SocketIOConnection, close: CloseClient) -> None:
        """End a client: an ``error`` event, then a server disconnect or a closed transport."""
        if self.connections.get(connection.sid) is not connection:
            return
        sock = connection.eio_socket
        if close.code == CLOSE_TOO_SLOW:
            self._discard_backlog(sock)
        if close.message:
            connection.send_now(encode(error(close.message)))
        logger.info("connection %s user=%s: ending (%d: %s)",
                    connection.id, connection.user_id, close.code, close.message)
        if close.code in SERVER_DISCONNECT_CODES:
            self.disconnect(connection.sid)
        else:
            # The client sees "transport close" and reconnects by itself.
            sock.close(wait=False, abort=False, reason=self.reason.SERVER_DISCONNECT)
        # Whatever the library did, the connection is gone for the hub.
        if self.connections.get(connection.sid) is connection:
            self._forget(connection, f"closed {close.code}: {close.message or ''}")

    def close_unnamed_sessions(self) -> None:
        """On shutdown, close Engine.IO sessions that never joined the namespace."""
        joined = {c.eio_socket for c in self.connections.values()}
        for sock in list(self.eio.sockets.values()):
            if sock not in joined and not sock.closed:
                sock.close(wait=False, abort=False, reason=self.reason.SERVER_DISCONNECT)

    @staticmethod
    def _discard_backlog(sock: engineio.socket.Socket) -> None:
        queue = sock.queue
        while True:
            try:
                queue.get(block=False)
            except gevent.queue.Empty:
                return
            queue.task_done()

    def _forget(self, connection: SocketIOConnection, reason: str) -> None:
        if self.connections.pop(connection.sid, None) is None:
            return
        timer = connection.deadline_timer
        if timer is not None:
            timer.stop()
            connection.deadline_timer = None
        if connection.eio_socket.connection is connection:
            connection.eio_socket.connection = None  # a reference cycle otherwise
        self.node.detach(connection)
        context = connection.log_context()
        if connection.eio_socket.request_id is not None:
            # Also when a timer or another request ends it, as the raw session's last line.
            context["request_id"] = connection.eio_socket.request_id
        logger.info("connection %s ended user=%s (%s)", connection.id, connection.user_id, reason,
                    extra=context)

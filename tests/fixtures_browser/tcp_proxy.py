"""A loopback TCP proxy that can break the connections it carries, as a network would.

The browser tests put it between Chromium and the server: ``cut()`` closes
every carried connection at once (both ends see the TCP connection end, the
browser without a close frame, as when a router drops it), ``blackhole()``
silently discards everything on the current connections (no FIN, no RST: a
dead NAT mapping or a laptop that changed networks), and ``down()`` to
``up()`` is an outage that also refuses new connections until it ends.
Connections made while the proxy is up work normally, so a client that
notices the break can reconnect through it.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from tests.support.net import free_port


class _Link:
    """One client connection and its upstream twin."""

    def __init__(self, downstream: socket.socket, upstream: socket.socket) -> None:
        self.downstream = downstream
        self.upstream = upstream
        self.dead = False

    def down(self) -> int:
        """Start an outage: cut every connection and drop new ones until :meth:`up`."""
        self._down = True
        return self.cut()

    def up(self) -> None:
        """End the outage."""
        self._down = False

    def close(self) -> None:
        for sock in (self.downstream, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


class TcpProxy:
    """Forward 127.0.0.1:<port> to 127.0.0.1:<target_port>, one thread pair per connection."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._links: list[_Link] = []
        self._lock = threading.Lock()
        self._closed = False
        self._down = False
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    @property
    def connections(self) -> int:
        """How many carried connections are still open and alive."""
        with self._lock:
            return sum(1 for link in self._links if not link.dead)

    def cut(self) -> int:
        """Close every current connection at both ends; return how many."""
        with self._lock:
            links, self._links = self._links, []
        for link in links:
            link.dead = True
            link.close()
        return len(links)

    def blackhole(self) -> int:
        """Discard all further bytes of every current connection, closing nothing."""
        with self._lock:
            for link in self._links:
                link.dead = True
            return len(self._links)

    def down(self) -> int:
        """Start an outage: cut every connection and drop new ones until :meth:`up`."""
        self._down = True
        return self.cut()

    def partition(self) -> int:
        """Start a network partition until :meth:`up`: current connections go silent
        (:meth:`blackhole`), new ones are dropped at once."""
        self._down = True
        return self.blackhole()

    def up(self) -> None:
        """End the outage."""
        self._down = False

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        self.cut()

    def _accept(self) -> None:
        while not self._closed:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            if self._down:
                downstream.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                downstream.close()
                continue
            link = _Link(downstream, upstream)
            with self._lock:
                self._links.append(link)
            for source, target in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(
                    target=self._pump, args=(link, source, target), name="proxy-pump", daemon=True
                ).start()

    @staticmethod
    def _pump(link: _Link, source: socket.socket, target: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if not data:
                if not link.dead:
                    link.close()
                return
            if link.dead:
                continue
            try:
                target.sendall(data)
            except OSError:
                link.close()
                return

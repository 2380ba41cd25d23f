"""A loopback TCP proxy that can cut every connection at a chosen moment (Redis outages)."""

from __future__ import annotations

import contextlib
import socket
import threading

from tests.support.net import free_port


class CuttingProxy:
    """Forward 127.0.0.1:``port`` to ``target_port``; :meth:`cut_after` arms an outage.

    Once armed with a marker, the first chunk from the server that contains
    it is the last thing to pass: the proxy closes that connection's server
    side first (nothing more the client sends can reach the server), hands
    the chunk to the client, then drops every connection and refuses new
    ones until :meth:`restore`. To the client it is a server that went away
    right after answering.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._marker: bytes | None = None
        self._down = threading.Event()
        self._cut = threading.Event()
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._stopping = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cut_after(self, marker: bytes) -> None:
        """Go down right after the next server chunk that contains ``marker``."""
        self._cut.clear()
        self._marker = marker

    def wait_cut(self, timeout: float) -> bool:
        """Wait until the armed cut happened; return whether it did."""
        return self._cut.wait(timeout)

    def restore(self) -> None:
        """Accept and forward connections again."""
        self._marker = None
        self._down.clear()

    def close(self) -> None:
        self._stopping = True
        self._down.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._drop_all()

    def _accept(self) -> None:
        while not self._stopping:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._down.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream, False),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True),
                             daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_server: bool) -> None:
        try:
            while True:
                chunk = source.recv(65536)
                if not chunk:
                    break
                marker = self._marker
                if from_server and marker is not None and marker in chunk:
                    self._marker = None
                    self._down.set()
                    source.close()  # the server sees nothing more from this client
                    sink.sendall(chunk)
                    self._drop_all()
                    self._cut.set()
                    return
                if self._down.is_set():
                    break
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    end.close()

    def _drop_all(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for end in pair:
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    end.close()

"""Admission at the handshake: a cap on sockets per worker, and per address until init.

Every transport asks :meth:`Admission.admit` before it accepts a client
(the raw WebSocket handshake in ``blueprints/ws.py``; the Socket.IO connect
likewise) and gets a :class:`Ticket`, or :class:`Refused` with the HTTP
status to answer:

- 503 when this worker already holds ``WS_MAX_CONNECTIONS`` sockets, kept
  below the open-file limit and gunicorn's ``worker_connections`` so the
  process never runs out of descriptors and plain HTTP keeps working;
- 429 when the client's address already holds ``WS_MAX_PENDING_PER_ADDRESS``
  sockets that have not sent a good init yet.

Once a client is initialised (``Realtime.attach``) its ticket stops counting
against its address; an initialised user is never evicted by either cap.
The ticket is released when the client is gone; release is idempotent, so
both the transport's cleanup and ``Realtime.detach`` may call it.

The address is the TCP peer, or behind ``FORWARDED_FOR_HOPS`` trusted
proxies the entry those proxies appended to ``X-Forwarded-For``: Heroku's
router appends the address it saw to whatever the client sent, so the last
entry is the real one and the first is whatever the client wants it to be.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)


class Refused(Exception):
    """A client is not admitted: answer ``status`` with ``message``, retry after some seconds."""

    def __init__(self, status: int, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


class Ticket:
    """One admitted client's place: counted per worker, and per address until init."""

    __slots__ = ("_admission", "address", "_pending", "_released")

    def __init__(self, admission: Admission, address: str) -> None:
        self._admission = admission
        self.address = address
        self._pending = True
        self._released = False

    def initialised(self) -> None:
        """Stop counting against the address: the client sent a good init."""
        if self._pending and not self._released:
            self._pending = False
            self._admission._leave_pending(self.address)

    def release(self) -> None:
        """Give the place back (the client is gone); safe to call more than once."""
        if self._released:
            return
        self._released = True
        if self._pending:
            self._pending = False
            self._admission._leave_pending(self.address)
        self._admission._leave()


class Admission:
    """Count this worker's sockets, and each address's not yet initialised."""

    def __init__(self, max_connections: int, max_pending_per_address: int) -> None:
        self.max_connections = max_connections
        self.max_pending_per_address = max_pending_per_address
        self._lock = threading.Lock()
        self._open = 0
        self._pending: dict[str, int] = {}
        self._refusals = 0

    @property
    def open(self) -> int:
        """Sockets admitted and not yet released."""
        return self._open

    def pending(self, address: str) -> int:
        """Sockets from ``address`` admitted and not yet initialised."""
        return self._pending.get(address, 0)

    def admit(self, address: str) -> Ticket:
        """Return a ticket for a client from ``address``, or raise :class:`Refused`."""
        with self._lock:
            if self._open >= self.max_connections:
                refusal = Refused(
                    503,
                    f"Server full: this worker holds {self._open} connections "
                    f"(limit {self.max_connections}); retry shortly",
                    retry_after=5,
                )
            elif self._pending.get(address, 0) >= self.max_pending_per_address:
                refusal = Refused(
                    429,
                    f"Too many connections waiting for init from {address} "
                    f"(limit {self.max_pending_per_address}); send init on the open ones first",
                    retry_after=2,
                )
            else:
                self._open += 1
                self._pending[address] = self._pending.get(address, 0) + 1
                return Ticket(self, address)
            self._refusals += 1
            refusals = self._refusals
        # One line per refusal would let a flood fill the log: the first, then every 1,000th.
        if refusals == 1 or refusals % 1000 == 0:
            logger.warning("handshake refused (%d so far): %s", refusals, refusal.message)
        raise refusal

    def _leave_pending(self, address: str) -> None:
        with self._lock:
            left = self._pending.get(address, 0) - 1
            if left > 0:
                self._pending[address] = left
            else:
                self._pending.pop(address, None)

    def _leave(self) -> None:
        with self._lock:
            self._open -= 1


def client_address(environ: Mapping[str, Any], forwarded_for_hops: int) -> str:
    """Return the client's address: the peer, or the one trusted proxies put in X-Forwarded-For.

    With ``forwarded_for_hops`` = N, the N-th entry from the end of
    ``X-Forwarded-For`` is the address the outermost trusted proxy saw;
    anything before it was written by the client and is not trusted.
    """
    peer = str(environ.get("REMOTE_ADDR") or "")
    if forwarded_for_hops <= 0:
        return peer
    entries = [
        entry.strip()
        for entry in str(environ.get("HTTP_X_FORWARDED_FOR", "")).split(",")
        if entry.strip()
    ]
    if not entries:
        return peer
    return entries[-forwarded_for_hops] if len(entries) >= forwarded_for_hops else entries[0]

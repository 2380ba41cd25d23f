"""The in-process registry of initialised connections, by user.

Two maps under one lock; it hands out copies and never writes to a client
while holding the lock (delivery only appends to each connection's queue).
"""

from __future__ import annotations

import threading
from typing import Any

import gevent

from webapp import metrics
from webapp.brokers.base import ConnectionInfo
from webapp.connection import Connection
from webapp.protocol import encode


class TooManyConnections(Exception):
    """The user already holds the maximum number of connections."""


class Hub:
    """Track which connections belong to which user in this process."""

    def __init__(self, max_connections_per_user: int) -> None:
        self._max_per_user = max_connections_per_user
        self._lock = threading.Lock()
        self._by_user: dict[str, set[Connection]] = {}
        self._user_of: dict[Connection, str] = {}

    def add(self, connection: Connection, user_id: str) -> None:
        """Register ``connection`` for ``user_id``; refuse beyond the per-user limit."""
        with self._lock:
            current = self._by_user.setdefault(user_id, set())
            if connection in current:
                return
            if len(current) >= self._max_per_user:
                if not current:
                    del self._by_user[user_id]
                raise TooManyConnections(
                    f"Too many connections: {user_id} already has {len(current)} open "
                    f"(limit {self._max_per_user})"
                )
            current.add(connection)
            self._user_of[connection] = user_id
            metrics.CONNECTIONS.labels(connection.transport_name).inc()

    def remove(self, connection: Connection) -> None:
        """Forget ``connection``; safe to call more than once."""
        with self._lock:
            user_id = self._user_of.pop(connection, None)
            if user_id is None:
                return
            current = self._by_user.get(user_id)
            if current is not None:
                current.discard(connection)
                if not current:
                    del self._by_user[user_id]
            metrics.CONNECTIONS.labels(connection.transport_name).dec()

    def connections_of(self, user_id: str) -> list[Connection]:
        """Return a copy of the user's connections."""
        with self._lock:
            return list(self._by_user.get(user_id, ()))

    def all_connections(self) -> list[Connection]:
        """Return a copy of every registered connection."""
        with self._lock:
            return list(self._user_of)

    def deliver(self, user_id: str, message: dict[str, Any]) -> int:
        """Queue ``message`` on each of the user's connections; return how many took it."""
        targets = self.connections_of(user_id)
        if not targets:
            return 0
        return self._deliver(targets, encode(message), message.get("id"))

    def deliver_frame(self, user_id: str, frame: str, event_id: str) -> int:
        """Like :meth:`deliver`, for an event already encoded (the Redis listener has the text)."""
        targets = self.connections_of(user_id)
        if not targets:
            return 0
        return self._deliver(targets, frame, event_id)

    def _deliver(self, targets: list[Connection], frame: str, event_id: str | None) -> int:
        taken = sum(1 for c in targets if c.deliver(frame, event_id))
        # Let the writers run once a queue builds up, so a burst from one publisher
        # (a batch) fills only the queues of clients that really fall behind. Not
        # after every message: that costs a loop turn and a writer greenlet per
        # message and halved batch throughput (bench/README.md).
        if any(c.wants_writer_turn() for c in targets):
            gevent.sleep(0)
        return taken

    def count(self) -> int:
        """Return how many connections are registered (initialised), without copying."""
        return len(self._user_of)

    def connection_infos(self) -> list[ConnectionInfo]:
        """Describe every registered connection."""
        return [c.info() for c in self.all_connections()]

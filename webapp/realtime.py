"""The node: joins the broker, the hub and the sessions of this process.

Views and sessions talk to :class:`Realtime` only; it is the one object that
knows both the broker (events between processes) and the hub (sockets in
this process). It is also the broker's :class:`~webapp.brokers.base.Node`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import gevent
from flask import current_app

from webapp import logs, metrics
from webapp.admission import Admission
from webapp.auth import TokenVerifier
from webapp.bodies import cut_reads
from webapp.brokers.base import (
    BatchInterrupted,
    Broker,
    BrokerUnavailable,
    ConnectionInfo,
    Outcome,
    Snapshot,
)
from webapp.config import Settings
from webapp.connection import CLOSE_RESTART, Connection
from webapp.events import EventDraft, PublishError, PublishResult
from webapp.hub import Hub
from webapp.protocol import connected, encode
from webapp.validation import InvalidEvent, check_draft, check_message

logger = logging.getLogger(__name__)

#: Sockets closed between two yields of the shutdown pass.
SHUTDOWN_PASS_SLICE = 500
#: How long the peers sent a close frame at shutdown have to answer before their sessions
#: close anyway: in a storm a busy machine answers 10,000 close frames over several seconds,
#: and well inside gunicorn's graceful_timeout (20 s).
SHUTDOWN_ANSWER_SECONDS = 10.0


class Realtime:
    """Publish events, attach and detach connections, and shut down cleanly."""

    def __init__(self, settings: Settings, broker: Broker, verifier: TokenVerifier) -> None:
        self.settings = settings
        self.broker = broker
        self.verifier = verifier
        self.hub = Hub(settings.max_connections_per_user)
        #: Handshake caps: sockets per worker, and per address until init.
        self.admission = Admission(settings.max_connections, settings.max_pending_per_address)
        #: Every open connection, initialised or not (the hub holds initialised ones).
        self._open: set[Connection] = set()
        self.shutting_down = False
        #: Called at shutdown after every connection was asked to close (transports
        #: close what never became a connection, e.g. bare Engine.IO sessions).
        self.shutdown_hooks: list[Callable[[], Any]] = []
        self._started_pid: int | None = None
        self._start_lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------

    def ensure_started(self) -> None:
        """Start the broker in this process (after fork, never in a gunicorn master)."""
        if self._started_pid == os.getpid():
            return
        with self._start_lock:
            if self._started_pid != os.getpid():
                self.broker.start(self)
                self._started_pid = os.getpid()

    def shutdown(self) -> int:
        """Close every connection with 1012 so clients reconnect elsewhere.

        One pass writes the close frames of idle sockets without waiting
        (``send_close_now``): a session then ends once, on its peer's answer,
        instead of being woken to write its close frame and again for the
        peer's FIN (0.7 ms of CPU per socket, 10,000 of them while the next
        server boots on the same machine: bench/README.md). The others, and
        peers that have not answered within ``SHUTDOWN_ANSWER_SECONDS``, are
        closed by their sessions as before. Runs once: gunicorn's master
        passes its own SIGTERM on to a worker that already has one.
        """
        if self.shutting_down:
            return 0
        self.shutting_down = True
        connections = list(self._open)
        at_once = 0
        for number, connection in enumerate(connections, 1):
            if connection.send_close_now(CLOSE_RESTART, "Server restarting"):
                at_once += 1
            else:
                connection.request_close(CLOSE_RESTART, "Server restarting")
            if number % SHUTDOWN_PASS_SLICE == 0:
                gevent.sleep(0)  # let deliveries and the listener's last accepts run
        for hook in self.shutdown_hooks:
            try:
                hook()
            except Exception:
                logger.exception("shutdown hook %r failed", hook)
        logger.info("shutdown: closing %d connections with 1012 (%d close frames sent at once)",
                    len(connections), at_once)
        cut_reads()
        gevent.spawn_later(SHUTDOWN_ANSWER_SECONDS, self._close_the_rest)
        return len(connections)

    def _close_the_rest(self) -> None:
        """Have the sessions whose peers never answered the close frame end now."""
        for connection in list(self._open):
            connection.request_close(CLOSE_RESTART, "Server restarting")

    # -- Node (called by the broker) --------------------------------------------

    def deliver(self, user_id: str, message: dict[str, Any]) -> int:
        return self.hub.deliver(user_id, message)

    def deliver_frame(self, user_id: str, frame: str, event_id: str) -> int:
        return self.hub.deliver_frame(user_id, frame, event_id)

    def local_connections(self) -> list[ConnectionInfo]:
        return self.hub.connection_infos()

    # -- sources ------------------------------------------------------------------

    def publish(self, draft: EventDraft, source: str) -> PublishResult:
        """Publish one event; raises PublishError or BrokerUnavailable.

        The draft is checked in full before the broker sees it: a refused
        event (:class:`~webapp.validation.InvalidEvent`) stores nothing.
        """
        outcome = self.publish_batch([draft], source)[0]
        if isinstance(outcome, PublishError):
            raise outcome
        return outcome

    def publish_batch(self, drafts: list[EventDraft], source: str) -> list[Outcome]:
        """Publish events in order; one outcome (result or refusal) per draft.

        Every draft is checked first (:func:`~webapp.validation.check_draft`):
        an invalid one is answered with its :class:`~webapp.validation.InvalidEvent`
        and never reaches the broker, so it stores nothing.
        Raises BrokerUnavailable, or BatchInterrupted with the outcomes known
        when the broker went away part way.
        """
        self.ensure_started()
        refusals = [_refusal(draft) for draft in drafts]
        valid = [draft for draft, refusal in zip(drafts, refusals, strict=True) if refusal is None]
        try:
            published = self.broker.publish_batch(valid) if valid else []
        except BrokerUnavailable as outage:
            # Put the refusals back in place: what is known is every outcome
            # before the first valid draft the broker did not answer.
            answered = outage.outcomes if isinstance(outage, BatchInterrupted) else []
            known = _in_order(refusals, answered)
            _count_events(source, known)
            metrics.events_in(source, "unavailable").inc(len(drafts) - len(known))
            if not known:
                raise
            raise BatchInterrupted(str(outage), known) from outage
        outcomes = _in_order(refusals, published)
        _count_events(source, outcomes)
        return outcomes

    def publish_transient(self, user_id: str, message: dict[str, Any]) -> int:
        """Send a live-only message (test messages) to every connection of a user.

        Raises :class:`~webapp.validation.InvalidEvent` for a message that
        could not be encoded as strict JSON.
        """
        check_message(message)
        self.ensure_started()
        return self.broker.publish_transient(user_id, message)

    # -- sessions -----------------------------------------------------------------

    def attach(
        self, connection: Connection, user_id: str, last_event_id: str | None, **extra: Any
    ) -> dict[str, Any]:
        """Register an initialised connection and send connected, then history, then live.

        Live events are held back while history is read, so nothing is lost or
        repeated at the seam. Returns the ``connected`` message it sent.
        Raises ``TooManyConnections``, and ``BrokerUnavailable`` when history
        cannot be read: the connection is then unregistered and must be closed
        with a code the client retries (never ``connected`` without the replay
        or snapshot it is owed).
        """
        self.ensure_started()
        connection.begin_seam()
        try:
            self.hub.add(connection, user_id)
        except Exception:
            connection.end_seam([], None)
            raise
        connection.mark_initialised(user_id)
        logs.bind(user=user_id)
        if connection.admission is not None:
            connection.admission.initialised()
        self.broker.presence_changed()
        recovered: bool | None = None
        snapshot = Snapshot([], None)
        events: list[dict[str, Any]] = []
        replay = None
        try:
            if last_event_id is not None:
                replay = self.broker.history_since(user_id, last_event_id)
                recovered = replay.recovered
                events, latest = replay.events, replay.latest_id
            if not recovered:
                snapshot = self.broker.snapshot(user_id)
                events, latest = snapshot.events, snapshot.latest_id
        except BrokerUnavailable as failure:
            logger.warning("connection %s user=%s: history unavailable, init refused (%s)",
                           connection.id, user_id, failure)
            self.hub.remove(connection)
            self.broker.presence_changed()
            raise
        if recovered is not None:
            extra["recovered"] = recovered
        if last_event_id is not None:
            metrics.RESUMES.labels(
                "broker_unavailable" if replay is None
                else "recovered" if recovered else "not_recovered"
            ).inc()
        message = connected(user_id, **extra)
        connection.send(encode(message))
        frames = [(encode(m), m["id"], m["callId"]) for m in events]
        connection.end_seam(frames, latest)
        logger.info(
            "connection %s initialised user=%s resume=%s recovered=%s replayed=%d",
            connection.id, user_id, last_event_id is not None, recovered, len(events),
        )
        return message

    def opened(self, connection: Connection) -> None:
        """Track a new connection so shutdown can close it even before init."""
        self._open.add(connection)
        logs.bind(connection_id=connection.id, transport=connection.transport_name)
        metrics.CONNECTIONS_OPENED.labels(connection.transport_name).inc()

    def detach(self, connection: Connection) -> None:
        """Forget a connection that has closed."""
        self._open.discard(connection)
        if connection.admission is not None:
            connection.admission.release()
        self.hub.remove(connection)
        connection.mark_closed()
        if connection.user_id is not None:
            self.broker.presence_changed()



def _refusal(draft: EventDraft) -> InvalidEvent | None:
    """Return why ``draft`` may not be published, or None when it may."""
    try:
        check_draft(draft)
    except InvalidEvent as refusal:
        return refusal
    return None


def _in_order(refusals: list[InvalidEvent | None], published: list[Outcome]) -> list[Outcome]:
    """Put the broker's outcomes back between the refusals, in the drafts' order.

    Stops at the first valid draft without an outcome (a batch the broker could
    not finish): nothing is known from there on.
    """
    answers = iter(published)
    outcomes: list[Outcome] = []
    for refusal in refusals:
        if refusal is not None:
            outcomes.append(refusal)
            continue
        answer = next(answers, None)
        if answer is None:
            break
        outcomes.append(answer)
    return outcomes


def _count_events(source: str, outcomes: list[Outcome]) -> None:
    """Count events in by outcome, one metric update per kind of outcome."""
    # A plain dict: collections.Counter's constructor costs more than a
    # one-event publish's whole count (bench/README.md, issue 10).
    counts: dict[str, int] = {}
    for o in outcomes:
        kind = "refused" if isinstance(o, PublishError) else o.dropped or "accepted"
        counts[kind] = counts.get(kind, 0) + 1
    for outcome, count in counts.items():
        metrics.events_in(source, outcome).inc(count)


def realtime() -> Realtime:
    """Return the :class:`Realtime` of the current app."""
    return current_app.extensions["callwire"]

"""The broker interface: how an event reaches every process holding its owner's sockets.

A broker carries events between processes and keeps what must survive a
connection (history, call owners, latest call states, idempotency answers).
It never touches sockets: it hands each live message to the :class:`Node`
of its process, which owns the local connections (see ``webapp.realtime``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Protocol

from webapp.events import CallState, EventDraft, PublishError, PublishResult

#: What a batch publish answers for one draft: its result, or why it was refused.
Outcome = PublishResult | PublishError


class BrokerUnavailable(Exception):
    """The broker's backing store cannot be reached right now; retry later."""


class BatchInterrupted(BrokerUnavailable):
    """The store went away during a batch; ``outcomes`` holds the drafts answered before."""

    def __init__(self, message: str, outcomes: list[Outcome]) -> None:
        super().__init__(message)
        #: Outcomes of the first ``len(outcomes)`` drafts; nothing is known of the rest.
        self.outcomes = outcomes


class BrokerBusy(BrokerUnavailable):
    """The store is reachable but this process could not get a turn in time; retry later."""


@dataclass(frozen=True)
class Replay:
    """Events newer than a client's ``lastEventId``, oldest first."""

    events: list[dict[str, Any]]
    #: False when the id is unknown or older than history: the client must refetch.
    recovered: bool
    #: The newest id the user has (None if the user has no history).
    latest_id: str | None = None


@dataclass(frozen=True)
class Snapshot:
    """The latest event of each of a user's calls that is not terminal, oldest first."""

    events: list[dict[str, Any]]
    latest_id: str | None = None


@dataclass(frozen=True)
class ConnectionInfo:
    """One open connection, as the clients endpoint lists it."""

    id: str
    user_id: str
    connected_at: str
    transport: str = "websocket"


class Node(Protocol):
    """What a broker may ask of the process it runs in."""

    def deliver(self, user_id: str, message: dict[str, Any]) -> int:
        """Hand a live message to this process's connections of ``user_id``; return how many."""

    def deliver_frame(self, user_id: str, frame: str, event_id: str) -> int:
        """Like :meth:`deliver`, for an event already encoded as ``frame`` (its id given)."""

    def local_connections(self) -> list[ConnectionInfo]:
        """List this process's initialised connections."""


class Broker(ABC):
    """Carry events to every process and keep per-user history and per-call state."""

    @abstractmethod
    def start(self, node: Node) -> None:
        """Begin delivering live messages to ``node``; call once per process, after fork."""

    @abstractmethod
    def stop(self) -> None:
        """Stop listening and release connections; pending publishes may be lost."""

    @abstractmethod
    def publish(self, draft: EventDraft) -> PublishResult:
        """Apply the ordering, ownership and idempotency rules, then store and fan out.

        Atomic per call: ids are increasing per user however many processes
        publish at once. Raises :class:`webapp.events.OwnershipConflict` or
        :class:`webapp.events.UnknownOwner` for refused drafts (nothing is
        stored or sent) and :class:`BrokerUnavailable` when the store is down.
        """

    def publish_batch(self, drafts: list[EventDraft]) -> list[Outcome]:
        """Publish ``drafts`` in order, each as :meth:`publish` would; one outcome per draft.

        A refused draft's outcome is its :class:`~webapp.events.PublishError`
        and the next draft is still published. When the store goes away part
        way, raises :class:`BatchInterrupted` carrying the outcomes of the
        drafts before the first one whose fate is unknown. Brokers override
        this to take the whole batch in a few round trips.
        """
        outcomes: list[Outcome] = []
        for draft in drafts:
            try:
                outcomes.append(self.publish(draft))
            except PublishError as refusal:
                outcomes.append(refusal)
            except BrokerUnavailable as outage:
                raise BatchInterrupted(str(outage), outcomes) from outage
        return outcomes

    @abstractmethod
    def publish_transient(self, user_id: str, message: dict[str, Any]) -> int:
        """Send a live-only message (no id, no history); return connections reached."""

    @abstractmethod
    def history_since(self, user_id: str, last_event_id: str) -> Replay:
        """Return the user's events newer than ``last_event_id``, oldest first."""

    @abstractmethod
    def snapshot(self, user_id: str) -> Snapshot:
        """Return the stored latest event of each non-terminal call of the user."""

    @abstractmethod
    def call_state(self, call_id: str) -> CallState | None:
        """Return what is known of a call, or None."""

    @abstractmethod
    def presence(self) -> list[ConnectionInfo]:
        """List every initialised connection in every process (best effort)."""

    @abstractmethod
    def connection_count(self, user_id: str) -> int:
        """Count the user's initialised connections in every process (best effort)."""

    def presence_changed(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Note that this process's connections changed (brokers sharing presence override)."""

    @abstractmethod
    def is_ready(self) -> bool:
        """Return True when publishes can be accepted right now."""

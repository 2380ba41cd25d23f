"""The in-process broker: one worker, everything in memory, delivery by direct call.

Like centrifuge's memory broker it calls the node's ``deliver`` directly while
holding its lock, so the order of ids is the order of delivery. Delivery only
enqueues (connections write from their own greenlets), so the lock is never
held across a network write.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from webapp.brokers.base import Broker, ConnectionInfo, Node, Outcome, Replay, Snapshot
from webapp.events import (
    TERMINAL,
    CallState,
    EventDraft,
    OwnershipConflict,
    PublishError,
    PublishResult,
    UnknownOwner,
    event_message,
    judge,
    next_event_id,
    utc_timestamp,
)

#: How often expired calls, histories and idempotency answers are swept away.
SWEEP_INTERVAL_SECONDS = 60.0


@dataclass
class _StoredEvent:
    id: str
    message: dict[str, Any]
    stored_at: float


@dataclass
class _UserLog:
    events: deque[_StoredEvent] = field(default_factory=deque)
    latest_id: str | None = None
    #: Non-terminal calls of the user and the id of their latest event.
    open_calls: dict[str, str] = field(default_factory=dict)


class MemoryBroker(Broker):
    """Keep history and call state in this process and deliver to its own node."""

    def __init__(
        self,
        history_size: int = 200,
        history_ttl_seconds: float = 86400,
        idempotency_ttl_seconds: float = 3600,
    ) -> None:
        self._history_size = history_size
        self._history_ttl = history_ttl_seconds
        self._idempotency_ttl = idempotency_ttl_seconds
        self._lock = threading.RLock()
        self._node: Node | None = None
        self._logs: dict[str, _UserLog] = {}
        self._calls: dict[str, tuple[CallState, float]] = {}
        #: (owner, idempotencyKey) -> first answer and its expiry.
        self._answers: dict[tuple[str, str | None], tuple[PublishResult, float]] = {}
        self._next_sweep = time.monotonic() + SWEEP_INTERVAL_SECONDS

    def start(self, node: Node) -> None:
        self._node = node

    def stop(self) -> None:
        self._node = None

    def publish(self, draft: EventDraft) -> PublishResult:
        with self._lock:
            now = time.time()
            self._sweep_if_due(now)
            return self._publish_locked(draft, now)

    def _publish_locked(self, draft: EventDraft, now: float) -> PublishResult:
        """Apply the rules to one draft and publish it; the caller holds the lock."""
        previous = self._live_call(draft.call_id, now)
        owner = self._owner_for(draft, previous)
        # Keys are scoped by owner: another user's key can never answer for this one.
        answer_key = (owner, draft.idempotency_key)
        if draft.idempotency_key is not None:
            cached = self._answers.get(answer_key)
            if cached is not None and cached[1] > now:
                first = cached[0]
                return PublishResult(first.id, 0, first.dropped, first.event)
        verdict = judge(previous, draft)
        if verdict != "accept":
            result = PublishResult(None, 0, verdict)
        else:
            result = self._accept(owner, draft, now)
        if draft.idempotency_key is not None:
            self._answers[answer_key] = (result, now + self._idempotency_ttl)
        return result

    def _owner_for(self, draft: EventDraft, previous: CallState | None) -> str:
        if previous is not None:
            if draft.user_id is not None and draft.user_id != previous.owner:
                raise OwnershipConflict(
                    f"Call {draft.call_id} belongs to another user; event refused."
                )
            return previous.owner
        if draft.user_id is None:
            raise UnknownOwner(
                f"userId is required: the owner of call {draft.call_id} is not known yet."
            )
        return draft.user_id

    def _accept(self, owner: str, draft: EventDraft, now: float) -> PublishResult:
        log = self._logs.setdefault(owner, _UserLog())
        event_id = next_event_id(log.latest_id)
        timestamp = draft.timestamp or utc_timestamp(now)
        message = event_message(event_id, draft, timestamp)
        log.latest_id = event_id
        log.events.append(_StoredEvent(event_id, message, now))
        while len(log.events) > self._history_size:
            log.events.popleft()
        if draft.status in TERMINAL:
            log.open_calls.pop(draft.call_id, None)
        else:
            log.open_calls[draft.call_id] = event_id
        state = CallState(draft.call_id, owner, draft.status, timestamp, message, draft.sequence)
        self._calls[draft.call_id] = (state, now + self._history_ttl)
        delivered = self._node.deliver(owner, message) if self._node else 0
        return PublishResult(event_id, delivered, None, message)

    def publish_batch(self, drafts: list[EventDraft]) -> list[Outcome]:
        # Under the lock for the whole batch, so no other publish interleaves
        # with it; each draft as publish() would, with its own time.
        outcomes: list[Outcome] = []
        with self._lock:
            self._sweep_if_due(time.time())
            for draft in drafts:
                try:
                    outcomes.append(self._publish_locked(draft, time.time()))
                except PublishError as refusal:
                    outcomes.append(refusal)
        return outcomes

    def publish_transient(self, user_id: str, message: dict[str, Any]) -> int:
        with self._lock:
            return self._node.deliver(user_id, message) if self._node else 0

    def history_since(self, user_id: str, last_event_id: str) -> Replay:
        with self._lock:
            events = self._fresh_events(user_id, time.time())
            log = self._logs.get(user_id)
            latest = log.latest_id if log else None
            ids = [e.id for e in events]
            if last_event_id not in ids:
                return Replay([], False, latest)
            newer = events[ids.index(last_event_id) + 1 :]
            return Replay([e.message for e in newer], True, latest)

    def snapshot(self, user_id: str) -> Snapshot:
        with self._lock:
            events = self._fresh_events(user_id, time.time())
            log = self._logs.get(user_id)
            if log is None:
                return Snapshot([], None)
            wanted = set(log.open_calls.values())
            return Snapshot([e.message for e in events if e.id in wanted], log.latest_id)

    def call_state(self, call_id: str) -> CallState | None:
        with self._lock:
            return self._live_call(call_id, time.time())

    def presence(self) -> list[ConnectionInfo]:
        return self._node.local_connections() if self._node else []

    def connection_count(self, user_id: str) -> int:
        return sum(1 for c in self.presence() if c.user_id == user_id)

    def is_ready(self) -> bool:
        return True

    def _fresh_events(self, user_id: str, now: float) -> list[_StoredEvent]:
        log = self._logs.get(user_id)
        if log is None:
            return []
        cutoff = now - self._history_ttl
        while log.events and log.events[0].stored_at <= cutoff:
            log.events.popleft()
        return list(log.events)

    def _live_call(self, call_id: str, now: float) -> CallState | None:
        entry = self._calls.get(call_id)
        if entry is None or entry[1] <= now:
            return None
        return entry[0]

    def _sweep_if_due(self, now: float) -> None:
        """Forget expired state so a long-running worker's memory stays bounded."""
        if time.monotonic() < self._next_sweep:
            return
        self._next_sweep = time.monotonic() + SWEEP_INTERVAL_SECONDS
        self._calls = {k: v for k, v in self._calls.items() if v[1] > now}
        self._answers = {k: v for k, v in self._answers.items() if v[1] > now}
        for user_id in list(self._logs):
            log = self._logs[user_id]
            self._fresh_events(user_id, now)
            log.open_calls = {c: i for c, i in log.open_calls.items() if c in self._calls}
            if not log.events and not log.open_calls:
                del self._logs[user_id]

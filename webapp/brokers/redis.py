"""The Redis broker: any number of workers and dynos share history, call state and fan-out.

What lives where (every key starts with ``callwire:`` and carries a TTL, so
Redis memory stays bounded; see ``docs/redis.md``):

- ``u:<user>:h`` sorted set of the user's last ``HISTORY_SIZE`` events, scored
  by id; ``u:<user>:last`` the user's newest id; ``u:<user>:open`` hash
  callId -> id of the latest event of each non-terminal call (the snapshot).
- ``call:<callId>`` hash: owner, status, sequence, updatedAt, latest event.
- ``idem:<owner length>:<owner>:<key>`` the first answer to a publish with that
  ``idempotencyKey`` for that owner (keys are scoped by owner).
- ``workers`` sorted set of live workers; ``w:<worker>:n`` / ``w:<worker>:c``
  that worker's connection counts and connections per user (presence).

**Publish is one Lua script** (``redis_scripts.PUBLISH``). It checks the
idempotency key, the owner and the forward-only rule (a mirror of
:func:`webapp.events.judge`), takes the id from Redis ``TIME`` (so ids
increase per user whichever worker publishes), stores history and call
state, caches the answer and ``PUBLISH``es the message, all atomically: the
order of ids is the order of delivery. The script takes a list of events
and applies them in order: a single publish is a list of one, and a batch
is one call per :data:`BATCH_CHUNK` events, so a batch costs a few round
trips, not one per event.

**Fan-out: one pub/sub channel (``callwire:events``) that every worker
subscribes to**, rather than a stream; a publish script sends the events it
accepted as one message, one envelope per line. Pub/sub keeps nothing in Redis and
adds no read cursor per worker; durability is already provided by the
per-user history, which resume needs anyway. Its weakness, that a worker
misses what is published while its subscription is down, is covered by
recovery: after (re)subscribing, the listener replays from history every
event newer than its last sign of life to the users it holds, and each
connection drops ids it already has. Per-user channels would avoid parsing
messages for users a worker does not hold, but cost a SUBSCRIBE per socket
and a race at every attach; one channel costs each worker a short parse
per event (its envelope's user and id: the event's text is passed on as it
is), which is cheap at Heroku's scale of a few workers.
A stream would duplicate the history and need trimming and a cursor per
worker for the same guarantee.

**Presence is best effort.** Each worker writes its connections to Redis
soon after they change and every few seconds, with a short expiry, so a
worker that dies vanishes. A write lists every connection of the worker, so
after one that took t seconds the next waits at least 20 t: in a reconnect
storm of 10,000 sockets presence lags by a second or two instead of taking
an eighth of the worker's CPU. ``delivered`` in a publish answer is the number
of the owner's connections that live workers reported last.

**Outages.** Commands use short socket timeouts and no automatic retries
(a publish must not run twice), and every failure to reach Redis becomes
:class:`BrokerUnavailable` (REST answers 503). The listener thread
reconnects with capped exponential backoff, then recovers what it missed.

**Connections are bounded and waited for.** redis-py's default pool opens up
to 100 connections and then raises "Too many connections" at once: during a
reconnect storm thousands of inits read history together, and a healthy
Redis looked down (resumes answered ``recovered: false``, publishes 503). The
pool here (:class:`_WaitingPool`) holds at most ``REDIS_MAX_CONNECTIONS`` and
makes a command wait up to ``REDIS_POOL_WAIT`` seconds for a free one; Redis
runs one command at a time anyway, so more connections would not serve more.
A wait that runs out is :class:`BrokerBusy` (still a retryable 503 / close
1013), never counted as Redis being unreachable.

Not for Redis Cluster: the publish script derives the owner's keys itself.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import gevent
import gevent.event
import redis
from gevent import monkey
from redis.backoff import NoBackoff
from redis.exceptions import (
    BusyLoadingError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
)
from redis.retry import Retry

from webapp.brokers import redis_scripts
from webapp.brokers.base import (
    BatchInterrupted,
    Broker,
    BrokerBusy,
    BrokerUnavailable,
    ConnectionInfo,
    Node,
    Outcome,
    Replay,
    Snapshot,
)
from webapp.events import (
    EVENT_NAME,
    CallState,
    EventDraft,
    OwnershipConflict,
    PublishError,
    PublishResult,
    UnknownOwner,
    event_id_order,
    event_message,
    utc_timestamp,
)
from webapp.validation import dumps

logger = logging.getLogger(__name__)

KEY_PREFIX = "callwire:"
CHANNEL = KEY_PREFIX + "events"
WORKERS_KEY = KEY_PREFIX + "workers"
#: Written by the readiness check after Redis refused a write (maxmemory).
READY_PROBE_KEY = KEY_PREFIX + "ready-probe"

#: A dead Redis must never hold a request for long.
CONNECT_TIMEOUT_SECONDS = 1.0
COMMAND_TIMEOUT_SECONDS = 2.0
#: Presence: rewritten this often (and soon after a change), expires after PRESENCE_TTL.
PRESENCE_INTERVAL_SECONDS = 5.0
PRESENCE_TTL_SECONDS = 15
#: Connect storms rewrite presence at most this often...
PRESENCE_MIN_GAP_SECONDS = 0.2
#: ...and, after a write that took t seconds, not again for PRESENCE_COST_FACTOR * t
#: (at most PRESENCE_INTERVAL_SECONDS): a write lists every connection, and with
#: 10,000 of them rewriting it five times a second took 13 % of a worker's CPU
#: in a reconnect storm (issue 12). Presence is best effort; it lags a little more.
PRESENCE_COST_FACTOR = 20.0
#: The listener pings an idle subscription this often and gives up without an answer.
LISTENER_POLL_SECONDS = 0.05
LISTENER_PING_SECONDS = 2.0
LISTENER_DEAD_SECONDS = 6.0
#: Reconnect backoff of the listener.
BACKOFF_MIN_SECONDS = 0.05
BACKOFF_MAX_SECONDS = 2.0
#: Recovery replays events newer than the last sign of life minus this margin
#: (covers clock skew between this machine and Redis; connections dedupe by id).
RECOVERY_MARGIN_SECONDS = 30.0
#: "All connections busy" is logged at most this often.
BUSY_LOG_SECONDS = 5.0

#: Drafts per publish script call: a batch of 500 is 5 round trips, and Redis is
#: busy with one call for a few milliseconds at most.
BATCH_CHUNK = 100

#: Errors that mean "Redis cannot take this right now", answered with 503.
_UNAVAILABLE = (
    redis.ConnectionError,
    redis.TimeoutError,
    BusyLoadingError,
    ReadOnlyError,
    OutOfMemoryError,
    OSError,
)

_PING_TOKEN = "callwire-listener"


class PoolExhausted(redis.ConnectionError):
    """Every pooled connection stayed busy for the whole wait: Redis is slow or we are busy."""


class _WaitingPool(redis.BlockingConnectionPool):
    """A bounded pool that waits for a free connection and says so when the wait runs out.

    redis-py's ``BlockingConnectionPool`` raises a plain ``ConnectionError``
    ("No connection available.") after its timeout, indistinguishable from
    Redis refusing the connection; this raises :class:`PoolExhausted`.
    """

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().get_connection(*args, **kwargs)
        except redis.ConnectionError as error:
            if str(error) != "No connection available.":
                raise
            raise PoolExhausted(
                f"all {self.max_connections} Redis connections stayed busy for {self.timeout:g}s"
            ) from None


def history_key(user_id: str) -> str:
    """Return the key of a user's event history."""
    return f"{KEY_PREFIX}u:{user_id}:h"


def _last_key(user_id: str) -> str:
    return f"{KEY_PREFIX}u:{user_id}:last"


def _open_key(user_id: str) -> str:
    return f"{KEY_PREFIX}u:{user_id}:open"


def _call_key(call_id: str) -> str:
    return f"{KEY_PREFIX}call:{call_id}"


def _counts_key(worker: str) -> str:
    return f"{KEY_PREFIX}w:{worker}:n"


def _connections_key(worker: str) -> str:
    return f"{KEY_PREFIX}w:{worker}:c"


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _message_parts(draft: EventDraft, timestamp: str) -> tuple[str, str]:
    """Split the event's JSON around its id, which only the publish script knows.

    Same keys and order as :func:`webapp.events.event_message`; the script
    joins ``head + id + tail``, so user data never passes through Lua's JSON.
    """
    body = {"event": EVENT_NAME, "callId": draft.call_id, "status": draft.status,
            "data": draft.data}
    encoded = dumps(body)
    head = encoded[:-1] + ',"id":"'
    tail = '","timestamp":' + dumps(timestamp) + "}"
    return head, tail


def _outcome(draft: EventDraft, timestamp: str, reply: list[Any]) -> Outcome:
    """Turn the publish script's answer for one draft into its result or refusal."""
    kind = _text(reply[0])
    if kind == "accept":
        event_id = _text(reply[1])
        return PublishResult(event_id, int(reply[2]), None,
                             event_message(event_id, draft, timestamp))
    if kind in ("duplicate", "stale"):
        return PublishResult(None, 0, kind)
    if kind == "cached":
        first = json.loads(reply[1])
        return PublishResult(first["id"], 0, first.get("dropped"), first.get("event"))
    if kind == "conflict":
        return OwnershipConflict(f"Call {draft.call_id} belongs to another user; event refused.")
    if kind == "unknown":
        return UnknownOwner(
            f"userId is required: the owner of call {draft.call_id} is not known yet."
        )
    raise RuntimeError(f"unexpected answer from the publish script: {kind!r}")


_decoder = json.JSONDecoder()


def _event_envelope(line: str) -> tuple[str, str, str] | None:
    """Return (user, event text, id) of a publish script's envelope, or None for another line.

    The script writes ``{"u":<user>,"i":"<id>","m":<event>}`` with the event
    last: only the user and the id are decoded, and the event's text (which
    Python encoded, see :func:`_message_parts`) is cut out, not decoded and
    encoded again.
    """
    if not line.startswith('{"u":') or not line.endswith("}"):
        return None
    user, end = _decoder.raw_decode(line, 5)
    if not line.startswith(',"i":', end):
        return None
    event_id, end = _decoder.raw_decode(line, end + 5)
    if not line.startswith(',"m":', end):
        return None
    return user, line[end + 5 : -1], event_id


def _call_now(function: Callable[..., Any], *args: Any) -> None:
    function(*args)


class _HubRelay:
    """Run node calls one after another, in order, on the gevent hub that created it.

    Under gunicorn's gevent worker, threads are greenlets of the one hub and
    the listener calls the node directly. In a process without
    monkey-patching (unit tests, scripts) the listener is a real thread, yet
    connections spawn their writers on the main hub: calls are queued and
    run there by one greenlet, which keeps their order.
    """

    def __init__(self) -> None:
        self._pending: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._wake = gevent.event.Event()
        self._loop = gevent.get_hub().loop
        self._runner = gevent.spawn(self._run)

    def __call__(self, function: Callable[..., Any], *args: Any) -> None:
        self._pending.append((function, args))
        self._loop.run_callback_threadsafe(self._wake.set)

    def close(self) -> None:
        self._runner.kill(block=False)

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            while self._pending:
                function, args = self._pending.popleft()
                try:
                    function(*args)
                except Exception:  # noqa: BLE001 - one bad call must not stop the rest
                    logger.exception("redis broker: node call failed")


class _Read:
    """One script call waiting for its turn in a :class:`_ReadBatcher` pipeline."""

    __slots__ = ("script", "keys", "args", "wake", "answered", "reply", "error")

    def __init__(self, script: Any, keys: list[str], args: list[Any]) -> None:
        self.script, self.keys, self.args = script, keys, args
        #: Set when answered, or when this caller may have to send the next batch.
        self.wake = threading.Event()
        self.answered = False
        self.reply: Any = None
        self.error: BaseException | None = None


class _ReadBatcher:
    """Send the history reads of concurrent inits to Redis together, as one pipeline.

    In a reconnect storm thousands of inits read history at once; each on its
    own took a pooled connection until its greenlet got its turn again, so
    with a saturated loop the pool stayed busy and inits were refused with
    1013 although Redis was idle, and each read paid redis-py's per-command
    cost (issue 12). Here a caller that finds no batch in flight sends every
    read waiting, its own included, in one pipeline on one connection, and
    hands each caller its reply or error. Reads that arrive meanwhile wait:
    the next caller to arrive sends them with its own, or, if none comes,
    the first of them is woken to do it. Nobody waits for a helper greenlet
    to be scheduled (a wake-up queued behind thousands of new connections
    took seconds). Errors are the caller's to map (``RedisBroker._available``),
    as if it had run the command itself.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._pending: list[_Read] = []
        self._sending = False

    def call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run ``script`` with ``keys`` and ``args`` in the next batch; return its reply."""
        read = _Read(script, keys, args)
        with self._lock:
            self._pending.append(read)
        while True:
            with self._lock:
                lead = not read.answered and not self._sending
                if lead:
                    self._sending = True
                    batch, self._pending = self._pending, []
            if lead:
                self._send(batch)
            else:
                read.wake.wait()
                read.wake.clear()
            if read.answered:
                break
        if read.error is not None:
            # Several callers may raise the same error: no traceback piles up on it.
            raise read.error.with_traceback(None)
        return read.reply

    def _send(self, batch: list[_Read]) -> None:
        try:
            pipe = self._client.pipeline(transaction=False)
            for read in batch:
                read.script(keys=read.keys, args=read.args, client=pipe)
            replies: list[Any] = pipe.execute(raise_on_error=False)
        except BaseException as error:  # noqa: BLE001 - every caller must hear of it
            replies = [error] * len(batch)
            if not isinstance(error, Exception):
                self._answer(batch, replies)
                raise
        self._answer(batch, replies)

    def _answer(self, batch: list[_Read], replies: list[Any]) -> None:
        with self._lock:
            self._sending = False
            following = self._pending[0] if self._pending else None
        for read, reply in zip(batch, replies, strict=True):
            if isinstance(reply, BaseException):
                read.error = reply
            else:
                read.reply = reply
            read.answered = True
            read.wake.set()
        if following is not None:
            following.wake.set()  # send the reads that came meanwhile, unless a newcomer does


def _worker_name() -> str:
    host = socket.gethostname().replace(":", "-")[:40]
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


class RedisBroker(Broker):
    """Keep history and call state in Redis and fan out through one pub/sub channel."""

    def __init__(
        self,
        url: str,
        history_size: int = 200,
        history_ttl_seconds: float = 86400,
        idempotency_ttl_seconds: float = 3600,
        max_connections: int = 50,
        pool_wait_seconds: float = 5.0,
        command_timeout_seconds: float = COMMAND_TIMEOUT_SECONDS,
    ) -> None:
        self._history_size = int(history_size)
        self._command_timeout = float(command_timeout_seconds)
        self._history_ttl = max(1, int(history_ttl_seconds))
        self._idempotency_ttl = max(1, int(idempotency_ttl_seconds))
        # from_url handles redis://, rediss:// (TLS) and unix://; URL query
        # arguments such as ?ssl_cert_reqs=none (Heroku's self-signed
        # certificates) reach the connection class. No automatic retries: a
        # publish that timed out may have run, and must not run twice.
        pool = _WaitingPool.from_url(
            url,
            max_connections=int(max_connections),
            timeout=float(pool_wait_seconds),
            socket_connect_timeout=min(CONNECT_TIMEOUT_SECONDS, self._command_timeout),
            socket_timeout=self._command_timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self._redis = redis.Redis(connection_pool=pool)
        self._redis.auto_close_connection_pool = True
        # EVALSHA, loading the script again after a Redis restart (NOSCRIPT).
        self._publish_script = self._redis.register_script(redis_scripts.PUBLISH)
        self._transient_script = self._redis.register_script(redis_scripts.TRANSIENT)
        self._count_script = self._redis.register_script(redis_scripts.COUNT)
        self._history_script = self._redis.register_script(redis_scripts.HISTORY)
        self._snapshot_script = self._redis.register_script(redis_scripts.SNAPSHOT)
        #: The history reads of inits (history_since, snapshot), batched.
        self._reads = _ReadBatcher(self._redis)
        self._worker = _worker_name()
        self._node: Node | None = None
        #: How the listener calls the node: directly, or through a _HubRelay.
        self._to_node: Callable[..., Any] = _call_now
        self._stopping = threading.Event()
        self._presence_wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listening = False
        self._reachable = True
        self._busy_logged_at = -BUSY_LOG_SECONDS
        #: Redis answered but refused a write (maxmemory reached, read-only replica).
        self._writes_refused = False
        #: Wall-clock time of the listener's last sign of life (recovery floor).
        self._alive_at = time.time()

    # -- lifecycle -------------------------------------------------------------

    def start(self, node: Node) -> None:
        if self._node is not None:
            return
        self._node = node
        if not monkey.is_module_patched("threading"):
            self._to_node = _HubRelay()
        self._stopping.clear()
        self._alive_at = time.time()
        try:
            self._write_presence()
        except _UNAVAILABLE as error:
            logger.warning("redis broker: presence not written at start (%s); will retry", error)
        for target, name in ((self._listen, "listener"), (self._keep_presence, "presence")):
            thread = threading.Thread(target=target, name=f"callwire-redis-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        logger.info("redis broker started as worker %s", self._worker)

    def stop(self) -> None:
        self._stopping.set()
        self._presence_wake.set()
        for thread in self._threads:
            thread.join(timeout=2 * LISTENER_POLL_SECONDS + self._command_timeout)
        self._threads = []
        if self._node is not None:
            try:
                pipe = self._redis.pipeline(transaction=True)
                pipe.delete(_counts_key(self._worker), _connections_key(self._worker))
                pipe.zrem(WORKERS_KEY, self._worker)
                pipe.execute()
            except _UNAVAILABLE:
                pass  # the keys expire by themselves
        self._node = None
        if isinstance(self._to_node, _HubRelay):
            self._to_node.close()
            self._to_node = _call_now
        self._redis.close()

    def presence_changed(self) -> None:
        """Ask for this worker's presence to be rewritten soon (the node calls it)."""
        self._presence_wake.set()

    # -- events ----------------------------------------------------------------

    def publish(self, draft: EventDraft) -> PublishResult:
        outcome = self.publish_batch([draft])[0]
        if isinstance(outcome, PublishError):
            raise outcome
        return outcome

    def publish_batch(self, drafts: list[EventDraft]) -> list[Outcome]:
        """Publish in chunks of :data:`BATCH_CHUNK` drafts, one script call (round trip) each.

        Each call is atomic and answers every draft of its chunk, so when Redis
        goes away the outcomes of the chunks answered before are known, and
        nothing of the rest is (a call that timed out may have run: it is
        never retried, and an ``idempotencyKey`` makes the client's retry safe).
        """
        outcomes: list[Outcome] = []
        for start in range(0, len(drafts), BATCH_CHUNK):
            chunk = drafts[start : start + BATCH_CHUNK]
            args: list[Any] = [KEY_PREFIX, self._history_size, self._history_ttl,
                               self._idempotency_ttl, CHANNEL]
            timestamps = []
            for draft in chunk:
                timestamp = draft.timestamp or utc_timestamp()
                timestamps.append(timestamp)
                head, tail = _message_parts(draft, timestamp)
                args += [
                    draft.call_id, draft.status, draft.user_id or "",
                    "" if draft.sequence is None else str(int(draft.sequence)),
                    # The script scopes the key by the call's owner, which only it knows.
                    draft.idempotency_key or "",
                    head, tail, timestamp,
                ]
            try:
                with self._available("publish"):
                    replies = self._publish_script(keys=[WORKERS_KEY], args=args)
                self._writes_refused = False
            except BrokerUnavailable as outage:
                if not outcomes:
                    raise
                raise BatchInterrupted(str(outage), outcomes) from outage
            for draft, timestamp, reply in zip(chunk, timestamps, replies, strict=True):
                outcomes.append(_outcome(draft, timestamp, reply))
        return outcomes

    def publish_transient(self, user_id: str, message: dict[str, Any]) -> int:
        payload = dumps({"u": user_id, "m": message})
        with self._available("publish_transient"):
            return int(self._transient_script(
                keys=[WORKERS_KEY], args=[KEY_PREFIX, user_id, payload, CHANNEL]
            ))

    def history_since(self, user_id: str, last_event_id: str) -> Replay:
        well_formed = (isinstance(last_event_id, str) and len(last_event_id) == 16
                       and event_id_order(last_event_id) >= 0)
        with self._available("history_since"):
            reply = self._reads.call(
                self._history_script,
                [history_key(user_id), _last_key(user_id)],
                [last_event_id if well_formed else "0", self._history_ttl,
                 "1" if well_formed else "0"],
            )
        latest = _text(reply[0])
        if not int(reply[1]):
            return Replay([], False, latest)
        return Replay([json.loads(row) for row in reply[2:]], True, latest)

    def snapshot(self, user_id: str) -> Snapshot:
        with self._available("snapshot"):
            reply = self._reads.call(
                self._snapshot_script,
                [history_key(user_id), _last_key(user_id), _open_key(user_id)],
                [self._history_ttl],
            )
        latest = _text(reply[0])
        if latest is None:
            return Snapshot([], None)
        return Snapshot([json.loads(row) for row in reply[1:]], latest)

    def call_state(self, call_id: str) -> CallState | None:
        with self._available("call_state"):
            fields = self._redis.hgetall(_call_key(call_id))
        if not fields or b"owner" not in fields:
            return None
        sequence = fields.get(b"seq") or b""
        return CallState(
            call_id=call_id,
            owner=fields[b"owner"].decode(),
            status=fields[b"status"].decode(),
            updated_at=fields[b"updatedAt"].decode(),
            event=json.loads(fields[b"event"]),
            sequence=int(sequence) if sequence else None,
        )

    # -- presence --------------------------------------------------------------

    def presence(self) -> list[ConnectionInfo]:
        mine = self._node.local_connections() if self._node is not None else []
        with self._available("presence"):
            workers = [w for w in self._live_workers() if w != self._worker]
            pipe = self._redis.pipeline(transaction=False)
            for worker in workers:
                pipe.hgetall(_connections_key(worker))
            listings = pipe.execute()
        others: list[ConnectionInfo] = []
        for worker, listing in zip(workers, listings, strict=True):
            for user, encoded in listing.items():
                for conn_id, connected_at, transport in json.loads(encoded):
                    others.append(ConnectionInfo(
                        id=f"{worker}/{conn_id}", user_id=user.decode(),
                        connected_at=connected_at, transport=transport,
                    ))
        return mine + others

    def connection_count(self, user_id: str) -> int:
        node = self._node
        local = sum(1 for c in node.local_connections() if c.user_id == user_id) if node else 0
        with self._available("connection_count"):
            others = self._count_script(
                keys=[WORKERS_KEY], args=[KEY_PREFIX, user_id, self._worker]
            )
        return local + int(others)

    def is_ready(self) -> bool:
        if self._node is not None and not self._listening:
            return False
        try:
            if self._writes_refused:
                # PING answers on a full Redis too: only a write tells the truth.
                self._redis.set(READY_PROBE_KEY, "1", ex=PRESENCE_TTL_SECONDS)
                self._writes_refused = False
            return bool(self._redis.ping())
        except PoolExhausted:
            # Busy, not down: every connection is serving a command right now.
            return self._reachable
        except (RedisError, OSError):
            return False

    def _live_workers(self) -> list[str]:
        return [w.decode() for w in self._redis.zrange(WORKERS_KEY, 0, -1)]

    def _write_presence(self) -> None:
        """Replace this worker's presence in Redis; it expires unless rewritten."""
        node = self._node
        if node is None:
            return
        listing: dict[str, list[list[str]]] = {}
        for info in node.local_connections():
            if info.user_id:
                listing.setdefault(info.user_id, []).append(
                    [info.id, info.connected_at, info.transport]
                )
        counts_key, connections_key = _counts_key(self._worker), _connections_key(self._worker)
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(counts_key, connections_key)
        if listing:
            pipe.hset(counts_key, mapping={u: len(c) for u, c in listing.items()})
            pipe.hset(connections_key, mapping={
                u: json.dumps(c, separators=(",", ":")) for u, c in listing.items()
            })
            pipe.expire(counts_key, PRESENCE_TTL_SECONDS)
            pipe.expire(connections_key, PRESENCE_TTL_SECONDS)
        now = time.time()
        pipe.zadd(WORKERS_KEY, {self._worker: now + PRESENCE_TTL_SECONDS})
        # Members stay a while past their expiry (clock skew between machines);
        # a dead worker's counts have expired by then anyway.
        pipe.zremrangebyscore(WORKERS_KEY, "-inf", now - 4 * PRESENCE_TTL_SECONDS)
        pipe.expire(WORKERS_KEY, 4 * PRESENCE_TTL_SECONDS)
        pipe.execute()

    def _keep_presence(self) -> None:
        """Rewrite presence every few seconds, and soon after the node says it changed."""
        while not self._stopping.is_set():
            self._presence_wake.wait(PRESENCE_INTERVAL_SECONDS)
            if self._stopping.is_set():
                return
            self._presence_wake.clear()
            started = time.monotonic()
            try:
                self._write_presence()
            except _UNAVAILABLE as error:
                logger.debug("presence not written: %s", error)
            except Exception:  # noqa: BLE001 - the loop must outlive any bug
                logger.exception("presence update failed")
            spent = time.monotonic() - started
            self._stopping.wait(min(PRESENCE_INTERVAL_SECONDS,
                                    max(PRESENCE_MIN_GAP_SECONDS, PRESENCE_COST_FACTOR * spent)))

    # -- the listener ------------------------------------------------------------

    def _listen(self) -> None:
        """Deliver pub/sub messages to the node; reconnect and recover after any failure."""
        backoff = BACKOFF_MIN_SECONDS
        while not self._stopping.is_set():
            pubsub = self._redis.pubsub()
            try:
                self._subscribe(pubsub)
                self._recover()
                self._alive_at = time.time()
                self._listening = True
                backoff = BACKOFF_MIN_SECONDS
                self._pump(pubsub)
            except _UNAVAILABLE as error:
                if not self._stopping.is_set():
                    logger.warning(
                        "redis listener: connection lost or refused (%s); retrying in %.2fs",
                        error or type(error).__name__, backoff,
                    )
            except Exception:  # noqa: BLE001 - the listener must outlive any bug
                logger.exception("redis listener failed; restarting in %.2fs", backoff)
            finally:
                self._listening = False
                # The connection may be gone already.
                with suppress(Exception):
                    pubsub.close()
            self._stopping.wait(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)

    def _subscribe(self, pubsub: redis.client.PubSub) -> None:
        """Subscribe and wait for Redis to confirm, so recovery cannot leave a gap."""
        pubsub.subscribe(CHANNEL)
        deadline = time.monotonic() + self._command_timeout
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=LISTENER_POLL_SECONDS)
            if message is not None and message["type"] == "subscribe":
                return
        raise redis.TimeoutError("no confirmation of SUBSCRIBE")

    def _recover(self) -> None:
        """Replay from history what the node's users may have missed while unsubscribed.

        Every event newer than the last sign of life (minus a margin) goes to
        the node again; each connection drops the ids it already has, so this
        repeats nothing and fills any gap, including for connections that had
        no event yet.
        """
        node = self._node
        if node is None:
            return
        users = sorted({c.user_id for c in node.local_connections() if c.user_id})
        if not users:
            return
        floor = max(self._alive_at - RECOVERY_MARGIN_SECONDS, time.time() - self._history_ttl)
        floor_id = f"({int(floor * 1_000_000)}"
        replayed = 0
        for start in range(0, len(users), 500):
            chunk = users[start : start + 500]
            pipe = self._redis.pipeline(transaction=False)
            for user in chunk:
                pipe.zrangebyscore(history_key(user), floor_id, "+inf")
            for user, rows in zip(chunk, pipe.execute(), strict=True):
                for row in rows:
                    self._to_node(node.deliver, user, json.loads(row))
                    replayed += 1
        logger.info("redis listener: replayed %d events of %d users from history "
                    "(connections skip the ones they have)", replayed, len(users))

    def _pump(self, pubsub: redis.client.PubSub) -> None:
        """Hand messages to the node until the subscription fails or the broker stops."""
        logger.info("redis listener subscribed to %s", CHANNEL)
        last_seen = time.monotonic()
        ping_sent: float | None = None
        while not self._stopping.is_set():
            message = pubsub.get_message(timeout=LISTENER_POLL_SECONDS)
            now = time.monotonic()
            if message is None:
                if ping_sent is None and now - last_seen > LISTENER_PING_SECONDS:
                    pubsub.ping(_PING_TOKEN)
                    ping_sent = now
                elif ping_sent is not None and now - ping_sent > LISTENER_DEAD_SECONDS:
                    raise redis.TimeoutError("subscription silent: no answer to PING")
                continue
            last_seen = now
            ping_sent = None
            self._alive_at = time.time()
            if message["type"] == "message":
                self._dispatch(message["data"])

    def _dispatch(self, payload: bytes) -> None:
        """Deliver each envelope of a pub/sub message (a publish script sends one per line).

        Compact JSON never holds a raw newline, so each line is one envelope:
        ``{"u":<user>,"i":"<id>","m":<event>}`` from the publish script, whose
        event text goes to the sockets as it is (:func:`_event_envelope`), or
        ``{"u":<user>,"m":<message>}`` (a test message), decoded in full.
        """
        node = self._node
        if node is None:
            return
        for line in payload.decode("utf-8").split("\n"):
            try:
                event = _event_envelope(line)
                if event is not None:
                    self._to_node(node.deliver_frame, *event)
                else:
                    envelope = json.loads(line)
                    self._to_node(node.deliver, envelope["u"], envelope["m"])
            except Exception:  # noqa: BLE001 - one bad envelope must not stop delivery
                logger.exception("redis listener: could not deliver a message")

    # -- errors ----------------------------------------------------------------

    @contextmanager
    def _available(self, operation: str) -> Iterator[None]:
        """Turn "Redis cannot be reached" into BrokerUnavailable; log changes of state once."""
        try:
            yield
        except PoolExhausted as error:
            now = time.monotonic()
            if now - self._busy_logged_at > BUSY_LOG_SECONDS:
                self._busy_logged_at = now
                logger.warning("redis busy during %s: %s", operation, error)
            raise BrokerBusy(f"Redis busy: {error}") from error
        except _UNAVAILABLE as error:
            if isinstance(error, (OutOfMemoryError, ReadOnlyError)):
                self._writes_refused = True
            if self._reachable:
                self._reachable = False
                logger.warning("redis unavailable during %s: %s", operation,
                               error or type(error).__name__)
            raise BrokerUnavailable(f"Redis unavailable: {error}") from error
        if not self._reachable:
            self._reachable = True
            logger.info("redis reachable again")

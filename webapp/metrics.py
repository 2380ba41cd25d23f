"""Prometheus metrics of this process (served at ``/metrics``).

With several workers each process reports its own figures; Prometheus adds
them up across the scrape targets. What each metric means and what to do
when it moves: docs/operations.md. No label ever holds a user or a secret.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import prometheus_client.values
from gevent import monkey
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# Each metric value guards its number with a lock, taken on every update (three
# per delivered frame). Under gevent's monkey-patching that lock is gevent's, in
# Python; an update never waits or switches greenlets while holding it, so the
# operating system's lock is just as safe, for greenlets and real threads alike,
# and several times cheaper (bench/README.md, issue 10).
prometheus_client.values.Lock = monkey.get_original("threading", "Lock")

CONNECTIONS = Gauge(
    "callwire_connections",
    "Initialised client connections held by this process, by transport",
    ["transport"],
)
CONNECTIONS_OPENED = Counter(
    "callwire_connections_opened_total",
    "Client connections accepted by this process (before init), by transport",
    ["transport"],
)
EVENTS_IN = Counter(
    "callwire_events_in_total",
    "Events received from sources (api, vapi, twilio, demo), by outcome "
    "(accepted, duplicate, stale, refused, unavailable)",
    ["source", "outcome"],
)
EVENTS_DELIVERED = Counter(
    "callwire_events_delivered_total", "Live messages written to client connections"
)
DELIVERY_LATENCY = Histogram(
    "callwire_delivery_latency_seconds",
    "Publish-to-write latency: from an event's acceptance (the time in its id) to its "
    "frame written to a client socket; test messages from reaching this process",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
)


@functools.cache
def events_in(source: str, outcome: str) -> Counter:
    """Return the ``EVENTS_IN`` child for ``source`` and ``outcome``, looked up once.

    ``labels()`` checks and joins its arguments under a lock on every call,
    which cost more than the count itself on each publish (issue 10); both
    label sets are small and fixed, so the cache stays small.
    """
    return EVENTS_IN.labels(source, outcome)


SLOW_CLIENTS_DROPPED = Counter(
    "callwire_slow_clients_dropped_total",
    "Connections closed with 4008 for falling behind, by reason (queue_full, write_failed)",
    ["reason"],
)
RESUMES = Counter(
    "callwire_resumes_total",
    "Inits with lastEventId, by outcome (recovered, not_recovered, broker_unavailable)",
    ["outcome"],
)
TOKEN_VERIFICATIONS = Counter(
    "callwire_token_verifications_total",
    "Firebase ID token checks, by outcome (valid, rejected, expired, unavailable)",
    ["outcome"],
)

#: The longest outgoing queue a connection reached since the previous scrape.
_queue_high_water = 0


def note_queue_depth(depth: int) -> None:
    """Remember ``depth`` if it is the longest outgoing queue since the last scrape."""
    global _queue_high_water
    if depth > _queue_high_water:
        _queue_high_water = depth


class _ProcessCollector(Collector):
    """Figures read at scrape time: broker reachability and the queue high-water mark."""

    def __init__(self) -> None:
        self.broker_ready: Callable[[], bool] | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        global _queue_high_water
        ready = self.broker_ready
        up = GaugeMetricFamily(
            "callwire_broker_up",
            "1 when the broker can take publishes (Redis answers and the listener is "
            "subscribed; always 1 in-process), else 0",
        )
        up.add_metric([], 1.0 if ready is None or ready() else 0.0)
        yield up
        depth, _queue_high_water = _queue_high_water, 0
        high = GaugeMetricFamily(
            "callwire_send_queue_high_water",
            "Longest outgoing queue (messages waiting) any connection of this process "
            "reached since the previous scrape",
        )
        high.add_metric([], float(depth))
        yield high

    def describe(self) -> list:
        # Describing nothing keeps the registry from calling collect() (and the
        # broker) at registration time.
        return []


_collector = _ProcessCollector()
REGISTRY.register(_collector)


def watch_broker(is_ready: Callable[[], bool]) -> None:
    """Report ``is_ready()`` as ``callwire_broker_up`` at each scrape (the latest app wins)."""
    _collector.broker_ready = is_ready

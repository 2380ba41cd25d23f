"""Prometheus metrics of this process (served at ``/metrics``).

With several workers each process reports its own figures; Prometheus adds
them up across the scrape targets.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CONNECTIONS = Gauge(
    "callwire_connections", "Initialised client connections held by this process"
)
EVENTS_IN = Counter(
    "callwire_events_in_total", "Events received from sources", ["source", "outcome"]
)
EVENTS_DELIVERED = Counter(
    "callwire_events_delivered_total", "Live messages written to client connections"
)
DELIVERY_LATENCY = Histogram(
    "callwire_delivery_latency_seconds",
    "Time from an event reaching this process to its frame being written",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
SLOW_CLIENTS_DROPPED = Counter(
    "callwire_slow_clients_dropped_total", "Connections closed with 4008 for falling behind"
)

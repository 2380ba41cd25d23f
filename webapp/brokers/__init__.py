"""Broker implementations and the one factory that picks one from configuration."""

from __future__ import annotations

from webapp.brokers.base import Broker, BrokerUnavailable, ConnectionInfo, Node, Replay, Snapshot
from webapp.config import Settings

__all__ = [
    "Broker",
    "BrokerUnavailable",
    "ConnectionInfo",
    "Node",
    "Replay",
    "Snapshot",
    "create_broker",
]


def create_broker(settings: Settings) -> Broker:
    """Return the Redis broker when ``REDIS_URL`` is set, else the in-process one."""
    if settings.redis_url:
        from webapp.brokers.redis import RedisBroker

        return RedisBroker(
            settings.redis_url,
            history_size=settings.history_size,
            history_ttl_seconds=settings.history_ttl_seconds,
            idempotency_ttl_seconds=settings.idempotency_ttl_seconds,
            max_connections=settings.redis_max_connections,
            pool_wait_seconds=settings.redis_pool_wait,
            command_timeout_seconds=settings.redis_timeout,
        )
    from webapp.brokers.memory import MemoryBroker

    return MemoryBroker(
        history_size=settings.history_size,
        history_ttl_seconds=settings.history_ttl_seconds,
        idempotency_ttl_seconds=settings.idempotency_ttl_seconds,
    )

"""Batch publishing through Redis, against the real server: Redis vanishes mid-batch.

The server reaches Redis through a loopback proxy that goes down right after
Redis answers the first script call of a batch (``tests/support/tcp_proxy.py``),
so the 503 answer must list exactly the items Redis answered.
"""

from __future__ import annotations

import pytest

from tests.support.redis_server import RedisServer
from tests.support.tcp_proxy import CuttingProxy
from webapp.brokers.redis import BATCH_CHUNK

pytestmark = pytest.mark.redis

USER = "batch-cut@example.com"


def test_redis_going_away_mid_batch_answers_503_with_the_items_accepted(
    redis_server: RedisServer, server_factory
):
    redis_server.flush()
    proxy = CuttingProxy(redis_server.port)
    try:
        server = server_factory({"REDIS_URL": proxy.url}, name="batch-cut")
        assert server.publish({"callId": "warm-up", "userId": USER, "status": "ringing"}).ok
        batch = [{"callId": f"cut-{n}", "userId": USER, "status": "ringing",
                  "idempotencyKey": f"cut-{n}"} for n in range(BATCH_CHUNK + 20)]
        batch[3] = {"callId": "cut-3", "status": "ringing"}  # unknown owner: its own 409

        proxy.cut_after(b"accept")
        answer = server.publish(batch)
        assert answer.status_code == 503, answer.text
        body = answer.json()
        assert body["success"] is False
        assert body["message"] == (f"Broker unavailable at item {BATCH_CHUNK}: "
                                   "items before it were accepted, retry the rest")
        results = body["data"]
        assert len(results) == BATCH_CHUNK
        assert results[3]["code"] == 409 and "owner of call cut-3" in results[3]["message"]
        accepted = [r for n, r in enumerate(results) if n != 3]
        assert all(r["code"] == 200 and r["id"] for r in accepted)

        proxy.restore()
        retry = server.publish(batch[BATCH_CHUNK:])
        assert retry.status_code == 200, retry.text
        assert all(r["code"] == 200 and r["id"] for r in retry.json()["data"])
    finally:
        proxy.close()

"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from webapp.errors import error_response
from webapp.realtime import realtime

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> dict[str, Any]:
    """Answer 200 while the process serves requests."""
    return {"success": True, "status": "ok"}


@bp.get("/readyz")
def readyz() -> Any:
    """Answer 200 when the broker can take publishes, else 503."""
    node = realtime()
    if node.shutting_down:
        return error_response(503, "Shutting down")
    if not node.broker.is_ready():
        return error_response(503, "Broker unreachable")
    return {"success": True, "status": "ready"}


@bp.get("/metrics")
def metrics() -> Response:
    """Expose this process's metrics in Prometheus text format."""
    return Response(generate_latest(), content_type=CONTENT_TYPE_LATEST)

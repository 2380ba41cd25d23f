"""The demo page at ``GET /`` (a plain HTTP GET; WebSocket upgrades go to blueprints.ws)."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("pages", __name__)


@bp.get("/")
def index() -> tuple[str, int, dict[str, str]]:
    """Serve the demo page."""
    return (
        "<!doctype html><title>Callwire</title><h1>Callwire</h1>"
        "<p>Connect a WebSocket to this URL. API docs: <a href='/docs'>/docs</a>.</p>",
        200,
        {"Content-Type": "text/html; charset=utf-8"},
    )

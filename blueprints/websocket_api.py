"""The seed's REST endpoints: send a test message, list connected clients."""

from __future__ import annotations

from typing import Any

from flask import g, request
from flask.views import MethodView
from flask_smorest import Blueprint, abort

from blueprints.schemas import JsonBodyParser, SuccessSchema, TestMessageSchema
from webapp.auth import Identity
from webapp.bodies import read_body
from webapp.brokers.base import BrokerUnavailable
from webapp.config import normalise_email
from webapp.events import utc_timestamp
from webapp.guards import current_identity, is_admin
from webapp.realtime import realtime
from webapp.validation import InvalidEvent

blp = Blueprint(
    "websocket", __name__, url_prefix="/api/v6/call/websocket",
    description="Test messages and connected clients (seed endpoints)",
)
blp.ARGUMENTS_PARSER = JsonBodyParser()


#: Largest test message request body (docs/protocol.md §10; README): 64 KiB.
MAX_TEST_MESSAGE_BYTES = 64 * 1024


@blp.before_request
def authenticate() -> None:
    """Verify the bearer token before the body is read: no identity is a 401, never a 400."""
    g.identity = current_identity()
    if request.method == "POST":
        read_body(MAX_TEST_MESSAGE_BYTES, realtime().settings.body_timeout)


@blp.route("/test")
class TestMessage(MethodView):
    @blp.doc(security=[{"bearerAuth": []}])
    @blp.arguments(
        TestMessageSchema, error_status_code=400,
        example={"targetUserId": "you@example.com", "message": "Hello from WebSocket!",
                 "event": "test.event"},
    )
    @blp.response(200, SuccessSchema)
    @blp.alt_response(401, description="Missing or invalid token")
    @blp.alt_response(408, description="Body not received within HTTP_BODY_TIMEOUT")
    @blp.alt_response(413, description="Body over 64 KiB (MAX_TEST_MESSAGE_BYTES)")
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Send a live-only test message to every connection of a user."""
        identity: Identity = g.identity
        target = normalise_email(body["targetUserId"])
        if not target:
            abort(400, message="targetUserId must be a non-empty email")
        message = {
            "event": body["event"],
            "callId": "test_call",
            "status": "test",
            "data": {
                "message": body["message"],
                "timestamp": utc_timestamp(),
                "sender": identity.email,
            },
        }
        try:
            delivered = realtime().publish_transient(target, message)
        except BrokerUnavailable:
            abort(503, message="Broker unavailable: test message not sent, retry shortly")
        except InvalidEvent as refusal:
            abort(400, message=str(refusal))
        return {
            "success": True,
            "message": "WebSocket message sent successfully",
            "data": message,
            "delivered": delivered,
        }


@blp.route("/clients")
class Clients(MethodView):
    @blp.doc(security=[{"bearerAuth": []}])
    @blp.response(200, SuccessSchema)
    @blp.alt_response(401, description="Missing or invalid token")
    def get(self) -> dict[str, Any]:
        """List open connections: every user's for admins, the caller's own otherwise."""
        identity: Identity = g.identity
        try:
            connections = realtime().broker.presence()
        except BrokerUnavailable:
            abort(503, message="Broker unavailable: cannot list clients right now")
        admin = is_admin(identity)
        if not admin:
            connections = [c for c in connections if c.user_id == identity.email]
        users: dict[str, list[dict[str, str]]] = {}
        for info in sorted(connections, key=lambda c: (c.user_id, c.connected_at)):
            users.setdefault(info.user_id, []).append(
                {"id": info.id, "connectedAt": info.connected_at, "transport": info.transport}
            )
        return {
            "success": True,
            "message": "WebSocket clients endpoint - check server logs for connected clients",
            "data": {
                "scope": "all" if admin else "self",
                "totalConnections": len(connections),
                "totalUsers": len(users),
                "users": [
                    {"userId": user, "connections": conns, "connectionCount": len(conns)}
                    for user, conns in users.items()
                ],
            },
        }

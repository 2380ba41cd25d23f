"""Callwire: call status events pushed to the browser of the call's owner.

``create_app`` builds the Flask app: settings (defaults, environment, test
overrides), the broker, the token verifier, then the blueprints.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from flask import Flask

from webapp import logs, metrics
from webapp.auth import TokenVerifier
from webapp.bodies import close_connection_after
from webapp.brokers import create_broker
from webapp.config import MAKE_RUN_DEFAULTS, load_settings
from webapp.connection import InlineReader
from webapp.errors import CallwireApi, handle_unexpected
from webapp.realtime import Realtime
from webapp.transports.socketio import SocketIOLayer
from webapp.validation import StrictJSONProvider

__all__ = ["create_app"]


def create_app(overrides: Mapping[str, str] | None = None) -> Flask:
    """Build a Callwire app; ``overrides`` use the environment variable names (README)."""
    settings = load_settings(overrides)
    logs.configure(
        settings.log_level,
        settings.log_format,
        # make run's defaults are public (README), and the start-up log names them.
        secrets=[
            value for value in (settings.events_api_key, settings.vapi_webhook_secret,
                                settings.twilio_auth_token, settings.redis_url)
            if value not in MAKE_RUN_DEFAULTS.values()
        ],
    )
    if settings.development:
        # firebase-admin reads its emulator switch from the process environment.
        os.environ.setdefault("FIREBASE_AUTH_EMULATOR_HOST", settings.emulator_host or "")

    app = Flask(__name__)
    app.config.update(
        API_TITLE="Callwire",
        API_VERSION="v6",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/docs",
        OPENAPI_SWAGGER_UI_URL="/docs/assets/",
        OPENAPI_SWAGGER_UI_CONFIG={"validatorUrl": None, "persistAuthorization": True},
        SOCK_SERVER_OPTIONS={
            "ping_interval": settings.ping_interval,
            "max_message_size": settings.max_message_bytes,
            # No reader thread per socket: the session's greenlet reads (13 KiB each).
            "thread_class": InlineReader,
        },
        MAX_CONTENT_LENGTH=8 * 1024 * 1024,
    )
    app.json = StrictJSONProvider(app)
    app.wsgi_app = close_connection_after(app.wsgi_app)  # type: ignore[method-assign]
    app.extensions["callwire"] = Realtime(
        settings,
        create_broker(settings),
        TokenVerifier(
            settings.project_id, allow_unverified_emails=settings.allow_unverified_emails
        ),
    )
    metrics.watch_broker(app.extensions["callwire"].broker.is_ready)

    # Imported here: the blueprints depend on webapp, never the other way round.
    from blueprints import call_events, dev, docs_assets, health, pages, webhooks, websocket_api, ws

    api = CallwireApi(
        app,
        spec_kwargs={
            "info": {"description": "Call status events over WebSocket. See the README."},
        },
    )
    api.spec.components.security_scheme(
        "bearerAuth", {"type": "http", "scheme": "bearer", "bearerFormat": "Firebase ID token"}
    )
    api.spec.components.security_scheme(
        "apiKeyAuth", {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    )
    if settings.development:
        api.register_blueprint(dev.blp)  # listed in /docs under its own tag, first
    else:
        app.register_blueprint(dev.off)  # every /dev URL: a JSON 404
    api.register_blueprint(websocket_api.blp)
    api.register_blueprint(call_events.blp)
    webhooks.register(api)
    app.register_blueprint(health.bp)
    app.register_blueprint(docs_assets.bp)
    app.register_blueprint(pages.bp)
    from blueprints import vendor  # the socket.io-client bundle (docs/protocol.md §9)

    app.register_blueprint(vendor.bp)
    app.register_blueprint(ws.bp)
    ws.sock.init_app(app)
    app.register_error_handler(Exception, handle_unexpected)
    # Socket.IO (docs/protocol.md §9) around the app: /socket.io/ to it, the rest to Flask.
    layer = SocketIOLayer(app.extensions["callwire"])
    app.extensions["callwire.socketio"] = layer
    app.wsgi_app = layer.wsgi_app(app.wsgi_app)

    app.wsgi_app = logs.request_context(app.wsgi_app)  # type: ignore[method-assign]

    settings.log_summary()
    return app

"""Voice provider webhooks (Vapi, Twilio): provider messages in, call status events out.

See ``docs/webhooks.md`` for how to point a provider at these endpoints.
"""

from __future__ import annotations

from flask_smorest import Api

from blueprints.webhooks import twilio, vapi

__all__ = ["register"]


def register(api: Api) -> None:
    """Document the webhooks' security schemes and register both blueprints on ``api``."""
    api.spec.components.security_scheme(
        "vapiSecret",
        {"type": "apiKey", "in": "header", "name": "X-Vapi-Secret",
         "description": "VAPI_WEBHOOK_SECRET (Vapi server.secret, or a credential "
                        "sending the X-Vapi-Secret header)"},
    )
    api.spec.components.security_scheme(
        "vapiBearer",
        {"type": "http", "scheme": "bearer",
         "description": "VAPI_WEBHOOK_SECRET as a bearer token (Vapi Bearer Token credential)"},
    )
    api.spec.components.security_scheme(
        "twilioSignature",
        {"type": "apiKey", "in": "header", "name": "X-Twilio-Signature",
         "description": "base64 HMAC-SHA1 of the public URL and the sorted form parameters, "
                        "keyed by TWILIO_AUTH_TOKEN"},
    )
    api.register_blueprint(vapi.blp)
    api.register_blueprint(twilio.blp)

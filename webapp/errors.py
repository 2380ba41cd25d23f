"""One JSON error shape for every HTTP error: ``{"success": false, "message": ...}``."""

from __future__ import annotations

import logging
from typing import Any

import marshmallow as ma
from apispec import BasePlugin
from flask import Response, jsonify
from flask_smorest import Api
from werkzeug.exceptions import HTTPException

logger = logging.getLogger(__name__)


class ErrorSchema(ma.Schema):
    """Every error answer (the OpenAPI document's default error response)."""

    success = ma.fields.Boolean(required=True, metadata={"description": "Always false"})
    message = ma.fields.String(required=True, metadata={"description": "What went wrong"})


def error_response(status: int, message: str, **extra: Any) -> Response:
    """Build the JSON error answer with ``status``."""
    response = jsonify({"success": False, "message": message, **extra})
    response.status_code = status
    return response


def _describe_validation(messages: Any) -> str:
    """Flatten webargs/marshmallow messages into one readable sentence."""
    parts: list[str] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                if key in {"json", "form", "query", "headers", "files"}:
                    walk(prefix, inner)
                else:
                    walk(f"{prefix}.{key}" if prefix else str(key), inner)
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            parts.append(f"{prefix}: {' '.join(value)}" if prefix else " ".join(value))
        else:
            parts.append(f"{prefix}: {value}")

    walk("", messages)
    return "Invalid request: " + "; ".join(parts) if parts else "Invalid request"


def _protocol_headers(error: HTTPException) -> list[tuple[str, str]]:
    """Return the headers an HTTP error must carry (``Allow`` on a 405), without its body's."""
    return [(name, value) for name, value in error.get_headers()
            if name.lower() != "content-type"]


class _ErrorBodies(BasePlugin):
    """Document the error shape on every 4xx/5xx response that a view names without a body."""

    def operation_helper(self, path: str | None = None, operations: dict | None = None,
                         **kwargs: Any) -> None:
        for operation in (operations or {}).values():
            for code, response in (operation.get("responses") or {}).items():
                if (str(code)[:1] in "45" and isinstance(response, dict)
                        and "$ref" not in response and not response.get("content")):
                    response["content"] = {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    }


class CallwireApi(Api):
    """flask-smorest Api whose errors use Callwire's JSON shape, in its answers and its document."""

    ERROR_SCHEMA = ErrorSchema

    def _init_spec(self, **kwargs: Any) -> None:
        kwargs["extra_plugins"] = [*(kwargs.get("extra_plugins") or ()), _ErrorBodies()]
        super()._init_spec(**kwargs)

    def handle_http_exception(self, error: HTTPException) -> Response:  # type: ignore[override]
        data = getattr(error, "data", None) or {}
        status = error.code or 500
        if status == 422:
            # A body that fails validation is a bad request for our clients (docs/protocol.md §10).
            status = 400
        if data.get("message"):
            message = data["message"]
        elif "messages" in data:
            # webargs validation errors (whatever status the view declared).
            message = _describe_validation(data["messages"])
        else:
            message = error.description or error.name
        response = error_response(status, message)
        for name, value in _protocol_headers(error):
            response.headers[name] = value
        for name, value in (data.get("headers") or {}).items():
            response.headers[name] = value
        if status == 401:
            response.headers.setdefault("WWW-Authenticate", "Bearer")
        return response


def handle_unexpected(error: Exception) -> Response:
    """Answer any uncaught exception with a JSON 500 and log it."""
    if isinstance(error, HTTPException):
        response = error_response(error.code or 500, error.description or error.name)
        for name, value in _protocol_headers(error):
            response.headers[name] = value
        return response
    if isinstance(error, RecursionError):
        # json.loads (Flask's and webargs') on a body nested thousands deep: the
        # client's fault, and a cheap way to make a server log 500s.
        return error_response(400, "Invalid JSON body: nested too deeply")
    logger.exception("unhandled error")
    return error_response(500, "Internal server error")

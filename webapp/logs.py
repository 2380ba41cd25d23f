"""Log lines as text or JSON, with the request and connection they belong to.

``LOG_FORMAT=json`` writes one JSON object per line (python-json-logger):
``time``, ``level``, ``logger``, ``message``, and, where known,
``request_id`` (Heroku's ``X-Request-ID``), ``connection_id``, ``user`` and
``transport``. The context lives in :mod:`contextvars`, which gevent keeps
per greenlet, so every line a request or a socket's session writes carries
it without being passed around; a record's own ``extra`` wins over it (for
greenlets that act for a connection they did not start in).

Both formats pass every line through :class:`Redactor`: a Firebase ID token
(any JWT) or a configured secret never reaches the log, whatever a message
or a traceback contains. This module imports nothing from the rest of
``webapp``: gunicorn.conf.py loads it on its own, before the worker's gevent
patching, to format gunicorn's lines the same way.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from typing import Any
from urllib.parse import urlsplit

from pythonjsonlogger.json import JsonFormatter

request_id: ContextVar[str | None] = ContextVar("callwire_request_id", default=None)
connection_id: ContextVar[str | None] = ContextVar("callwire_connection_id", default=None)
user: ContextVar[str | None] = ContextVar("callwire_user", default=None)
transport: ContextVar[str | None] = ContextVar("callwire_transport", default=None)

#: Context fields, in the order they appear in a JSON line.
CONTEXT: dict[str, ContextVar[str | None]] = {
    "request_id": request_id,
    "connection_id": connection_id,
    "user": user,
    "transport": transport,
}

#: Longest ``X-Request-ID`` taken from a request (Heroku's are UUIDs, 36 characters).
MAX_REQUEST_ID = 200
_REQUEST_ID_OK = re.compile(rf"^[\x21-\x7e]{{1,{MAX_REQUEST_ID}}}$")

#: Anything shaped like a JWT (a Firebase ID token, signed or emulator-unsigned).
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
REDACTED = "[redacted]"


def clean_request_id(raw: str | None) -> str | None:
    """Return a request id fit for a log line, or None (absent, too long, unprintable)."""
    if raw is None:
        return None
    raw = raw.strip()
    return raw if _REQUEST_ID_OK.match(raw) else None


def bind(**fields: str | None) -> None:
    """Set context fields (``connection_id``, ``user``, ``transport``) for this greenlet."""
    for name, value in fields.items():
        CONTEXT[name].set(value)


def clear() -> None:
    """Forget every context field of this greenlet (the request is over)."""
    for var in CONTEXT.values():
        var.set(None)


class Redactor:
    """Replace JWTs and known secret values in log text."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()

    def add(self, values: Iterable[str | None]) -> None:
        """Never log these values; a URL's password counts as a value of its own."""
        for value in values:
            if not value:
                continue
            if "://" in value:
                password = urlsplit(value).password
                if password:
                    self._secrets.add(password)
            # Short values would blank out ordinary words; keys are longer.
            if len(value) >= 6:
                self._secrets.add(value)

    def __call__(self, text: str) -> str:
        if "eyJ" in text:
            text = _JWT.sub(REDACTED, text)
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text


#: The process's redactor; ``configure`` adds the secrets of the settings in use.
redact = Redactor()


class ContextFilter(logging.Filter):
    """Copy the greenlet's context fields onto each record that lacks them."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in CONTEXT.items():
            if getattr(record, name, None) is None:
                setattr(record, name, var.get())
        return True


def _utc_time(record: logging.LogRecord) -> str:
    seconds = int(record.created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + (
        f".{int(record.msecs):03d}Z"
    )


class JsonLines(JsonFormatter):
    """One JSON object per line: time, level, logger, message, then the context."""

    def __init__(self, redactor: Callable[[str], str] | None = None) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            json_ensure_ascii=False,
        )
        self._redact = redactor or redact

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return _utc_time(record)

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in log_data.items():
            if value is None and key in CONTEXT:
                continue
            out[key] = self._redact(value) if isinstance(value, str) else value
        return out


class TextLines(logging.Formatter):
    """The human-readable line, with the request id appended where there is one."""

    def __init__(self, redactor: Callable[[str], str] | None = None) -> None:
        super().__init__("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")
        self._redact = redactor or redact

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = getattr(record, "request_id", None)
        if rid:
            line = f"{line} request_id={rid}"
        return self._redact(line)


def formatter(log_format: str) -> logging.Formatter:
    """Return the formatter for ``LOG_FORMAT`` (``text`` or ``json``)."""
    return JsonLines() if log_format == "json" else TextLines()


_HANDLER_MARK = "_callwire_handler"


def configure(level: str, log_format: str, secrets: Iterable[str | None] = ()) -> None:
    """Send log lines to stderr (gunicorn keeps it) in ``log_format``, once per process.

    A root logger that already has someone else's handler (pytest's capture,
    an embedding application) is left alone apart from the level; a second
    call replaces our own handler's format.
    """
    redact.add(secrets)
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]
    if root.handlers and not ours:
        return
    handler = ours[0] if ours else logging.StreamHandler(sys.stderr)
    setattr(handler, _HANDLER_MARK, True)
    handler.setFormatter(formatter(log_format))
    if not any(isinstance(f, ContextFilter) for f in handler.filters):
        handler.addFilter(ContextFilter())
    if not ours:
        root.addHandler(handler)
    root.setLevel(level)


def request_context(app: Callable[..., Any]) -> Callable[..., Any]:
    """WSGI middleware: bind Heroku's ``X-Request-ID`` for the request's log lines.

    The id is echoed in the response, so a client can quote it. The context
    is cleared when the application returns: a WebSocket's whole session runs
    inside that call, and a keep-alive connection's next request starts clean.
    A closure, not a class with ``__call__``: calling an instance nests a C
    frame, which a WebSocket's parked greenlet keeps for its whole life.
    """

    def request_context(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        rid = clean_request_id(environ.get("HTTP_X_REQUEST_ID"))
        clear()
        request_id.set(rid)
        if rid is None:
            respond = start_response
        else:

            def respond(status: str, headers: list[tuple[str, str]], *args: Any) -> Any:
                headers.append(("X-Request-ID", rid))
                return start_response(status, headers, *args)

        try:
            return app(environ, respond)
        finally:
            clear()

    return request_context

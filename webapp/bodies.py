"""Request bodies: read whole, within a size limit and a deadline, before anything parses them.

A view calls :func:`read_body` once its cheap checks (secret header,
signature present, Content-Length) have passed. The body is then read into
memory in one place, so that

- a body over the limit is a 413 whether it came with ``Content-Length`` or
  chunked (Werkzeug's own limit silently cuts a chunked body at the limit,
  which then fails to parse as a misleading 400);
- a body still arriving after ``HTTP_BODY_TIMEOUT`` seconds is a 408, and
  the connection is closed (its framing is unknown once a read was cut);
- a body being read when the worker stops is cut at once (503), so a slow
  client never holds a shutdown for the whole graceful timeout.

What was read replaces ``wsgi.input``, so ``request.get_json()``,
``request.form`` and schema loaders read it as usual.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterable
from typing import Any

import gevent
from flask import request
from flask_smorest import abort
from werkzeug.wsgi import get_content_length, get_input_stream

logger = logging.getLogger(__name__)

#: Environ key a view sets when the HTTP connection must close after its answer.
CLOSE_CONNECTION = "callwire.close_connection"

_READ_STEP = 64 * 1024

#: Greenlets reading a body right now, cut by :func:`cut_reads` at shutdown
#: (each removes itself when its read ends, whatever happens).
_readers: set[Any] = set()


class _BodyCut(Exception):
    """The worker is stopping: abandon the body being read."""


class _BodyTimeout(Exception):
    """The body did not arrive within its deadline."""


def read_body(max_bytes: int, timeout: float) -> bytes:
    """Read the whole request body, at most ``max_bytes``, within ``timeout`` seconds.

    Aborts 413 when the body is larger (declared or sent), 408 when it is
    still arriving at the deadline, 503 when the worker stops meanwhile.
    """
    environ = request.environ
    declared = get_content_length(environ)  # None when chunked or absent
    if declared is not None and declared > max_bytes:
        abort(413, message=_too_large(max_bytes))
    stream = get_input_stream(environ, safe_fallback=True)
    # A declared length is read exactly (no extra read to find the end); a
    # chunked body is read until it ends or passes the limit.
    wanted = max_bytes + 1 if declared is None else declared
    chunks: list[bytes] = []
    size = 0
    reader = gevent.getcurrent()
    _readers.add(reader)
    try:
        with gevent.Timeout(timeout, _BodyTimeout):
            while size < wanted:
                chunk = stream.read(min(_READ_STEP, wanted - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
    except _BodyTimeout:
        environ[CLOSE_CONNECTION] = True
        logger.info("%s %s: body not received within %gs (%d bytes so far)",
                    request.method, request.path, timeout, size)
        abort(408, message=f"Request body not received within {timeout:g} s")
    except _BodyCut:
        environ[CLOSE_CONNECTION] = True
        abort(503, message="Server restarting: send the request again")
    except OSError:
        # The client went away mid-body (gunicorn's NoMoreData is an OSError).
        environ[CLOSE_CONNECTION] = True
        abort(400, message="Request body ended before its declared end")
    finally:
        _readers.discard(reader)
    if size > max_bytes:
        # The rest is left to the server, which discards it for a short while
        # and then closes, so the client can still read this answer.
        abort(413, message=_too_large(max_bytes))
    body = b"".join(chunks)
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    environ.pop("HTTP_TRANSFER_ENCODING", None)
    environ.pop("wsgi.input_terminated", None)
    request.__dict__.pop("stream", None)
    return body


def cut_reads() -> int:
    """Make every body read in progress give up now (the worker is stopping)."""
    readers = list(_readers)
    for reader in readers:
        gevent.kill(reader, _BodyCut)
    if readers:
        logger.info("shutdown: cut %d request bodies still arriving", len(readers))
    return len(readers)


def _too_large(max_bytes: int) -> str:
    return f"Request body too large: at most {max_bytes} bytes"


def close_connection_after(app: Callable[..., Iterable[bytes]]) -> Callable[..., Any]:
    """WSGI middleware: end the HTTP connection after an answer whose body read was cut.

    gunicorn drops ``Connection`` headers set by an application; its own
    response object has ``force_close`` (then it sends ``Connection: close``
    and closes). Other servers simply keep their own behaviour. A closure, not
    a class with ``__call__``: calling an instance nests a C frame, which a
    WebSocket's parked greenlet keeps for its whole life (bench/README.md).
    """

    def close_connection_after(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if environ.get(CLOSE_CONNECTION):
                force_close = getattr(getattr(start_response, "__self__", None),
                                      "force_close", None)
                if callable(force_close):
                    force_close()
            return start_response(status, headers, exc_info)

        return app(environ, start)

    return close_connection_after

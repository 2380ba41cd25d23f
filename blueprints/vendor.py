"""The official socket.io-client browser bundle, served from the pinned npm package.

``package.json`` / ``package-lock.json`` pin socket.io-client; ``npm ci`` (run
by ``make install`` and ``.ci/run``) puts it in ``node_modules``. Nothing is
copied by hand and nothing comes from a CDN.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_from_directory

from webapp.errors import error_response

bp = Blueprint("vendor", __name__)

BUNDLE_DIR = Path(__file__).resolve().parents[1] / "node_modules" / "socket.io-client" / "dist"

#: The files a browser may ask for: the bundle and its source map.
FILES = frozenset({"socket.io.min.js", "socket.io.min.js.map"})


@bp.get("/vendor/<filename>", endpoint="socketio_client")
def socketio_client(filename: str) -> Response:
    """Serve the socket.io-client bundle (or its source map)."""
    if filename not in FILES:
        return error_response(404, "Not found")
    if not (BUNDLE_DIR / filename).is_file():
        return error_response(
            503, "socket.io-client is not installed on this server: run `npm ci` (make install)"
        )
    return send_from_directory(BUNDLE_DIR, filename, max_age=3600)

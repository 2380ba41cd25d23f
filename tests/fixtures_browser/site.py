"""A static web site on its own loopback port, like the app that embeds callwire.js.

Test pages are served from here rather than injected with Playwright's
request interception: Chromium gives an intercepted page no address space,
so its Local Network Access checks then block WebSockets to 127.0.0.1. A
page really served from 127.0.0.1 is allowed to connect, as in real life.
"""

from __future__ import annotations

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class StaticSite:
    """Serve the files of ``root`` on http://127.0.0.1:<port>/ from a background thread."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        handler = functools.partial(_QuietHandler, directory=str(root))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def put(self, name: str, html: str) -> str:
        """Publish ``html`` as ``/<name>``; return its URL."""
        (self.root / name).write_text(html)
        return f"{self.origin}/{name}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

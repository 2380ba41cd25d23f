"""WSGI entry point: gevent monkey-patching first, then the app."""

from gevent import monkey

monkey.patch_all()

from webapp import create_app  # noqa: E402

app = create_app()

"""Transports other than the raw JSON WebSocket.

The raw protocol's transport is ``webapp.connection.WebSocketConnection``
driven by ``webapp.session`` (flask-sock at ``/`` and ``/ws``); the Socket.IO
layer is ``webapp.transports.socketio``. Both turn their framing into the
transport-neutral rules of ``webapp.client_rules`` and hand the hub a
``webapp.connection.Connection``.
"""

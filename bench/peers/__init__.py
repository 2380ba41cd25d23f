"""Bench-only peer servers that the side-by-side benchmark drives with the same load generator.

Each speaks just enough of Callwire's publish API and socket protocol for
``bench.side_by_side``: ``POST /api/v6/call/events`` (one object or an
array) answered in Callwire's shape, and sockets identified by user. They
are never imported by the service.
"""

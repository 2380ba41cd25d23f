"""HTTP and WebSocket blueprints; each module serves one resource."""

"""The router's parts: the model registry, family server processes, pulls, the upload proxy, the
management routes and the Realtime WebSocket. `servers/router.py` wires them into one app."""

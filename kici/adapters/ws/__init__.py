"""WebSocket adapters of the ``WsConnection`` port: trio-websocket client, quart-trio/hypercorn server,
in-memory pair (PRO-33)."""

"""Adapters: one implementation per domain port (PostgreSQL, WebSocket, git, sandboxes, ...)."""

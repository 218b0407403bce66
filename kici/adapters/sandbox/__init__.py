"""Sandbox adapters (ISO-01): ``bwrap`` (default where installed) and ``process`` (explicit opt-in only)."""

"""The Platform tier: the public edge between git hosts and orchestrators.

It relays webhooks (raw bytes, chunked) to the orchestrators of the tenant that owns the routing
key, without ever holding webhook secrets, code or customer secrets; it knows tenants, their
orchestrator API keys and routing keys; and it hands the orchestrators' telemetry to the dashboard.
The composition root is :mod:`kici.services.platform.main` (``kici-platform``).
"""

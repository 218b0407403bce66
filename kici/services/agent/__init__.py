"""The agent daemon: one WebSocket link to the orchestrator and the jobs it runs (issue 5)."""

"""The orchestrator service: the execution brain (``execution``) and the front door built around it."""

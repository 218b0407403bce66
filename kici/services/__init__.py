"""Use cases and the composition root of each tier (platform, orchestrator, agent, runner)."""

"""Git-provider adapters: the local-file provider and universal-git (any git server, sparse clone)."""

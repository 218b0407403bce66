"""The webhook normalizers of each provider: github, generic, universal-git and local."""

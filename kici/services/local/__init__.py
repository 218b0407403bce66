"""``kici run local``: run matched workflows on this machine, each job in an isolated, sandboxed checkout."""

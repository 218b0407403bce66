"""``./scripts/demo``: kici's main job end to end on one machine (issue 7).

:mod:`.stack` launches the three tiers as real processes on loopback, :mod:`.sample` is the
repository whose push they build, :mod:`.progress` draws the run, and ``python -m kici.demo``
(:mod:`.__main__`) ties them together. The e2e tests reuse the launcher.
"""

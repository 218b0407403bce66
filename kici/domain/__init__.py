"""The rules of kici as pure functions and immutable models.

Nothing in this package performs I/O, reads the clock, the environment or a
random source: callers pass ``now``, jitter and configuration in. That is what
lets ``tests/properties`` state the specification as hypothesis properties.
"""

"""Execution core: state machine, status vocabularies, run outcome, needs gate."""

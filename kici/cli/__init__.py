"""Command-line entry points: ``kici`` for workflow authors, ``kici-admin`` for operators."""

"""``python -m kici`` runs the ``kici`` command."""

from kici.cli.main import main

main()

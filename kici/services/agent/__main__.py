"""``python -m kici.services.agent`` runs the ``kici-agent`` daemon."""

from kici.services.agent.main import main

main()

"""The workflow-authoring API imported by ``.kici/workflows/*.py``."""

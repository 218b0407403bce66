"""How a model attribute maps to a lock-file key, and when it may be omitted.

The lock keeps TypeScript camelCase keys while the models use snake_case: the
key is derived from the attribute name (``target_branches`` -> ``targetBranches``;
a trailing ``_`` is dropped, so ``not_`` -> ``not``).

Omission follows one rule read off the model declarations, so the schema lives
in one place: an attribute whose default is ``None``, :data:`UNSET` or ``False``
is *optional* -- written only while it differs from that default, and allowed to
be absent when parsing. ``False``-defaulted booleans are therefore the "only when
true" flags (``hasOnCancel``, ``resultAware``); booleans the spec writes whenever
set (``checkout``, ``failFast`` ...) are ``bool | None``. Every other attribute is
*required*: always written and required when parsing, even where a Python default
(``()``, ``"UTC"``) only eases construction.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs


class Unset(enum.Enum):
    """Marks an absent key whose value may legitimately be JSON ``null`` (input ``default``)."""

    UNSET = "UNSET"


UNSET = Unset.UNSET


def json_key(attribute: attrs.Attribute[Any]) -> str:
    """The lock-file key of a model attribute."""
    head, *rest = attribute.name.rstrip("_").split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def is_omissible(attribute: attrs.Attribute[Any]) -> bool:
    default = attribute.default
    return default is None or default is UNSET or default is False

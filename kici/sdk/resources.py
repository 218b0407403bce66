"""Job ``container`` and ``resources`` (SDK-38).

Resources are requests and limits of ``cpus`` and ``memory``. Either side alone
mirrors to the other, and a flat ``{"memory": "2g", "cpus": 1}`` sets both (PY+), so
the lock always gets the nested form with both sides. A request larger than its
limit is refused: no scheduler could honour it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from kici.sdk.checks import INVALID_OPTION, check_str_map, is_number
from kici.sdk.diagnostics import error
from kici.sdk.location import SourceLocation, caller_location

RESOURCES_ERROR = "E215"
MAX_CPUS = 256
_MEMORY = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgKMG])")
_UNIT = {"k": 1024, "m": 1024**2, "g": 1024**3}
_SPEC_KEYS = frozenset({"cpus", "memory"})
_SIDES = frozenset({"requests", "limits"})


@dataclass(frozen=True)
class ResourceSpec:
    cpus: float | None = None
    memory: str | None = None


Spec = ResourceSpec


@dataclass(frozen=True)
class Resources:
    requests: ResourceSpec | None = None
    limits: ResourceSpec | None = None


@dataclass(frozen=True, eq=False)
class Container:
    image: str
    env: dict[str, str] | None = None
    location: SourceLocation = field(default_factory=caller_location, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.image, str) or not self.image.strip():
            raise error(
                INVALID_OPTION,
                f"container image must be a non-empty string, got {self.image!r}",
                self.location,
            )
        if self.env is not None:
            object.__setattr__(self, "env", check_str_map(self.env, "container env", self.location))


def as_container(value: object, location: SourceLocation) -> Container | None:
    if value is None or isinstance(value, Container):
        return value
    if isinstance(value, str):
        return Container(value, location=location)
    raise error(
        INVALID_OPTION, f"container must be an image name or Container(image, env), got {value!r}", location
    )


def memory_bytes(text: str) -> float:
    found = _MEMORY.fullmatch(text)
    if found is None:
        raise ValueError(text)
    return float(found.group(1)) * _UNIT[found.group(2).lower()]


def _spec(value: object, side: str, why: list[str]) -> ResourceSpec | None:
    if value is None:
        return None
    if isinstance(value, dict):
        unknown = sorted(str(k) for k in value if k not in _SPEC_KEYS)
        if unknown:
            why.append(f"{side} has unknown keys {unknown} (allowed: cpus, memory)")
            return None
        value = ResourceSpec(cpus=value.get("cpus"), memory=value.get("memory"))
    if not isinstance(value, ResourceSpec):
        why.append(f"{side} must be Spec(cpus, memory) or a dict, got {value!r}")
        return None
    if value.cpus is None and value.memory is None:
        why.append(f"{side} must set cpus or memory")
    if value.cpus is not None and (
        not is_number(value.cpus) or not math.isfinite(value.cpus) or not 0 < value.cpus <= MAX_CPUS
    ):
        why.append(f"{side}.cpus must be in (0, {MAX_CPUS}], got {value.cpus!r}")
    if value.memory is not None and (
        not isinstance(value.memory, str) or _MEMORY.fullmatch(value.memory) is None
    ):
        why.append(f"{side}.memory must look like 512m, 2g or 1.5G, got {value.memory!r}")
    return value


def _mirrored(requests: ResourceSpec, limits: ResourceSpec, why: list[str]) -> None:
    if requests.cpus is not None and limits.cpus is not None and requests.cpus > limits.cpus:
        why.append(f"requests.cpus ({requests.cpus}) exceeds limits.cpus ({limits.cpus})")
    if (
        requests.memory is not None
        and limits.memory is not None
        and memory_bytes(requests.memory) > memory_bytes(limits.memory)
    ):
        why.append(f"requests.memory ({requests.memory}) exceeds limits.memory ({limits.memory})")


def as_resources(value: object, job_label: str, location: SourceLocation) -> Resources | None:
    """Normalize to both sides set; every problem found is listed in one E215."""
    if value is None:
        return None
    why: list[str] = []
    if isinstance(value, dict) and value.keys() <= _SPEC_KEYS:
        flat = _spec(value, "resources", why)
        requests = limits = flat
    elif isinstance(value, dict) and value.keys() <= _SIDES:
        requests = _spec(value.get("requests"), "requests", why)
        limits = _spec(value.get("limits"), "limits", why)
    elif isinstance(value, Resources):
        requests = _spec(value.requests, "requests", why)
        limits = _spec(value.limits, "limits", why)
    else:
        why.append("expected Resources(requests=Spec(...), limits=...) or a dict of cpus/memory")
        requests = limits = None
    if not why and requests is None and limits is None:
        why.append("set requests or limits")
    requests, limits = requests or limits, limits or requests
    if not why and requests is not None and limits is not None:
        _mirrored(requests, limits, why)
    if why or requests is None or limits is None:
        raise error(RESOURCES_ERROR, f'Job "{job_label}": invalid resources -- {"; ".join(why)}', location)
    return Resources(requests, limits)

"""Hypothesis strategies for the authoring SDK: graphs, matrices, retries, ``when``, step layouts, inputs."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from kici.sdk.inputs import I, InputDescriptor
from kici.sdk.needs import TERMINAL_STATUSES, WHEN_RUN_ON

# --- matrices ------------------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(-4, 4, allow_nan=False, allow_infinity=False).map(lambda f: round(f, 1)),
    st.text("abcxyz", max_size=3),
)
dimension_names = st.text("abcdefgh", min_size=1, max_size=4)
columns = st.lists(json_scalars, max_size=4)
static_matrices = st.one_of(
    st.lists(json_scalars, max_size=6),
    st.dictionaries(dimension_names, columns, max_size=4),
)
matrix_entries = st.lists(st.dictionaries(dimension_names, json_scalars, max_size=3), max_size=3)

# --- retry ---------------------------------------------------------------------------------------


@st.composite
def retry_options(draw: st.DrawFn) -> dict[str, Any]:
    delay = draw(st.one_of(st.integers(0, 60), st.floats(0, 60, allow_nan=False)))
    options: dict[str, Any] = {
        "max_attempts": draw(st.integers(1, 12)),
        "delay": delay,
        "backoff": draw(st.sampled_from(["exponential", "fixed"])),
    }
    if draw(st.booleans()):
        options["max_delay"] = delay + draw(st.floats(0, 600, allow_nan=False))
    return options


# --- needs ---------------------------------------------------------------------------------------

valid_whens: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.sampled_from(sorted(WHEN_RUN_ON)),
    st.lists(st.sampled_from(TERMINAL_STATUSES), min_size=1, max_size=8),
)
invalid_whens: st.SearchStrategy[Any] = st.one_of(
    st.text(max_size=12).filter(lambda s: s not in WHEN_RUN_ON),
    st.just([]),
    st.lists(st.text(max_size=8), min_size=1, max_size=3).filter(
        lambda xs: any(x not in TERMINAL_STATUSES for x in xs)
    ),
)

# --- step layouts --------------------------------------------------------------------------------

step_names = st.one_of(st.none(), st.sampled_from(["lint", "test", "build", "step-1", "deploy", "pack"]))


@st.composite
def step_layouts(draw: st.DrawFn) -> list[Any]:
    """A job's entries: ``None``/a name for a step, or ``(group name, [child names])`` for a group.

    Children of one group never repeat a name (E214 forbids it); steps may.
    """
    layout: list[Any] = []
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.integers(0, 3)) == 0:
            named = draw(st.lists(st.sampled_from(["a", "b", "c", "d"]), unique=True, max_size=3))
            unnamed = draw(st.integers(0 if named else 1, 3))
            children: list[str | None] = [*named, *([None] * unnamed)]
            children = draw(st.permutations(children))
            layout.append((draw(st.one_of(st.none(), st.sampled_from(["grp", "checks"]))), children))
        else:
            layout.append(draw(step_names))
    return layout


# --- inputs --------------------------------------------------------------------------------------

_texts = st.text(max_size=12)
_numbers = st.one_of(
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=False, allow_infinity=False),
)


@st.composite
def inputs_with_values(draw: st.DrawFn) -> tuple[InputDescriptor, Any]:
    """A descriptor and a value that fits it (nullable descriptors sometimes give ``None``)."""
    kind = draw(st.sampled_from(["string", "number", "integer", "boolean", "enum", "literal"]))
    nullable = draw(st.booleans()) and kind != "string"
    if kind == "string":
        value: Any = draw(_texts)
        descriptor = I.string(max=max(len(value), draw(st.integers(0, 20))), nullable=nullable)
    elif kind == "number":
        value = draw(_numbers)
        descriptor = I.number(min=min(value, -(10**13)), nullable=nullable)
    elif kind == "integer":
        value = draw(st.integers(-(10**15), 10**15))
        descriptor = I.integer(max=max(value, 0), nullable=nullable)
    elif kind == "boolean":
        value = draw(st.booleans())
        descriptor = I.boolean(nullable=nullable)
    elif kind == "enum":
        options = draw(st.lists(st.one_of(_texts, st.integers(-9, 9), st.booleans()), min_size=1, max_size=5))
        rendered: dict[str, Any] = {}
        for option in options:
            key = "true" if option is True else "false" if option is False else str(option)
            if key != "null":
                rendered.setdefault(key, option)
        if not rendered:
            rendered = {"x": "x"}
        value = draw(st.sampled_from(list(rendered.values())))
        descriptor = I.enum(*rendered.values(), nullable=nullable)
    else:
        value = draw(st.one_of(_texts.filter(lambda s: s != "null"), st.integers(), st.booleans()))
        descriptor = I.literal(value, nullable=nullable)
    if nullable and draw(st.integers(0, 4)) == 0:
        value = None
    return descriptor, value

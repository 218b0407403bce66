"""Provider registry lookup (HOOK-01), 30 §1: exact key, else ``<type>:default``, else first ``<type>:``."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kici.domain.providers import ProviderBundle, ProviderRegistry
from kici.domain.webhooks.normalizers.local import LocalNormalizer

pytestmark = pytest.mark.feature("HOOK-01")

keys = st.one_of(
    st.sampled_from(["github", "generic", "remote", "local"]).flatmap(
        lambda kind: st.sampled_from([f"{kind}:default", f"{kind}:1", f"{kind}:2", f"{kind}:o:s"])
    ),
    st.sampled_from(["", "github", ":x", "githubx:1"]),
)
actions = st.lists(st.tuples(st.sampled_from(["register", "unregister"]), keys), max_size=12)


@given(actions, keys)
def test_lookup_follows_the_fallback_order(steps: list[tuple[str, str]], wanted: str) -> None:
    registry = ProviderRegistry()
    model: dict[str, ProviderBundle] = {}
    for action, key in steps:
        if action == "register":
            bundle = ProviderBundle(normalizer=LocalNormalizer())
            registry.register(key, bundle)
            model[key] = bundle
        else:
            assert registry.unregister(key) == (model.pop(key, None) is not None)
    kind = wanted.partition(":")[0]
    expected = model.get(wanted) or model.get(f"{kind}:default")
    if expected is None:
        expected = next((b for k, b in model.items() if k.startswith(f"{kind}:")), None)
    assert registry.get_by_routing_key(wanted) is expected
    assert registry.keys() == tuple(model)

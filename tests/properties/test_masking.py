"""SEC-15: masked output holds no secret (length >= 3, no ``*``) nor its base64; clean lines are unchanged."""

from __future__ import annotations

import base64

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from kici.sdk.masking import MASK, Masker, secret_forms

pytestmark = pytest.mark.feature("SEC-15")

_alphabet = st.characters(blacklist_characters="*\n\r", blacklist_categories=("Cs",))
secrets_st = st.lists(st.text(_alphabet, min_size=3, max_size=12), min_size=1, max_size=4)
filler = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"), max_size=10)


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


@st.composite
def leaky_lines(draw: st.DrawFn) -> tuple[list[str], str]:
    secrets = draw(secrets_st)
    pieces = draw(
        st.lists(
            st.one_of(
                filler,
                st.sampled_from(secrets),
                st.sampled_from(secrets).map(_b64),
                st.sampled_from(secrets).map(
                    lambda s: base64.urlsafe_b64encode(s.encode()).decode().rstrip("=")
                ),
            ),
            max_size=8,
        )
    )
    return secrets, "".join(pieces)


@given(leaky_lines())
def test_masked_line_contains_no_secret_nor_its_base64(case: tuple[list[str], str]) -> None:
    secrets, line = case
    masked = Masker(secrets).mask(line)
    for secret in secrets:
        assert secret not in masked
        assert _b64(secret) not in masked


@given(secrets_st, filler)
def test_secret_free_lines_are_unchanged(secrets: list[str], line: str) -> None:
    forms = set().union(*(secret_forms(s) for s in secrets))
    assume(not any(form in line for form in forms))
    assert Masker(secrets).mask(line) == line


@given(st.lists(st.text(max_size=2), max_size=5), filler)
def test_values_shorter_than_three_are_never_masked(short: list[str], line: str) -> None:
    masker = Masker(short)
    assert not masker.active
    assert masker.mask(line) == line


@given(secrets_st, secrets_st, filler)
def test_replace_forgets_the_old_set(old: list[str], new: list[str], line: str) -> None:
    masker = Masker(old)
    masker.replace(new)
    assert masker.mask(line) == Masker(new).mask(line)


def test_overlapping_secrets_leave_no_fragment() -> None:
    masker = Masker(["abcd", "cdef"])
    assert masker.mask("xxabcdefxx") == f"xx{MASK}efxx"
    assert "abcd" not in masker.mask("abcdef")
    assert "cdef" not in masker.mask("abcdef")


def test_multi_line_secrets_are_masked_line_by_line() -> None:
    key = "-----BEGIN KEY-----\nMIIBOgIBAAJBAK\n-----END KEY-----"
    masker = Masker([key])
    assert masker.mask("MIIBOgIBAAJBAK") == MASK
    assert masker.mask_value({"k": ["-----END KEY-----"]}) == {"k": [MASK]}

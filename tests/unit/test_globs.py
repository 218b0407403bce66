"""Picomatch-dialect globs: the examples the spec and users rely on."""

import pytest

from kici.domain.globs import InvalidGlobError, filter_matches, glob_matches, glob_to_regex, is_glob

pytestmark = pytest.mark.feature("SDK-09")


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("main", "main", True),
        ("main", "mainline", False),
        ("release/*", "release/1.0", True),
        ("release/*", "release/1.0/hotfix", False),
        ("review/*", "review/a/b", False),
        ("release/**", "release/1.0/hotfix", True),
        ("release/**", "release", True),
        ("src/**", "src/.hidden", False),
        ("*", ".github", False),
        ("**/*.py", "kici/domain/globs.py", True),
        ("**/*.py", "setup.py", True),
        ("{main,develop}", "develop", True),
        ("v[0-9]*", "v1.2", True),
        ("v[0-9]*", "vx", False),
        ("feat-?", "feat-a", True),
    ],
)
def test_glob_examples(pattern: str, value: str, expected: bool) -> None:
    assert glob_matches(pattern, value) is expected


def test_regex_form_agrees_with_matcher() -> None:
    import re

    for pattern, value in [("release/**", "release"), ("release/**", "release/x/y"), ("a/*", "a/b/c")]:
        assert (re.fullmatch(glob_to_regex(pattern), value) is not None) is glob_matches(pattern, value)


def test_filter_exclusion_wins_and_only_excludes_admit_the_rest() -> None:
    assert filter_matches([], "anything")
    assert filter_matches(["docs/**", "!docs/internal/**"], "docs/a.md")
    assert not filter_matches(["docs/**", "!docs/internal/**"], "docs/internal/a.md")
    assert filter_matches(["!docs/**"], "src/a.py")
    assert not filter_matches(["!docs/**"], "docs/a.md")
    assert not filter_matches(["src/**"], "docs/a.md")


def test_is_glob() -> None:
    assert is_glob("kici:os:*")
    assert is_glob("{a,b}")
    assert not is_glob("linux")


def test_empty_pattern_is_a_clear_error() -> None:
    with pytest.raises(InvalidGlobError, match="empty pattern"):
        glob_matches("", "x")

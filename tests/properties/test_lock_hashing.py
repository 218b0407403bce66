"""L2 and L4: content hashes ignore line-ending style and input order, and nothing else (spec 00 §2.3)."""

from __future__ import annotations

import hashlib

import attrs
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from kici.domain.lockfile import (
    LockFile,
    asset_digest,
    lockfile_hash,
    normalize_newlines,
    top_content_hash,
    workflow_content_hash,
)
from tests.strategies.lockfile import DECODED_CHARS as _DECODED
from tests.strategies.lockfile import lock_files

lines = st.lists(
    st.text(alphabet=_DECODED.filter(lambda c: c not in "\r\n"), max_size=12), min_size=1, max_size=6
)
digests = st.none() | st.text(alphabet=_DECODED, max_size=30)


@pytest.mark.feature("LOCK-06")
@given(lines, st.data(), digests)
def test_content_hash_ignores_lf_versus_crlf(
    parts: list[str], data: st.DataObject, digest: str | None
) -> None:
    crlf = data.draw(st.lists(st.booleans(), min_size=len(parts) - 1, max_size=len(parts) - 1))
    unix = "\n".join(parts)
    mixed = parts[0] + "".join(("\r\n" if c else "\n") + p for c, p in zip(crlf, parts[1:], strict=True))
    assert workflow_content_hash(mixed, digest) == workflow_content_hash(unix, digest)
    if digest is not None:
        assert workflow_content_hash(unix, digest.replace("\n", "\r\n")) == workflow_content_hash(
            unix, digest
        )


@pytest.mark.feature("LOCK-06")
@given(st.text(alphabet=_DECODED, max_size=40), st.data(), digests)
def test_content_hash_is_sensitive_to_any_other_change(
    raw: str, data: st.DataObject, digest: str | None
) -> None:
    raw = normalize_newlines(raw)
    at = data.draw(st.integers(0, len(raw)))
    char = data.draw(st.characters(exclude_characters="\r"))
    if data.draw(st.booleans()) and at < len(raw):
        assume(raw[at] != char)
        changed = raw[:at] + char + raw[at + 1 :]
    else:
        changed = raw[:at] + char + raw[at:]
    assert workflow_content_hash(changed, digest) != workflow_content_hash(raw, digest)


@pytest.mark.feature("LOCK-06")
@given(st.text(alphabet=_DECODED, max_size=40), st.text(alphabet=_DECODED, max_size=20))
def test_content_hash_is_the_spec_formula(raw: str, digest: str) -> None:
    lf = raw.replace("\r\n", "\n").replace("\r", "\n")
    dlf = digest.replace("\r\n", "\n").replace("\r", "\n")

    def expected(text: str) -> str:
        return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()

    assert workflow_content_hash(raw, None) == expected("5:" + lf)
    assert workflow_content_hash(raw, digest) == expected("5:" + lf + "\0" + dlf)
    assert workflow_content_hash(raw, "") != workflow_content_hash(raw, None)


asset_paths = st.sampled_from(["Makefile", "lib/a.py", "lib/b.py", "conf/x.toml", "src/deep/c.txt"])
asset_files = st.dictionaries(asset_paths, st.none() | st.binary(max_size=20), max_size=5)


@pytest.mark.feature("LOCK-06")
@given(asset_files, st.data())
def test_asset_digest_ignores_order_duplicates_and_path_spelling(
    files: dict[str, bytes | None], data: st.DataObject
) -> None:
    entries = list(files.items())
    extra = data.draw(st.lists(st.sampled_from(entries), max_size=4)) if entries else []
    permuted = data.draw(st.permutations([*entries, *extra]))
    spelled = [(("./" + p) if i % 2 else p.replace("/", "//"), c) for i, (p, c) in enumerate(permuted)]
    assert asset_digest(spelled) == asset_digest(entries)


@pytest.mark.feature("LOCK-06")
@given(asset_files)
def test_asset_digest_is_sorted_path_newline_content(files: dict[str, bytes | None]) -> None:
    expected = "".join(p + "\n" + (files[p] or b"").decode("utf-8", "surrogateescape") for p in sorted(files))
    assert asset_digest(list(files.items())) == expected


@pytest.mark.feature("LOCK-07")
@given(
    lock_files(),
    st.text(alphabet=_DECODED, max_size=10),
    st.none() | st.text(alphabet=_DECODED, min_size=1, max_size=10),
)
def test_top_hash_ignores_its_own_field_and_lockfile_hash(
    lock: LockFile, other: str, dep: str | None
) -> None:
    assert top_content_hash(attrs.evolve(lock, content_hash=other, lockfile_hash=dep)) == top_content_hash(
        lock
    )
    assert lock.content_hash == top_content_hash(lock)


@pytest.mark.feature("LOCK-07")
@given(lock_files())
def test_top_hash_changes_with_the_workflows(lock: LockFile) -> None:
    assume(lock.workflows)
    first = lock.workflows[0]
    renamed = attrs.evolve(lock, workflows=(attrs.evolve(first, name=first.name + "-x"), *lock.workflows[1:]))
    assert top_content_hash(renamed) != top_content_hash(lock)
    assert top_content_hash(attrs.evolve(lock, workflows=lock.workflows[1:])) != top_content_hash(lock)


@pytest.mark.feature("LOCK-07")
@given(st.sampled_from(["uv", "pip"]), st.text(alphabet=_DECODED, max_size=30) | st.binary(max_size=30))
def test_lockfile_hash_is_manager_newline_content(manager: str, content: str | bytes) -> None:
    raw = content if isinstance(content, bytes) else content.encode("utf-8", "surrogateescape")
    assert lockfile_hash(manager, content) == hashlib.sha256(manager.encode() + b"\n" + raw).hexdigest()
    other = "pip" if manager == "uv" else "uv"
    assert lockfile_hash(other, content) != lockfile_hash(manager, content)

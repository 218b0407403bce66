"""The checkout's cheaper steps (10 §4 phase 2): ``origin`` written into the workspace config by hand,
commit refs trimmed every ``TRIM_EVERY`` checkouts instead of every one, and ``git init`` of the
workspace run alongside the fetch, which a failed checkout undoes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from kici.services.agent import mirror
from kici.services.agent.mirror import CloneError, MirrorStore, origin_config
from kici.testing.git_http import GitHttpServer, commit_files, create_repo, git_env

pytestmark = pytest.mark.feature("EXE-06", "HOOK-22")

URL_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=40
)


def origin_url(config_text: str, tmp: Path) -> str:
    """What git itself reads back as ``remote.origin.url`` from a config holding ``config_text``."""
    path = tmp / "config"
    path.write_text(config_text, encoding="utf-8")
    done = subprocess.run(
        ["git", "config", "--file", str(path), "--get", "remote.origin.url"],
        env=git_env(),
        capture_output=True,
        check=True,
    )
    return done.stdout.decode("utf-8").removesuffix("\n")


@pytest.mark.parametrize(
    "url",
    [
        "https://git.example/acme/app.git",
        "https://git.example/a#b;c/app.git",
        'https://git.example/quo"te\\back/app.git',
        "https://git.example/with space/app.git",
        "ssh://git@git.example:2222/acme/app",
    ],
)
def test_git_reads_back_the_url_it_was_given(url: str, tmp_path: Path) -> None:
    assert origin_url(origin_config(url), tmp_path) == url


@given(url=URL_TEXT)
@settings(max_examples=40, deadline=None)
def test_any_printable_url_round_trips(url: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    assert origin_url(origin_config(url), tmp_path_factory.mktemp("origin")) == url


@pytest.mark.parametrize("url", ["https://git.example/a\nb", "https://git.example/a\rb"])
def test_a_line_break_is_refused(url: str) -> None:
    with pytest.raises(CloneError, match="line break"):
        origin_config(url)


async def test_commit_refs_stay_bounded_while_trimming_only_every_few_checkouts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mirror, "KEPT_COMMITS", 2)
    monkeypatch.setattr(mirror, "TRIM_EVERY", 3)
    bare = create_repo(tmp_path / "served", "acme/app")
    shas = [commit_files(bare, "main", {"n": f"{i}\n"}, message=f"c{i}") for i in range(8)]
    store = MirrorStore(tmp_path / "mirrors", base_env=git_env())
    counts = []
    with GitHttpServer(tmp_path / "served") as server:
        for index, sha in enumerate(shas):
            checkout = await store.checkout(
                repo_url=server.url_for("acme/app"),
                sha=sha,
                ref="refs/heads/main",
                dest=tmp_path / f"w{index}",
            )
            refs = await trio.run_process(
                ["git", "-C", str(checkout.mirror), "for-each-ref", "refs/kici/c/"],
                capture_stdout=True,
                env=git_env(),
            )
            counts.append(len(refs.stdout.splitlines()))
            assert (tmp_path / f"w{index}" / ".git" / "HEAD").read_text().strip() == sha
    assert max(counts) <= 2 + 3
    assert counts[0] == 1
    assert counts[3] == 3, "trimmed to 2 at the fourth checkout, then its own ref"


async def test_a_failed_checkout_leaves_a_waiting_workspace_empty_and_creates_none(tmp_path: Path) -> None:
    create_repo(tmp_path / "served", "acme/app")
    store = MirrorStore(tmp_path / "mirrors", base_env=git_env())
    waiting = tmp_path / "warm" / "workspace"
    waiting.mkdir(parents=True)
    with GitHttpServer(tmp_path / "served") as server:
        for dest in (waiting, tmp_path / "fresh"):
            with pytest.raises(CloneError, match="could not fetch"):
                await store.checkout(
                    repo_url=server.url_for("acme/gone"), sha="", ref="refs/heads/main", dest=dest
                )
    assert waiting.is_dir()
    assert list(waiting.iterdir()) == []
    assert not (tmp_path / "fresh").exists()

"""``kici run local push`` with dynamic jobs and dynamic matrices: real CLI, real git, real runners.

Two workflows share one repository and one run each (module fixtures, so the suite stays short):
``gens`` holds the generator cases (event-only, result-aware with a dynamic-group dependent, an
empty group, a generator that raises) and ``matrices`` the dynamic matrix cases (two children, and
``[]``). The spec's own ``monorepo.py`` example runs in a repository laid out the way it expects.
Jobs run in bubblewrap when it is usable here, else with ``--sandbox none``. Every run uses
``--keep-going`` so that one failing case does not cancel the others.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from kici.adapters.sandbox.bwrap import probe

pytestmark = pytest.mark.e2e

SANDBOX = [] if probe() is None else ["--sandbox", "none"]
TIMEOUT_S = 120
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "workflows"

GENS = """\
from kici.sdk import dynamic_group, dynamic_job, job, push, workflow


def three(g):
    g.log.info("generating for a %s", g.event.type)
    return [job(f"build-{n}", runs_on="linux", run=lambda ctx, n=n: print(f"built {n}")) for n in "abc"]


def explode(g):
    raise RuntimeError("cannot list the services")


discover = job("discover", runs_on="linux", run=lambda ctx: {"services": ["api", "web"]})
deploys = dynamic_job(
    "deploys",
    needs=["discover"],
    generate=lambda g: [
        job(f"deploy-{s}", runs_on="linux", run=lambda ctx, s=s: print(f"deploying {s}"))
        for s in g.needs["discover"].result.services
    ],
)
report = job("report", runs_on="linux", needs=[dynamic_group("deploys", when="on-skip")],
             run=lambda ctx: print("report saw", ", ".join(sorted(ctx.needs))))
nothing = dynamic_job("nothing", lambda g: [])
after_nothing = job("after-nothing", runs_on="linux", needs=[dynamic_group("nothing")],
                    run=lambda ctx: print("the empty group is satisfied"))
broken = dynamic_job("broken", explode)
after_broken = job("after-broken", runs_on="linux", needs=[dynamic_group("broken")], run=lambda ctx: None)

gens = workflow("gens", on=push(), jobs=[three, discover, deploys, report, nothing, after_nothing, broken,
                                         after_broken])
"""

MATRICES = """\
from pathlib import Path

from kici.sdk import job, push, workflow


def targets(m):
    m.log.info("listing targets of %s", m.job.name)
    return sorted(p.name for p in Path("targets").iterdir())


pkg = job("pkg", runs_on="linux", matrix=targets, run=lambda ctx: print("testing", ctx.matrix.value))
after_pkg = job("after-pkg", runs_on="linux", needs=["pkg"],
                run=lambda ctx: print("children:", ", ".join(n.name for n in ctx.needs["pkg"])))
none = job("none", runs_on="linux", matrix=lambda m: [], run=lambda ctx: print("never runs"))
after_none = job("after-none", runs_on="linux", needs=["none"], run=lambda ctx: None)

matrices = workflow("matrices", on=push(), jobs=[pkg, after_pkg, none, after_none])
"""


class Kici:
    def __init__(self, root: Path, runs: Path) -> None:
        self.root = root
        self.env = {**os.environ, "KICI_RUN_DIR": str(runs), "NO_COLOR": "1"}
        self.env.pop("KICI_DEBUG", None)

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "kici.cli.main", *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )

    def write(self, relative: str, text: str) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")

    def commit(self) -> None:
        for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "dynamic"]):
            subprocess.run(
                ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                cwd=self.root,
                check=True,
                capture_output=True,
            )


class Outcome:
    """One ``kici run local push --json`` run: the JSON document on stdout, the logs on stderr."""

    def __init__(self, result: subprocess.CompletedProcess[str], workflow: str) -> None:
        self.code = result.returncode
        self.logs = result.stderr
        document = json.loads(result.stdout)
        found = next(w for w in document["workflows"] if w["name"] == workflow)
        self.workflow: dict[str, Any] = found
        self.jobs: dict[str, dict[str, Any]] = {job["name"]: job for job in found["jobs"]}
        self.order = [job["name"] for job in found["jobs"]]

    def status(self, name: str) -> str:
        return str(self.jobs[name]["status"])


def run_workflow(kici: Kici, workflow: str) -> Outcome:
    result = kici("run", "local", "push", "--workflow", workflow, "--keep-going", "--json", *SANDBOX)
    assert result.stdout, result.stderr
    return Outcome(result, workflow)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Kici:
    base = tmp_path_factory.mktemp("dynamic")
    kici = Kici(base / "repo", base / "runs")
    kici.write(".kici/workflows/gens.py", GENS)
    kici.write(".kici/workflows/matrices.py", MATRICES)
    for target in ("arm", "x86"):
        kici.write(f"targets/{target}/README", target)
    kici.commit()
    return kici


@pytest.fixture(scope="module")
def gens(project: Kici) -> Outcome:
    return run_workflow(project, "gens")


@pytest.fixture(scope="module")
def matrices(project: Kici) -> Outcome:
    return run_workflow(project, "matrices")


@pytest.mark.feature("EXE-19", "SDK-20", "CLI-08")
def test_an_event_only_generator_adds_three_jobs(gens: Outcome) -> None:
    assert gens.status("__dynamic__gens__0") == "success"
    assert [gens.status(f"build-{n}") for n in "abc"] == ["success"] * 3
    assert gens.order.index("__dynamic__gens__0") < gens.order.index("build-a")
    assert "[__dynamic__gens__0] [info] generating for a push" in gens.logs
    assert (
        "[__dynamic__gens__0] [kici] DynamicJobFn generated 3 job(s): build-a, build-b, build-c" in gens.logs
    )
    assert "[build-b] built b" in gens.logs
    evaluate = gens.jobs["__dynamic__gens__0"]["steps"]
    assert [(s["name"], s["status"]) for s in evaluate] == [("evaluate", "success")]


@pytest.mark.feature("EXE-20", "EXE-21", "SDK-20", "SDK-32")
def test_a_result_aware_generator_reads_its_upstream_and_feeds_a_group_dependent(gens: Outcome) -> None:
    assert gens.status("discover") == "success"
    assert gens.status("__dynamic__gens__2") == "success"
    assert gens.status("deploy-api") == "success"
    assert gens.status("deploy-web") == "success"
    assert "[deploy-web] deploying web" in gens.logs
    assert gens.status("report") == "success"
    assert "[report] report saw deploy-api, deploy-web" in gens.logs
    assert gens.order.index("deploy-web") < gens.order.index("report")


@pytest.mark.feature("EXE-21", "SDK-20")
def test_an_empty_group_lets_its_dependents_run(gens: Outcome) -> None:
    assert gens.status("__dynamic__gens__4") == "success"
    assert "[__dynamic__gens__4] [kici] DynamicJobFn generated no jobs" in gens.logs
    assert gens.status("after-nothing") == "success"
    assert "[after-nothing] the empty group is satisfied" in gens.logs


@pytest.mark.feature("EXE-19", "EXE-21", "SDK-20")
def test_a_raising_generator_fails_the_run_and_skips_its_dependents(gens: Outcome) -> None:
    evaluation = gens.jobs["__dynamic__gens__6"]
    assert evaluation["status"] == "failure"
    assert evaluation["error"] == "DynamicJobFn failed: RuntimeError: cannot list the services"
    assert "RuntimeError: cannot list the services" in gens.logs, "the traceback is in the evaluate log"
    synthetic = gens.jobs["dynamic-eval-failed-6"]
    assert synthetic["status"] == "failure"
    assert synthetic["error"] == "dynamic_eval: DynamicJobFn failed: RuntimeError: cannot list the services"
    assert gens.jobs["after-broken"]["status"] == "skipped"
    assert gens.jobs["after-broken"]["reason"] == "upstream_unmet: dynamic-eval-failed-6 (failed)"
    assert gens.workflow["status"] == "failure"
    assert gens.code == 1


@pytest.mark.feature("SDK-18", "EXE-34", "CLI-08")
def test_a_dynamic_matrix_fans_out_into_two_children(matrices: Outcome) -> None:
    assert matrices.status("__init__pkg") == "success"
    assert "[__init__pkg] [info] listing targets of pkg" in matrices.logs
    assert matrices.status("pkg (arm)") == "success"
    assert matrices.status("pkg (x86)") == "success"
    assert matrices.jobs["pkg (x86)"]["matrixValues"] == {"value": "x86"}
    assert "[pkg (arm)] testing arm" in matrices.logs
    assert matrices.status("after-pkg") == "success"
    assert "[after-pkg] children: pkg (arm), pkg (x86)" in matrices.logs


@pytest.mark.feature("SDK-18", "EXE-34")
def test_a_dynamic_matrix_returning_nothing_fails_with_matrix_expansion(matrices: Outcome) -> None:
    assert matrices.status("__init__none") == "success"
    failed = matrices.jobs["none"]
    assert failed["status"] == "failure"
    assert failed["error"] == (
        "matrix_expansion: dynamic matrix of job 'none' produced no combinations (a matrix needs 1 to 256)"
    )
    assert "never runs" not in matrices.logs
    assert matrices.jobs["after-none"]["status"] == "skipped"
    assert matrices.workflow["status"] == "failure"
    assert matrices.code == 1


@pytest.mark.feature("EXE-19", "EXE-20", "EXE-21", "EXE-34", "SDK-18", "SDK-20", "SDK-22")
def test_the_spec_monorepo_example_runs_end_to_end(tmp_path: Path) -> None:
    kici = Kici(tmp_path / "repo", tmp_path / "runs")
    workflows = kici.root / ".kici" / "workflows"
    workflows.mkdir(parents=True)
    shutil.copy(FIXTURES / "monorepo.py", workflows / "monorepo.py")
    kici.write("Makefile", "lint:\n\t@echo lint ok\ntypecheck:\n\t@echo types ok\nunit:\n\t@echo unit ok\n")
    for package in ("core", "util"):
        kici.write(f"packages/{package}/Makefile", f"test:\n\t@echo testing {package}\n")
    for service in ("api", "web"):
        kici.write(f"services/{service}/README", service)
    kici.write("deploy.sh", textwrap.dedent('#!/bin/sh\necho "deploying $1"\n'))
    (kici.root / "deploy.sh").chmod(0o755)
    kici.commit()
    outcome = run_workflow(kici, "monorepo")
    assert outcome.code == 0, outcome.logs
    assert {name: job["status"] for name, job in outcome.jobs.items()} == {
        "__init__pkg-test": "success",
        "discover": "success",
        "checks": "success",
        "pkg-test (core)": "success",
        "pkg-test (util)": "success",
        "__dynamic__monorepo__3": "success",
        "deploy-api": "success",
        "deploy-web": "success",
        "report": "success",
    }
    assert sorted(s["name"] for s in outcome.jobs["checks"]["steps"]) == ["lint", "types", "unit"]
    assert "[pkg-test (util)] testing util" in outcome.logs
    assert "[deploy-web] deploying web" in outcome.logs
    assert "[report] [info] pkg-test (core): success" in outcome.logs
    assert "[report] [info] pkg-test (util): success" in outcome.logs

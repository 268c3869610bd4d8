"""Where a Prefect deployment finds the project: `code_source` over real git repositories made in a temp dir (the
pull step a worker runs, and each warning that names what the deployment would miss and how to fix it)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlops.core.errors import MlopsError
from mlops.deploy.orchestration import CodeSource, clonable, code_source, prefect_yaml


@pytest.fixture(autouse=True)
def git_available(monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("git") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("git is not installed (CI=true)")
        pytest.skip("git is not installed")
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid",
                           "-c", "init.defaultBranch=main", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, check=True).stdout.strip()


def pushed_project(tmp_path: Path, inside: str = "") -> tuple[Path, Path]:
    """A repository with one commit pushed to a bare remote; the project is its directory `inside`."""
    repo, remote = tmp_path / "repo", tmp_path / "remote.git"
    project = repo / inside
    project.mkdir(parents=True)
    (project / "recipe.yaml").write_text("name: x\n")
    git(tmp_path, "init", "-q", str(repo))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "one")
    git(tmp_path, "init", "-q", "--bare", str(remote))
    git(repo, "remote", "add", "origin", str(remote))
    git(repo, "push", "-q", "origin", "main")
    return project, remote


def test_a_pushed_project_is_cloned_at_its_commit(tmp_path: Path) -> None:
    project, remote = pushed_project(tmp_path)
    source = code_source(project)

    assert source.warnings == ()
    head = git(project, "rev-parse", "HEAD")
    doc = yaml.safe_load(prefect_yaml([], "x", source, prefect_version="3"))
    assert doc["pull"] == [{"prefect.deployments.steps.git_clone": {"id": "clone-project", "repository": str(remote),
                                                                    "commit_sha": head}}]


def test_a_project_inside_a_repository_runs_in_its_folder_of_the_clone(tmp_path: Path) -> None:
    project, _ = pushed_project(tmp_path, inside="teams/churn")
    steps = code_source(project, ref="main").pull_steps()

    assert steps[0]["prefect.deployments.steps.git_clone"]["branch"] == "main"
    assert "commit_sha" not in steps[0]["prefect.deployments.steps.git_clone"]
    assert steps[1] == {"prefect.deployments.steps.set_working_directory": {
        "directory": "{{ clone-project.directory }}/teams/churn"}}


def test_uncommitted_and_unpushed_work_is_named_with_its_fix(tmp_path: Path) -> None:
    project, _ = pushed_project(tmp_path)
    (project / "recipe.yaml").write_text("name: y\n")
    (project / "new.csv").write_text("a\n1\n")

    (warning,) = code_source(project).warnings
    assert warning.startswith("2 uncommitted change(s)") and "recipe.yaml" in warning and "new.csv" in warning
    assert "commit and push them" in warning

    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "two")
    (warning,) = code_source(project).warnings
    assert "on no branch of 'origin'" in warning and "git push origin HEAD" in warning


def test_without_a_repository_or_remote_flows_stay_on_this_machine(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    source = code_source(plain)
    assert source.kind == "local" and source.pull_steps() == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(plain.resolve())}}]
    assert "not in a git repository" in source.warnings[0] and "--git-repo URL" in source.warnings[0]

    git(plain, "init", "-q")
    git(plain, "commit", "-q", "--allow-empty", "-m", "one")
    (warning,) = code_source(plain).warnings
    assert "no remote 'origin'" in warning and "git remote add origin URL" in warning

    given = code_source(plain, repository="https://example.invalid/p.git", ref="v1.2")
    assert (given.kind, given.repository, given.branch, given.commit) == ("git", "https://example.invalid/p.git",
                                                                          "v1.2", None)
    assert code_source(plain, local=True) == CodeSource("local", directory=str(plain.resolve()))


def test_an_empty_repository_or_a_bad_ref_is_a_one_line_error(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    git(tmp_path, "remote", "add", "origin", "https://example.invalid/p.git")
    with pytest.raises(MlopsError, match="has no commit yet"):
        code_source(tmp_path)
    with pytest.raises(MlopsError, match="give a branch, tag or commit"):
        code_source(tmp_path, ref="--upload-pack=x")


def test_a_docker_pool_runs_the_flows_in_the_image(tmp_path: Path) -> None:
    source = code_source(tmp_path, image="ghcr.io/acme/churn-train:3")
    doc = yaml.safe_load(prefect_yaml([], "x", source, prefect_version="3"))

    assert doc["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "/opt/project"}}]
    assert source.job_variables() == {"image": "ghcr.io/acme/churn-train:3"} and source.warnings == ()
    with pytest.raises(MlopsError, match="in the image or from git, not both"):
        code_source(tmp_path, image="ghcr.io/acme/churn-train:3", ref="main")


@pytest.mark.parametrize(("kwargs", "said"), [
    ({"repository": "x"}, "--git-repo 'x': expected a repository workers can clone"),  # taken as given before
    ({"repository": "http://x", "local": True}, "--local-checkout runs the flows in --project-dir on this machine"),
    ({"ref": "main", "local": True}, "drop --git-repo and --git-ref, or --local-checkout"),
])
def test_source_flags_that_contradict_or_name_no_repository_are_refused(tmp_path: Path, kwargs: dict[str, Any],
                                                                        said: str) -> None:
    with pytest.raises(MlopsError, match=re.escape(said)):
        code_source(tmp_path, **kwargs)
    with pytest.raises(MlopsError, match=re.escape(f"--project-dir {tmp_path / 'nope'}: no such folder")):
        code_source(tmp_path / "nope")
    for fine in ("https://example.invalid/p.git", "git@example.invalid:team/p.git", "ssh://git@h/p", str(tmp_path)):
        assert clonable(fine), fine

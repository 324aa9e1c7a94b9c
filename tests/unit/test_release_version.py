"""One version: pyproject.toml says it, and everything that names it agrees.

The package metadata (and so `__version__` and `--version`), the image that `make image`
builds and labels, the image reference in deploy/, the CHANGELOG's newest release, the
README's install section and, when HEAD is tagged, the git tag. The licence is checked the
same way: pyproject.toml, LICENSE and the image label.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

import batchcompute_operator

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE_REPO = "ghcr.io/batchcompute-operator/batchcompute-operator"
RELEASE = re.compile(r"^## \[(?P<version>[^\]]+)\] - (?P<date>\d{4}-\d{2}-\d{2})$", re.M)
MAKE = shutil.which("make")


def pyproject() -> dict[str, Any]:
    with (REPO_ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


@pytest.fixture(scope="module")
def version() -> str:
    value = pyproject()["project"]["version"]
    assert isinstance(value, str)
    assert re.fullmatch(r"\d+\.\d+\.\d+", value), f"{value!r} is not X.Y.Z"
    return value


def make(*args: str) -> str:
    if MAKE is None:
        pytest.skip("make is not installed")
    result = subprocess.run(
        [MAKE, "-s", "--no-print-directory", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_package_metadata_is_the_version(version: str) -> None:
    assert batchcompute_operator.__version__ == version


def test_version_flag_prints_it(version: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "batchcompute_operator", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"batchcompute-operator {version}"


def test_no_other_file_writes_the_version_by_hand(version: str) -> None:
    """The version is derived everywhere else: a literal copy would be missed at a bump."""
    for relative in (
        "operator/batchcompute_operator/__init__.py",
        "operator/batchcompute_operator/__main__.py",
        "Dockerfile",
        "Makefile",
        "deploy/manager/deployment.yaml",
    ):
        assert version not in (REPO_ROOT / relative).read_text(), relative
    # The image label takes the build argument, which must be given (no default).
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert not re.search(r"^ARG VERSION=", dockerfile, re.M)
    assert 'org.opencontainers.image.version="${VERSION}"' in dockerfile


def test_make_derives_the_image_tag_and_labels(version: str) -> None:
    assert make("version").split()[:2] == [version, f"{IMAGE_REPO}:{version}"]
    build = make("-n", "image")
    assert f"--build-arg VERSION={version}" in build
    assert f"-t {IMAGE_REPO}:{version}" in build


def test_deploy_references_the_released_image(version: str) -> None:
    kustomization = yaml.safe_load(
        (REPO_ROOT / "deploy" / "manager" / "kustomization.yaml").read_text()
    )
    (entry,) = [i for i in kustomization["images"] if i["name"] == IMAGE_REPO]
    assert entry == {"name": IMAGE_REPO, "newName": IMAGE_REPO, "newTag": version}
    deployment = yaml.safe_load((REPO_ROOT / "deploy" / "manager" / "deployment.yaml").read_text())
    images = [c["image"] for c in deployment["spec"]["template"]["spec"]["containers"]]
    assert images == [IMAGE_REPO]  # the tag comes from the kustomization only


def test_version_sync_is_idempotent(version: str, tmp_path: Path) -> None:
    """`make version-sync` rewrites exactly the image entry, and nothing when it agrees."""
    script = REPO_ROOT / "hack" / "version-sync.sh"
    copy = tmp_path / "repo"
    (copy / "hack").mkdir(parents=True)
    (copy / "deploy" / "manager").mkdir(parents=True)
    shutil.copy2(script, copy / "hack" / script.name)
    source = REPO_ROOT / "deploy" / "manager" / "kustomization.yaml"
    target = copy / "deploy" / "manager" / "kustomization.yaml"
    shutil.copy2(source, target)

    def sync(repo: str, new: str) -> None:
        subprocess.run(
            ["bash", str(copy / "hack" / script.name), repo, new], check=True, capture_output=True
        )

    sync(IMAGE_REPO, version)
    assert target.read_text() == source.read_text()
    sync("registry.example/bco", "9.8.7")
    changed = target.read_text()
    assert 'newName: registry.example/bco\n    newTag: "9.8.7"' in changed
    assert changed.replace("registry.example/bco", IMAGE_REPO).replace(
        '"9.8.7"', f'"{version}"'
    ) == source.read_text()


def test_changelog_keeps_a_changelog_and_names_the_version(version: str) -> None:
    text = (REPO_ROOT / "CHANGELOG.md").read_text()
    assert text.startswith("# Changelog\n")
    assert "https://keepachangelog.com/en/1.1.0/" in text
    assert re.search(r"^## \[Unreleased\]$", text, re.M)
    releases = [m["version"] for m in RELEASE.finditer(text)]
    assert releases, "no released version in CHANGELOG.md"
    assert releases[0] == version, f"newest CHANGELOG release {releases[0]}, pyproject {version}"
    keys = [tuple(int(p) for p in v.split(".")) for v in releases]
    assert keys == sorted(keys, reverse=True), "releases are not newest first"
    for released in releases:
        assert re.search(rf"^\[{re.escape(released)}\]: https://\S+/v{released}$", text, re.M), (
            f"no link for [{released}] (tag v{released})"
        )
    sections = re.findall(r"^### (\w+)$", text, re.M)
    allowed = {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}
    assert set(sections) <= allowed, set(sections) - allowed


def test_readme_install_names_the_released_image(version: str) -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert f"{IMAGE_REPO}:{version}" in readme
    assert "digest" in readme


def test_head_tag_is_the_version(version: str) -> None:
    """Release tags are `v` + the version; a tagged HEAD must carry this one."""
    git = shutil.which("git")
    if git is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tags = subprocess.run(
        [git, "tag", "--points-at", "HEAD", "--list", "v*"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.split()
    assert all(tag == f"v{version}" for tag in tags), f"HEAD is tagged {tags}, version {version}"


def test_licence_is_mit_everywhere() -> None:
    project = pyproject()["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    licence = (REPO_ROOT / "LICENSE").read_text()
    assert licence.startswith("MIT License\n")
    assert "Permission is hereby granted, free of charge" in licence
    assert 'org.opencontainers.image.licenses="MIT"' in (REPO_ROOT / "Dockerfile").read_text()

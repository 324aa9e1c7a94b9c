"""What can be checked of the operator image without a container engine.

The Dockerfile is read stage by stage, and its build is replayed on this machine: the build
context as .dockerignore leaves it, a fresh virtualenv, `pip install -c requirements.lock .`,
the installers removed, then `python -m batchcompute_operator --help` from that virtualenv
alone. The replay takes about 20 s with the local package index.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
LOCK = REPO_ROOT / "requirements.lock"
VENV = "/opt/venv"
INSTALL_TIMEOUT = 300

BUILD_TOOLS = re.compile(
    r"\b(apt-get|apt|apk|yum|dnf|microdnf|pip3?|uv|poetry|gcc|g\+\+|make|cc|build-essential|"
    r"ensurepip|setup\.py)\b"
)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> list[Stage]:
    """Instructions per stage: line continuations joined, comments and parser directives
    dropped (enough for this Dockerfile; heredocs are not used)."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"

    stages: list[Stage] = []
    for instruction in logical:
        keyword, _, args = instruction.partition(" ")
        keyword = keyword.upper()
        args = args.strip()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif stages:
            stages[-1].instructions.append((keyword, args))
    assert stages, "no FROM in the Dockerfile"
    return stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


def test_two_stages_from_python_311_slim(stages: list[Stage]) -> None:
    assert len(stages) == 2
    arg = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.M)
    bases = {s.base.replace("${PYTHON_IMAGE}", arg.group(1) if arg else "") for s in stages}
    assert bases == {"python:3.11-slim"}
    assert stages[0].name == "builder"
    assert any(f"-m venv {VENV}" in run for run in stages[0].all("RUN"))
    assert any(
        "pip install" in run and "-c requirements.lock" in run for run in stages[0].all("RUN")
    )


def test_final_stage_runs_as_a_numeric_non_root_user(final: Stage) -> None:
    users = final.all("USER")
    assert users, "the final stage sets no USER"
    user, _, group = users[-1].partition(":")
    assert user.isdigit() and int(user) != 0, f"USER {users[-1]!r} is not a numeric non-root UID"
    assert not group or (group.isdigit() and int(group) != 0)


def test_entrypoint_runs_the_operator_module(final: Stage) -> None:
    (entrypoint,) = final.all("ENTRYPOINT")
    assert json.loads(entrypoint) == ["python", "-m", "batchcompute_operator"]
    assert not final.all("CMD")


def test_final_stage_installs_no_build_tools(final: Stage) -> None:
    for run in final.all("RUN"):
        assert not BUILD_TOOLS.search(run), f"build tooling in the final stage: RUN {run}"
    copies = final.all("COPY")
    assert copies == [f"--from=builder {VENV} {VENV}"], copies
    assert not final.all("ADD")


def test_final_stage_environment(final: Stage) -> None:
    env = " ".join(final.all("ENV"))
    for setting in ("PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1", "TMPDIR=/tmp"):
        assert setting in env
    assert f"PATH={VENV}/bin:" in env
    assert "8080" in final.all("EXPOSE")
    labels = " ".join(final.all("LABEL"))
    for key in ("title", "description", "source", "licenses", "version"):
        assert f"org.opencontainers.image.{key}=" in labels


# -- the build context -------------------------------------------------------------------


def ignore_patterns() -> list[tuple[str, bool]]:
    patterns = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        patterns.append((line.lstrip("!").strip("/"), negated))
    return patterns


def _matches(pattern: str, path: str) -> bool:
    if pattern.startswith("**/"):
        segments = path.split("/")
        tails = ("/".join(segments[i:]) for i in range(len(segments)))
        return any(fnmatch.fnmatchcase(tail, pattern[3:]) for tail in tails)
    return fnmatch.fnmatchcase(path, pattern)


def ignored(relative: str, patterns: list[tuple[str, bool]]) -> bool:
    """Docker's rule, simplified: the last matching pattern wins, a pattern matching a
    directory excludes everything below it, `**/` matches any number of directories."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern, negated in patterns:
        if any(_matches(pattern, prefix) for prefix in prefixes):
            result = not negated
    return result


def build_context(destination: Path) -> Path:
    """A copy of the repository as the image build sees it."""
    patterns = ignore_patterns()
    for directory, subdirs, files in os.walk(REPO_ROOT):
        base = Path(directory).relative_to(REPO_ROOT).as_posix()
        prefix = "" if base == "." else base + "/"
        subdirs[:] = [d for d in subdirs if not ignored(prefix + d, patterns)]
        for name in files:
            relative = prefix + name
            if not ignored(relative, patterns):
                target = destination / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO_ROOT / relative, target)
    return destination


def test_dockerignore_keeps_tests_and_test_bed_out() -> None:
    patterns = ignore_patterns()
    for path in (
        ".git/HEAD",
        "tests/unit/test_image_layout.py",
        "bench/run.py",
        "operator/batchcompute_operator/__pycache__/config.cpython-311.pyc",
        ".pytest_cache/v/cache/nodeids",
        ".mypy_cache/3.11/x.json",
        ".ruff_cache/content",
        "operator/batchcompute_testbed/controlplane/cluster.py",
    ):
        assert ignored(path, patterns), f"{path} would be sent to the image build"
    for path in (
        "pyproject.toml",
        "requirements.lock",
        "README.md",
        "operator/batchcompute_operator/__main__.py",
        "operator/batchcompute_operator/workspace/client.py",
    ):
        assert not ignored(path, patterns), f"{path} would be missing from the image build"


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def test_image_virtualenv_runs_the_operator(tmp_path: Path) -> None:
    """The builder stage's steps, replayed: the installed operator starts (--help)."""
    if not LOCK.exists():
        pytest.skip("requirements.lock is missing: the image build would fail without it")
    context = build_context(tmp_path / "context")
    assert not (context / "operator" / "batchcompute_testbed").exists()
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"

    def run(*argv: str | Path, cwd: Path = context) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(a) for a in argv],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
        )
        assert result.returncode == 0, (
            f"{' '.join(map(str, argv))} exited {result.returncode}:\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
        return result

    python = _venv_python(venv)
    run(sys.executable, "-m", "venv", venv)
    run(python, "-m", "pip", "install", "--no-cache-dir", "-c", "requirements.lock", ".")
    run(python, "-m", "pip", "check")
    run(python, "-m", "pip", "uninstall", "--yes", "pip", "setuptools")

    elsewhere = tmp_path / "run"  # not the context: the installed package must be used
    elsewhere.mkdir()
    shown = run(python, "-m", "batchcompute_operator", "--help", cwd=elsewhere)
    assert "usage: batchcompute-operator" in shown.stdout
    where = run(python, "-c", "import batchcompute_operator as m; print(m.__file__)", cwd=elsewhere)
    assert where.stdout.strip().startswith(str(venv))
    probe = subprocess.run(
        [str(python), "-c", "import batchcompute_testbed"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert probe.returncode != 0, "the test bed package is installed in the image"
    assert not (venv / "bin" / "pip").exists()

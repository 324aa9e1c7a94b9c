"""What can be checked of the operator image without a container engine.

The Dockerfile is read stage by stage, and its builder stage is replayed on this machine:
the files its COPY instructions take from the build context (as .dockerignore leaves it), a
fresh virtualenv, `pip install --require-hashes -r requirements.lock`, the operator built
without build isolation, the installers removed, then `python -m batchcompute_operator` from
that virtualenv alone. The replay takes about 45 s once `make venv` has filled pip's cache,
and runs only on the image's Python version.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
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


@pytest.fixture(scope="module")
def builder(stages: list[Stage]) -> Stage:
    return stages[0]


def base_image() -> str:
    arg = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.M)
    assert arg, "no ARG PYTHON_IMAGE default"
    return arg.group(1)


def test_stages_from_python_311_slim(stages: list[Stage]) -> None:
    """builder, the e2e emulator, and the runtime image last (the default target)."""
    assert [s.name for s in stages] == ["builder", "emulator", None]
    bases = {s.base.replace("${PYTHON_IMAGE}", base_image()) for s in stages}
    assert bases == {"python:3.11-slim"}


def test_builder_installs_only_hashed_locked_files(builder: Stage) -> None:
    runs = builder.all("RUN")
    assert any(f"-m venv {VENV}" in run for run in runs)
    installs = [run for run in runs if "pip install" in run]
    assert len(installs) == 2, installs
    deps, project = installs
    assert "--require-hashes -r requirements.lock" in deps
    # The project itself: no dependency resolution, and the build backend from the lock.
    assert "--no-deps" in project and "--no-build-isolation" in project
    assert not any("-c requirements.lock" in run or "--upgrade" in run for run in runs)
    # Only the operator package is copied in, never the test bed.
    sources = [word for copy in builder.all("COPY") for word in copy.split()[:-1]]
    assert "operator/batchcompute_operator/" in sources
    assert not any("batchcompute_testbed" in s or s.rstrip("/") == "operator" for s in sources)


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


def test_emulator_stage_runs_the_test_bed_emulator(stages: list[Stage]) -> None:
    """For make e2e only: the operator's locked virtualenv plus the test bed's source."""
    (emulator,) = [s for s in stages if s.name == "emulator"]
    assert f"--from=builder {VENV} {VENV}" in emulator.all("COPY")
    (entrypoint,) = emulator.all("ENTRYPOINT")
    assert json.loads(entrypoint) == ["python", "-m", "batchcompute_testbed.emulator"]
    user = emulator.all("USER")[-1].partition(":")[0]
    assert user.isdigit() and int(user) != 0


def test_final_stage_environment(final: Stage) -> None:
    env = " ".join(final.all("ENV"))
    for setting in ("PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1", "TMPDIR=/tmp"):
        assert setting in env
    assert f"PATH={VENV}/bin:" in env
    assert final.all("EXPOSE") == ["8080 8081"]  # health, metrics
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


def test_dockerignore_keeps_tests_and_development_files_out() -> None:
    patterns = ignore_patterns()
    for path in (
        ".git/HEAD",
        "tests/unit/test_image_layout.py",
        "bench/run.py",
        "operator/batchcompute_operator/__pycache__/config.cpython-311.pyc",
        "operator/batchcompute_testbed/emulator/__pycache__/app.cpython-311.pyc",
        ".pytest_cache/v/cache/nodeids",
        ".mypy_cache/3.11/x.json",
        ".ruff_cache/content",
        ".venv/bin/python",
        "requirements-dev.lock",
    ):
        assert ignored(path, patterns), f"{path} would be sent to the image build"
    for path in (
        "pyproject.toml",
        "requirements.lock",
        "README.md",
        "LICENSE",
        "operator/batchcompute_operator/__main__.py",
        "operator/batchcompute_operator/workspace/client.py",
        # the emulator stage (make e2e); the operator stages never copy it
        "operator/batchcompute_testbed/emulator/app.py",
    ):
        assert not ignored(path, patterns), f"{path} would be missing from the image build"


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def replay_copies(stage: Stage, context: Path, workdir: Path) -> None:
    """The stage's COPY instructions from the build context (not --from) into `workdir`."""
    for copy in stage.all("COPY"):
        words = copy.split()
        if words[0].startswith("--from="):
            continue
        *sources, destination = words
        target = workdir / destination
        for source in sources:
            for match in sorted(context.glob(source.rstrip("/"))):
                if match.is_dir():
                    shutil.copytree(match, target, dirs_exist_ok=True)
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(match, target / match.name)


def test_image_virtualenv_runs_the_operator(tmp_path: Path, builder: Stage) -> None:
    """The builder stage's steps, replayed: the installed operator starts and reports the
    version pyproject.toml gives; the test bed is not installed."""
    image_python = re.fullmatch(r"python:(\d+\.\d+)-slim", base_image())
    assert image_python
    if f"{sys.version_info.major}.{sys.version_info.minor}" != image_python.group(1):
        pytest.skip(f"the image runs Python {image_python.group(1)}; this is {sys.version}")
    context = build_context(tmp_path / "context")
    src = tmp_path / "src"  # WORKDIR /src
    replay_copies(builder, context, src)
    assert (src / "operator" / "batchcompute_operator" / "__main__.py").exists()
    assert not (src / "operator" / "batchcompute_testbed").exists()
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"

    def run(*argv: str | Path, cwd: Path = src) -> subprocess.CompletedProcess[str]:
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
    # Unlike the image build: pip's cache is used (make venv filled it with the same files,
    # hash-checked again on install) and no bytecode is compiled, which halves the time.
    pip = (python, "-m", "pip", "install", "--no-compile")
    run(sys.executable, "-m", "venv", venv)
    run(*pip, "--require-hashes", "-r", "requirements.lock")
    run(*pip, "--no-deps", "--no-build-isolation", ".")
    run(python, "-m", "pip", "check")
    run(python, "-m", "pip", "uninstall", "--yes", "pip", "setuptools")

    elsewhere = tmp_path / "run"  # not the source: the installed package must be used
    elsewhere.mkdir()
    shown = run(python, "-m", "batchcompute_operator", "--help", cwd=elsewhere)
    assert "usage: batchcompute-operator" in shown.stdout
    version = run(python, "-m", "batchcompute_operator", "--version", cwd=elsewhere)
    with (REPO_ROOT / "pyproject.toml").open("rb") as f:
        expected = tomllib.load(f)["project"]["version"]
    assert version.stdout.split() == ["batchcompute-operator", expected]
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

    # The emulator stage (make e2e): the same virtualenv and the test bed's source suffice.
    testbed = tmp_path / "testbed"
    shutil.copytree(context / "operator" / "batchcompute_testbed", testbed / "batchcompute_testbed")
    env["PYTHONPATH"] = str(testbed)
    emulator = run(python, "-m", "batchcompute_testbed.emulator", "--help", cwd=elsewhere)
    assert "--identity-header" in emulator.stdout

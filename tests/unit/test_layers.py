"""The import contracts in pyproject.toml catch what they promise to catch.

Each case copies the package, breaks one rule in the copy, and runs import-linter with the
project's own contracts on it: the unchanged copy passes, every broken one fails, naming the
contract it broke.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "operator" / "batchcompute_operator"
LINT = Path(sys.executable).parent / "lint-imports"


def lint(tmp_path: Path, breakage: dict[str, str]) -> subprocess.CompletedProcess[str]:
    copy = tmp_path / "batchcompute_operator"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    for module, line in breakage.items():
        path = copy / module
        path.write_text(path.read_text() + f"\n{line}\n")
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    return subprocess.run([str(LINT), "--config", str(tmp_path / "pyproject.toml"),
                           "--no-cache"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def test_the_package_as_it_is_keeps_every_contract(tmp_path: Path) -> None:
    result = lint(tmp_path, {})
    assert result.returncode == 0, result.stdout[-3000:]
    assert "3 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(("breakage", "contract"), [
    ({"reconcile.py": "import batchcompute_operator.workspace.client  # noqa"},
     "layers"),
    ({"status.py": "import batchcompute_operator.kube.client  # noqa"},  # indirect for reconcile
     "layers"),
    ({"engine/loop.py": "import kopf  # noqa"}, "only the kopf wiring knows kopf"),
    ({"spec.py": "import httpx  # noqa"}, "stay pure"),
], ids=["reconcile-imports-the-arm-client", "indirectly-through-status",
        "engine-imports-kopf", "spec-imports-httpx"])
def test_a_broken_rule_is_reported(tmp_path: Path, breakage: dict[str, str],
                                   contract: str) -> None:
    result = lint(tmp_path, breakage)
    assert result.returncode != 0, result.stdout[-3000:]
    text = " ".join(result.stdout.split())  # contract names wrap across lines
    start = text.index("Contracts ---")
    verdict = text[text.index(contract, start):]
    assert verdict.index("BROKEN") < verdict.index("KEPT") if "KEPT" in verdict else \
        "BROKEN" in verdict, result.stdout[-3000:]

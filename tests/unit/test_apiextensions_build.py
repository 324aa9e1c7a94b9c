"""When the apiextensions-apiserver cannot be built, the test bed says so in one line and the
CEL tests are skipped with that line as the reason, in the run's summary.

The build is made to fail by pointing it at a Debian mirror that is not there (a closed
loopback port), in a cache directory of its own: no network, a few seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batchcompute_testbed.controlplane import extensions
from batchcompute_testbed.controlplane.extensions import (
    UNAVAILABLE_PREFIX,
    ApiextensionsUnavailable,
    find_apiextensions_apiserver,
)

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "hack" / "build-apiextensions-apiserver.sh"
NO_MIRROR = "http://127.0.0.1:9/debian"  # the discard port: nothing listens there


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the module: the first test fails the build, the others reuse that."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def broken_build(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {"BCO_CACHE_DIR": str(cache_dir), "BCO_APIEXTENSIONS_MIRROR": NO_MIRROR}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("BCO_APIEXTENSIONS_APISERVER", raising=False)
    monkeypatch.delenv("BCO_APIEXTENSIONS_RETRY", raising=False)
    monkeypatch.setattr(extensions, "_found", None)
    return {**os.environ, **env}


def _run_script(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env,
                          timeout=120, check=False)


def test_a_failed_build_is_one_line_and_is_remembered(broken_build: dict[str, str]) -> None:
    first = _run_script(broken_build)
    assert first.returncode == 1
    assert first.stdout == ""
    failures = [line for line in first.stderr.splitlines() if line.startswith(UNAVAILABLE_PREFIX)]
    assert failures == [first.stderr.splitlines()[-1]], first.stderr
    assert NO_MIRROR.rsplit("/", 1)[0] in failures[0]

    began = time.monotonic()
    again = _run_script(broken_build)
    assert again.returncode == 1
    assert again.stderr.splitlines() == failures, "a remembered failure is one line, no retry"
    assert time.monotonic() - began < 5


def test_the_test_bed_raises_the_line(broken_build: dict[str, str]) -> None:
    with pytest.raises(ApiextensionsUnavailable) as err:
        find_apiextensions_apiserver()
    message = str(err.value)
    assert message.startswith(UNAVAILABLE_PREFIX)
    assert "\n" not in message


def test_the_cel_tests_skip_with_the_reason_in_the_summary(broken_build: dict[str, str]
                                                           ) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/integration/cel", "-q", "-p", "no:cacheprovider"],
        cwd=REPO, capture_output=True, text=True, env=broken_build, timeout=300, check=False)
    summary = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout + result.stderr
    assert any(" skipped" in line and "passed" not in line and "failed" not in line
               for line in summary[-1:]), summary[-3:]
    reasons = [line for line in summary if line.startswith("CRD on a modern API server:")]
    assert len(reasons) == 1, summary[-5:]
    assert f"skipped: {UNAVAILABLE_PREFIX}" in reasons[0]

"""A bad setting stops the operator before it does anything: `python -m batchcompute_operator`
with one BCO_* variable set to a bad value exits 2 with exactly one line on stderr naming the
variable, the value and what is accepted, and no traceback.

Every variable the settings read is covered: the list below is checked against the names
`Settings.from_env` actually asks the environment for, and against every BCO_* name written
anywhere in the operator's source.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from batchcompute_operator.config import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE = REPO_ROOT / "operator" / "batchcompute_operator"

# One bad value per variable, and a fragment of what the message must say is accepted.
BAD: dict[str, tuple[str, str]] = {
    "BCO_ALLOW_INSECURE_HTTP": ("maybe", "true or false"),
    "BCO_API_VERSION": ("latest", "an api-version such as 2020-02-02"),
    "BCO_ARM_AUDIENCE": ("management.azure.com", "an https:// URL"),
    "BCO_ARM_DELETES": ("200", "BUCKET/REFILL, e.g. 200/10"),
    "BCO_ARM_ENDPOINT": ("http://arm.example", "plain http needs BCO_ALLOW_INSECURE_HTTP=true"),
    "BCO_ARM_READS": ("fast", "BUCKET/REFILL"),
    "BCO_ARM_WRITES": ("inf/10", "both positive"),
    "BCO_CA_BUNDLE": ("/nonexistent/ca.pem", "the path of a readable file"),
    "BCO_CREDENTIAL": ("password", "default, managed-identity, workload-identity, environment"),
    "BCO_DETACH_WAIT": ("-1", "a number of seconds from 0 up"),
    "BCO_FAILURE_RETRY_MAX": ("1", "not below BCO_FAILURE_RETRY_MIN"),
    "BCO_FAILURE_RETRY_MIN": ("0", "a number of seconds from 0.1 up"),
    "BCO_HEALTH_PORT": ("70000", "a port number from 0 to 65535 (0 turns the probes off)"),
    "BCO_HTTP_TIMEOUT": ("30s", "a number of seconds"),
    "BCO_KUBE_CONNECTIONS": ("0", "a whole number from 1 up"),
    "BCO_LOG_FORMAT": ("logfmt", "json, text"),
    "BCO_LOG_LEVEL": ("bogus", "DEBUG, INFO, WARNING, ERROR"),
    "BCO_LOOP_WORKERS": ("1000", "a whole number from 1 to 256"),
    "BCO_MANAGED_IDENTITY_CLIENT_ID": ("my-identity", "a client id (GUID)"),
    "BCO_MAX_CONNECTIONS": ("-5", "a whole number from 1 up"),
    "BCO_MAX_READS": ("0", "a whole number from 1 up"),
    "BCO_METRICS_PORT": ("metrics", "a port number from 0 to 65535 (0 turns /metrics off)"),
    "BCO_NAMESPACES": ("team-a,Team_B", "comma-separated namespace names"),
    "BCO_OBSERVE_MAX_AGE": ("nan", "a number of seconds from 0 up"),
    "BCO_PACING": ("sometimes", "true or false"),
    "BCO_PEERING": ("HA_Pair", "a Kubernetes object name"),
    "BCO_PEERING_LIFETIME": ("1", "a whole number of seconds from 5 up"),
    "BCO_POLL_INTERVAL": ("inf", "a number of seconds from 0.2 up"),
    "BCO_RESYNC_INTERVAL": ("5m", "a number of seconds from 1 up"),
    "BCO_RETRY_MAX": ("1", "not below BCO_RETRY_MIN"),
    "BCO_RETRY_MIN": ("0.01", "a number of seconds from 0.1 up"),
    "BCO_STATIC_TOKEN_FILE": ("/nonexistent/token", "the path of a readable file"),
    "BCO_WORKSPACE_POLICY": ("{not json", "a JSON policy or @file"),
}


class Recording(dict[str, str]):
    """An empty environment that remembers every name it was asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: set[str] = set()

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.asked.add(key)
        return super().__contains__(key)


def names_read() -> set[str]:
    env = Recording()
    Settings.from_env(env)
    return env.asked


def test_every_variable_the_settings_read_has_a_bad_value_here() -> None:
    assert set(BAD) == names_read()


def test_no_other_bco_variable_is_named_in_the_operator() -> None:
    """A BCO_* variable read anywhere but config.py would escape validation."""
    named: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        named.update(re.findall(r"\bBCO_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    assert named <= set(BAD), sorted(named - set(BAD))


@pytest.fixture(scope="module")
def bare_env() -> dict[str, str]:
    """No BCO_* or Azure variables from the developer's shell; the source tree importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BCO_", "AZURE_"))}
    env["PYTHONPATH"] = str(REPO_ROOT / "operator")
    return env


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_bad_value_stops_the_operator_with_one_line(name: str,
                                                      bare_env: dict[str, str]) -> None:
    value, accepted = BAD[name]
    done = subprocess.run([sys.executable, "-m", "batchcompute_operator"],
                          env={**bare_env, name: value}, capture_output=True, text=True,
                          timeout=60, check=False, cwd=REPO_ROOT)
    assert done.returncode == 2, done
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, lines
    (line,) = lines
    assert line.startswith(f"batchcompute-operator: {name}={value!r} is invalid; accepted: "), line
    assert accepted in line, line


def test_a_flag_is_checked_like_its_variable(bare_env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-m", "batchcompute_operator", "--poll-interval",
                           "soon"], env=bare_env, capture_output=True, text=True, timeout=60,
                          check=False, cwd=REPO_ROOT)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "batchcompute-operator: BCO_POLL_INTERVAL='soon' is invalid; accepted: a number of "
        "seconds from 0.2 up"]


def test_a_value_on_several_lines_is_still_one_line(bare_env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-m", "batchcompute_operator"],
                          env={**bare_env, "BCO_LOG_LEVEL": "INFO\nDEBUG"},
                          capture_output=True, text=True, timeout=60, check=False, cwd=REPO_ROOT)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        r"batchcompute-operator: BCO_LOG_LEVEL='INFO\nDEBUG' is invalid; accepted: DEBUG, "
        "INFO, WARNING, ERROR"]


def test_the_readme_lists_every_variable() -> None:
    table = (REPO_ROOT / "README.md").read_text().split("## Configuration", 1)[1]
    table = table.split("\n## ", 1)[0].replace("`BCO_ARM_READS` / `_WRITES` / `_DELETES`",
                                                 "`BCO_ARM_READS` `BCO_ARM_WRITES` "
                                                 "`BCO_ARM_DELETES`")
    assert not [name for name in BAD if f"`{name}`" not in table]

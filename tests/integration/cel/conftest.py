"""Fixtures for the CRD on a modern API server: the apiextensions-apiserver beside the test bed.

The server is built once by hack/build-apiextensions-apiserver.sh (`make controlplane` does
it). When it cannot be built, every test here is skipped with the build's one-line reason,
and that reason is repeated at the end of the run's summary.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from batchcompute_testbed.controlplane import (
    ApiextensionsUnavailable,
    ExtensionsServer,
    find_apiextensions_apiserver,
)

CEL_DIR = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def apiextensions(request: pytest.FixtureRequest) -> Iterator[ExtensionsServer]:
    """The apiextensions-apiserver, delegating to the suite's own control plane."""
    try:
        find_apiextensions_apiserver()
    except ApiextensionsUnavailable as exc:
        pytest.skip(str(exc))
    plane = request.getfixturevalue("controlplane").require_local()
    server = ExtensionsServer(plane).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def crd_server(apiextensions: ExtensionsServer) -> ExtensionsServer:
    """The server with crds/ installed as shipped."""
    apiextensions.install_crds()
    return apiextensions


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    reasons: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        if CEL_DIR not in Path(str(report.fspath)).resolve().parents:
            continue
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        reason = reason.removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    for reason, count in reasons.items():
        terminalreporter.write_line(f"CRD on a modern API server: {count} skipped: {reason}")

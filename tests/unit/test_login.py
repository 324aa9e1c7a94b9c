"""How the operator finds the API server and its credentials, and what that costs in memory."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml

from batchcompute_operator import handlers

REPO = Path(__file__).resolve().parents[2]


def kubeconfig(tmp_path: Path, user: dict[str, Any]) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:6443",
                                               "certificate-authority-data": "Q0E="}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u",
                                               "namespace": "team-a"}}],
    }))
    return path


@pytest.fixture
def no_service_account(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside a pod, as kopf's reader finds it (whatever the machine running the tests)."""
    monkeypatch.setattr(kopf, "login_with_service_account", lambda **_: None)


@pytest.fixture
def client_login(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Stands in for the kubernetes client's login and records that it was asked."""
    asked: list[str] = []

    def login_via_client(**_: Any) -> kopf.ConnectionInfo:
        asked.append("client")
        return kopf.ConnectionInfo(server="https://from-the-client:6443", token="t")

    monkeypatch.setattr(kopf, "login_via_client", login_via_client)
    return asked


def login() -> kopf.ConnectionInfo | None:
    return handlers._login(logger=logging.getLogger("test"), settings=kopf.OperatorSettings())


@pytest.mark.usefixtures("no_service_account")
@pytest.mark.parametrize("user", [{"token": "abc"}, {"username": "a", "password": "b"},
                                  {"client-certificate-data": "Q0VSVA==",
                                   "client-key-data": "S0VZ"}])
def test_a_plain_kubeconfig_is_read_without_the_kubernetes_client(
        user: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        client_login: list[str]) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path, user)))
    info = login()
    assert info is not None and info.server == "https://127.0.0.1:6443"
    assert info.default_namespace == "team-a"
    assert client_login == []


@pytest.mark.usefixtures("no_service_account")
@pytest.mark.parametrize("user", [
    {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "kubelogin"}},
    {"tokenFile": "/var/run/token"},
])
def test_a_kubeconfig_with_a_credential_plugin_goes_to_the_kubernetes_client(
        user: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        client_login: list[str]) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path, user)))
    info = login()
    assert info is not None and info.server == "https://from-the-client:6443"
    assert client_login == ["client"]


@pytest.mark.usefixtures("no_service_account")
def test_an_unreadable_kubeconfig_is_left_to_the_kubernetes_client_to_explain(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, client_login: list[str]) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({"current-context": "missing", "contexts": []}))
    monkeypatch.setenv("KUBECONFIG", str(path))
    login()
    assert client_login == ["client"]


@pytest.mark.parametrize(("host", "server"), [("10.96.0.1", "https://10.96.0.1:443"),
                                              ("fd00::1", "https://[fd00::1]:443")])
def test_in_a_pod_the_service_account_and_the_kubelet_given_address_are_used(
        host: str, server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        client_login: list[str]) -> None:
    monkeypatch.setattr(kopf, "login_with_service_account",
                        lambda **_: kopf.ConnectionInfo(server="https://kubernetes.default.svc",
                                                        token="sa-token"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "never-read"))
    info = login()
    assert info is not None and (info.server, info.token) == (server, "sa-token")
    assert client_login == []


def test_the_operator_starts_without_importing_the_kubernetes_client() -> None:
    """kopf would import it (about 30 MiB) only to recognise model objects the operator
    never passes; the entry point keeps it out until a kubeconfig needs it."""
    code = ("import sys\n"
            "from batchcompute_operator.__main__ import load_handlers\n"
            "load_handlers()\n"
            "import kopf._cogs.helpers.thirdparty as third\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'kubernetes'),"
            " third.V1ObjectMetaSync)\n"
            "import kubernetes.config\n"  # still there for the kubeconfigs that need it
            "print(kubernetes.config.ConfigException.__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"PYTHONPATH": str(REPO / "operator")})
    assert out.stdout.splitlines() == ["[] None", "ConfigException"]


def test_kopf_hands_every_resource_the_process_memo_not_a_copy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """kopf keeps a memo per resource for as long as it exists; ours is shared, not copied."""
    import asyncio

    from kopf._core.reactor.inventory import ResourceMemories

    from batchcompute_operator.config import Settings

    started: dict[str, Any] = {}
    monkeypatch.setattr(kopf, "run", lambda **kwargs: started.update(kwargs))
    handlers.run(Settings(), "op-1", 1, ())
    memo = started["memo"]

    async def recall() -> list[Any]:
        memories = ResourceMemories()
        return [(await memories.recall({"metadata": {"uid": uid, "name": uid}},
                                       memobase=memo)).memo for uid in ("u1", "u2")]

    assert all(seen is memo for seen in asyncio.run(recall()))

"""`batchcompute-operator export` against the emulator, in-process on loopback, over TLS.

The command runs with the operator's own credential chain (azure-identity's managed-identity
flow, which the emulator serves) and ARM client; each test checks what a user would read (the
YAML on stdout, the notes and errors on stderr, the exit code) and what ARM saw (the
emulator's request log: one paged LIST, never a write).
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import ssl
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from batchcompute_operator import export
from batchcompute_operator.spec import parse_spec
from batchcompute_testbed.emulator import EmulatorConfig, EmulatorServer

REPO_ROOT = Path(__file__).resolve().parents[2]
PLUGIN = REPO_ROOT / "hack" / "kubectl-batchcompute"
SUB = "0b1f6471-1bf0-4dda-aec3-cb9272f09590"
RG = "rg-ml"
WS = "ws-main"
ACCOUNT_ID = (f"/subscriptions/{SUB}/resourceGroups/rg-batch/providers/Microsoft.Batch/"
              "batchAccounts/batchacct1")
OTHER_ACCOUNT_ID = ACCOUNT_ID.replace("batchacct1", "batchacct2")
WORKSPACE_ID = (f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/"
                f"Microsoft.MachineLearningServices/workspaces/{WS}")
ARGS = ["--subscription", SUB, "--resource-group", RG, "--workspace", WS]


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def documents(self) -> list[dict[str, Any]]:
        return [d for d in yaml.safe_load_all(self.out) if d is not None]

    def by_compute(self) -> dict[str, dict[str, Any]]:
        return {d["spec"]["computeName"]: d for d in self.documents}


class Azure:
    """The emulator, and the environment the command reads its BCO_* settings from."""

    def __init__(self, server: EmulatorServer, admin: httpx.AsyncClient) -> None:
        self.server = server
        self.admin = admin
        self.env = {"BCO_ARM_ENDPOINT": server.arm_url, "BCO_CA_BUNDLE": str(server.ca_file),
                    "BCO_CREDENTIAL": "managed-identity"}

    async def plant(self, name: str, *, compute_type: str = "Batch",
                    resource_id: str = ACCOUNT_ID, tags: dict[str, str] | None = None,
                    **properties: Any) -> None:
        """A compute already in the workspace (attached by SDK v1, the portal, ...)."""
        body = {"tags": tags, "properties": {"computeType": compute_type,
                                             "resourceId": resource_id, **properties}}
        response = await self.admin.put(f"/computes/{SUB}/{RG}/{WS}/{name}", json=body)
        response.raise_for_status()

    async def fault(self, **fault: Any) -> None:
        (await self.admin.post("/faults", json=fault)).raise_for_status()

    async def requests(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = (await self.admin.get("/requests")).json()
        return [e for e in entries if e["kind"] != "identity"]

    async def export(self, *args: str, env: dict[str, str] | None = None) -> Result:
        out, err = io.StringIO(), io.StringIO()
        code = await export.run([*ARGS, *args], stdout=out, stderr=err,
                                environ=env or self.env)
        return Result(code, out.getvalue(), err.getvalue())


@pytest.fixture
async def azure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Azure]:
    seed = {"workspaces": [{"subscriptionId": SUB, "resourceGroup": RG, "name": WS,
                            "location": "westeurope"}],
            "batchAccounts": [{"subscriptionId": SUB, "resourceGroup": "rg-batch",
                               "name": "batchacct1", "location": "northeurope"}]}
    config = EmulatorConfig(tls_dir=tmp_path / "tls", operation_seconds=0, seed=seed,
                            throttle=None)
    async with EmulatorServer(config) as server:
        for name in ("IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT", "MSI_ENDPOINT",
                     "MSI_SECRET", "AZURE_CLIENT_ID", "AZURE_FEDERATED_TOKEN_FILE"):
            monkeypatch.delenv(name, raising=False)
        # azure-identity's App Service managed identity, served by the emulator.
        monkeypatch.setenv("IDENTITY_ENDPOINT", server.identity_endpoint)
        monkeypatch.setenv("IDENTITY_HEADER", server.identity_header)
        tls = ssl.create_default_context(cafile=str(server.ca_file))
        async with httpx.AsyncClient(base_url=server.admin_url, verify=tls, timeout=5) as admin:
            yield Azure(server, admin)


async def test_prints_one_attachment_per_batch_compute_ready_to_apply(azure: Azure) -> None:
    await azure.plant("sdk-batch")  # as SDK v1 attaches: no tags, no description
    await azure.plant("Portal-Batch-", resource_id=OTHER_ACCOUNT_ID,
                      description="attached in the portal: team vision",
                      tags={"cost-center": "ml-42", "yes": "on"})
    await azure.plant("aks-inference", compute_type="AKS", resource_id="/x/aks")

    result = await azure.export()

    assert (result.code, result.err) == (0, "")
    docs = result.by_compute()
    assert list(docs) == ["Portal-Batch-", "sdk-batch"]  # sorted; the AKS compute is not one
    assert docs["sdk-batch"] == {
        "apiVersion": "batchcompute.azureml.dev/v1alpha1",
        "kind": "BatchComputeAttachment",
        "metadata": {"name": "sdk-batch"},  # no namespace: kubectl apply -n decides
        "spec": {
            "workspace": {"subscriptionId": SUB, "resourceGroup": RG, "name": WS},
            "computeName": "sdk-batch",
            "batchAccount": {"resourceId": ACCOUNT_ID},
            "deletionPolicy": "Orphan",
        },
    }
    portal = docs["Portal-Batch-"]
    assert portal["metadata"]["name"] == "portal-batch"  # a valid Kubernetes name
    assert portal["spec"]["batchAccount"] == {"resourceId": OTHER_ACCOUNT_ID}
    assert portal["spec"]["description"] == "attached in the portal: team vision"
    assert portal["spec"]["tags"] == {"cost-center": "ml-42", "yes": "on"}  # strings, not bools
    for doc in docs.values():  # every manifest is a spec the operator accepts as it is
        parsed = parse_spec(doc["spec"], doc["metadata"]["name"])
        assert parsed.deletion_policy == "Orphan" and parsed.management_policy == "Manage"
    assert result.out.startswith(f"# BatchComputeAttachments for the Batch computes of "
                                 f"workspace {WS}\n")
    assert "2 of 2 Batch computes, 3 computes in all" in result.out
    assert f"# compute sdk-batch: {ACCOUNT_ID}\n" in result.out

    seen = [(e["method"], e["path"]) for e in await azure.requests()]
    assert seen == [("GET", f"{WORKSPACE_ID}/computes")]  # one LIST, nothing written


async def test_namespace_and_policies_are_as_asked(azure: Azure) -> None:
    await azure.plant("batch-a")
    result = await azure.export("--namespace", "team-a", "--deletion-policy", "Detach",
                                "--management-policy", "Observe")
    assert result.code == 0
    [doc] = result.documents
    assert doc["metadata"] == {"name": "batch-a", "namespace": "team-a"}
    assert doc["spec"]["deletionPolicy"] == "Detach"
    assert doc["spec"]["managementPolicy"] == "Observe"
    assert "deletionPolicy Detach: deleting one of these resources detaches" in result.out
    assert "managementPolicy Observe" in result.out


async def test_a_paged_list_is_followed_to_its_end(azure: Azure) -> None:
    for n in range(3):
        await azure.plant(f"batch-{n}")
    (await azure.admin.post("/config", json={"page_size": 1})).raise_for_status()
    result = await azure.export()
    assert sorted(result.by_compute()) == ["batch-0", "batch-1", "batch-2"]
    requests = await azure.requests()
    assert {e["method"] for e in requests} == {"GET"}
    assert len(requests) == 3  # the pages of one LIST


async def test_owned_computes_are_left_out_unless_asked(azure: Azure) -> None:
    await azure.plant("batch-owned", tags={"batchcompute-operator.owner": "team-b/gpu",
                                           "batchcompute-operator.owner-uid": "1234",
                                           "team": "b"})
    await azure.plant("batch-free")

    result = await azure.export("--namespace", "team-a")
    assert list(result.by_compute()) == ["batch-free"]
    assert "skipped 'batch-owned': it is owned by BatchComputeAttachment team-b/gpu" in result.err

    again = await azure.export("--namespace", "team-a", "--include-owned")
    owned = again.by_compute()["batch-owned"]
    assert owned["metadata"] == {"name": "gpu", "namespace": "team-b"}  # where its owner was
    assert owned["spec"]["tags"] == {"team": "b"}  # the user's tags, not the ownership record
    assert again.by_compute()["batch-free"]["metadata"]["namespace"] == "team-a"


async def test_what_the_operator_cannot_manage_is_named_and_left_out(azure: Azure) -> None:
    await azure.plant("ab")  # SDK v1 accepted names the service's rule now refuses
    await azure.plant("tagged", tags={f"t{n}": "x" for n in range(49)})
    await azure.plant("failed-batch", provisioningState="Failed",
                      provisioningErrors=[{"error": {"code": "ResourceNotFound",
                                                     "message": "no such account"}}])
    result = await azure.export()
    assert result.code == 0
    assert list(result.by_compute()) == ["failed-batch"]
    assert "skipped 'ab': the operator cannot manage it as it is in ARM: computeName" in result.err
    assert "skipped 'tagged'" in result.err and "at most 48" in result.err
    assert ("'failed-batch' is Failed in ARM (ResourceNotFound: no such account): once applied, "
            "the operator's PUT attaches it again") in result.err


async def test_a_workspace_without_batch_computes_prints_nothing(azure: Azure) -> None:
    await azure.plant("aks-inference", compute_type="AKS", resource_id="/x/aks")
    result = await azure.export()
    assert (result.code, result.out) == (0, "")
    assert "no Batch compute to export from workspace 'ws-main' (1 computes, 0 of type Batch)" \
        in result.err


async def test_a_missing_role_is_named_with_its_scope(azure: Azure) -> None:
    refusal = (f"The client 'export-user' with object id '5e1c' does not have authorization to "
               f"perform action 'Microsoft.MachineLearningServices/workspaces/computes/read' "
               f"over scope '{WORKSPACE_ID}' or the scope is invalid.")
    await azure.fault(kind="list", count=None, action={
        "status": 403, "body": {"error": {"code": "AuthorizationFailed", "message": refusal}}})
    result = await azure.export()
    assert (result.code, result.out) == (1, "")
    assert result.err.startswith(
        f"batchcompute-operator export: the identity may not list the computes of workspace "
        f"'{WS}': assign it the role 'Reader' (or 'AzureML Compute Operator') on the scope "
        f"{WORKSPACE_ID} (or on its resource group or subscription)")
    assert f"ARM said: AuthorizationFailed: {refusal}" in result.err
    assert "Traceback" not in result.err and result.err.count("\n") == 1


async def test_an_unknown_workspace_is_named(azure: Azure) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = await export.run(["--subscription", SUB, "-g", RG, "-w", "ws-elsewhere"],
                            stdout=out, stderr=err, environ=azure.env)
    assert code == 1
    assert "workspace 'ws-elsewhere' was not found in resource group 'rg-ml' of subscription " \
        f"{SUB}" in err.getvalue()
    assert "Traceback" not in err.getvalue()


async def test_a_token_arm_refuses_is_reported_without_a_traceback(
    azure: Azure, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("not-a-token-the-emulator-issued")
    env = {**azure.env, "BCO_CREDENTIAL": "static-file", "BCO_STATIC_TOKEN_FILE": str(token_file)}
    result = await azure.export(env=env)
    assert (result.code, result.out) == (1, "")
    assert result.err.startswith("batchcompute-operator export: ARM refused the token (token "
                                 f"file {token_file} still holds the token ARM refused")
    assert "Traceback" not in result.err
    assert not [e for e in await azure.requests() if e["method"] != "GET"]


async def test_bad_arguments_stop_before_any_call(azure: Azure) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = await export.run(["--subscription", "not-a-guid", "-g", RG, "-w", WS],
                            stdout=out, stderr=err, environ=azure.env)
    assert code == 2
    assert "--subscription: 'not-a-guid' is invalid: a subscription id (GUID)" in err.getvalue()
    code = await export.run([*ARGS, "--deletion-policy", "Delete"], stdout=out, stderr=err,
                            environ=azure.env)
    assert code == 2
    assert "invalid choice: 'Delete'" in err.getvalue()
    code = await export.run(ARGS, stdout=out, stderr=err,
                            environ={**azure.env, "BCO_CREDENTIAL": "password"})
    assert code == 2
    assert "BCO_CREDENTIAL='password' is invalid" in err.getvalue()
    assert await azure.requests() == []


def test_kubernetes_names_are_valid_and_unique() -> None:
    taken: set[str] = set()
    names = [export.kubernetes_name(n, taken) for n in ("GPU-Pool-", "gpu-pool", "gpu-pool-2")]
    assert names == ["gpu-pool", "gpu-pool-2", "gpu-pool-2-2"]


async def test_kubectl_batchcompute_export_is_the_same_command(azure: Azure) -> None:
    """The kubectl plugin on PATH: `kubectl batchcompute export` runs
    `python -m batchcompute_operator export` in a process of its own."""
    await azure.plant("sdk-batch")
    kubectl = shutil.which("kubectl")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("BCO_")}, **azure.env,
           "KUBECTL_BATCHCOMPUTE_PYTHON": sys.executable,
           "PATH": f"{PLUGIN.parent}{os.pathsep}{os.environ['PATH']}"}
    argv = [kubectl, "batchcompute"] if kubectl else [str(PLUGIN)]  # kubectl finds the plugin
    proc = await asyncio.create_subprocess_exec(
        *argv, "export", *ARGS, "-n", "team-a", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    [doc] = [d for d in yaml.safe_load_all(out) if d]
    assert doc["metadata"] == {"name": "sdk-batch", "namespace": "team-a"}

    usage = await asyncio.create_subprocess_exec(
        *argv, "export", "--subscription", SUB, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(usage.communicate(), timeout=60)
    assert usage.returncode == 2
    assert err.decode().startswith("usage: kubectl batchcompute export")

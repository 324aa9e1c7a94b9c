"""The CRD explains itself: `kubectl explain bca.spec --recursive` and `bca.status --recursive`
show a description on every field, naming the Azure ML SDK v1 equivalent where there is one.

The schema is walked from spec and status down through nested objects, array items and map
values; a field is any entry of a `properties` map.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

CRD_FILE = Path(__file__).resolve().parents[2] / "crds" / "batchcomputeattachments.yaml"

# field -> the SDK v1 name its description must mention (azureml-core's BatchCompute,
# ComputeTarget and Workspace; see shared reference workspace-api-contract.md).
SDK_NAMES = {
    "spec.workspace": "Workspace(subscription_id, resource_group, workspace_name)",
    "spec.workspace.subscriptionId": "subscription_id",
    "spec.workspace.resourceGroup": "resource_group",
    "spec.workspace.name": "workspace_name",
    "spec.computeName": "BatchCompute(workspace, name)",
    "spec.batchAccount": "attach_configuration(resource_group, account_name, resource_id)",
    "spec.batchAccount.resourceId": "resource_id",
    "spec.batchAccount.resourceGroup": "resource_group",
    "spec.batchAccount.accountName": "account_name",
    "spec.deletionPolicy": "detach()",
    "status.provisioningState": "provisioning_state",
    "status.provisioningErrors": "provisioning_errors",
    "status.clusterResourceId": "cluster_resource_id",
    "status.computeLocation": "cluster_location",
    "status.operation": "wait_for_completion()",
    "status.lastSyncTime": "refresh_state()",
}


@cache
def crd() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(CRD_FILE.read_text())
    return data


def root_schema() -> Mapping[str, Any]:
    (version,) = [v for v in crd()["spec"]["versions"] if v.get("storage")]
    schema: Mapping[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def fields(schema: Mapping[str, Any], path: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every field below `schema`, as (dotted path, its schema)."""
    for name, child in schema.get("properties", {}).items():
        yield f"{path}.{name}", child
        yield from fields(child, f"{path}.{name}")
    for nested in ("items", "additionalProperties"):
        if isinstance(schema.get(nested), Mapping):
            yield from fields(schema[nested], path)


def all_fields() -> dict[str, Mapping[str, Any]]:
    root = root_schema()["properties"]
    found = {top: root[top] for top in ("spec", "status")}
    for top in ("spec", "status"):
        found.update(fields(root[top], top))
    return found


def test_the_walk_reaches_nested_fields() -> None:
    found = all_fields()
    for path in ("spec.workspace.subscriptionId", "spec.batchAccount.resourceId",
                 "spec.credentials.secretRef.name", "spec.credentials.secretRef.namespace",
                 "status.operation.kind", "status.operation.since", "spec.managementPolicy",
                 "status.provisioningErrors.code", "status.provisioningErrors.message",
                 "status.conditions.reason", "status.conditions.observedGeneration"):
        assert path in found
    assert len(found) >= 40


@pytest.mark.parametrize("path", sorted(all_fields()))
def test_every_field_is_described(path: str) -> None:
    description = all_fields()[path].get("description")
    assert isinstance(description, str) and description.strip(), f"{path} has no description"


@pytest.mark.parametrize("path", sorted(all_fields()))
def test_a_description_is_one_sentence(path: str) -> None:
    description = str(all_fields()[path].get("description", ""))
    assert "\n" not in description, f"{path}: folded onto one line when read"
    assert description.endswith((".", ")")), f"{path}: ends mid-sentence"
    assert not re.search(r"[.!?]\s+[A-Z]", description), f"{path}: more than one sentence"


@pytest.mark.parametrize("path", sorted(SDK_NAMES))
def test_sdk_v1_names_are_given(path: str) -> None:
    assert SDK_NAMES[path] in str(all_fields()[path].get("description", ""))


def test_categories_include_azure_for_kubectl_get_azure() -> None:
    categories = crd()["spec"]["names"]["categories"]
    assert "azureml" in categories
    assert "azure" in categories

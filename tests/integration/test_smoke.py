"""The test bed itself: a real API server enforcing schemas, conflicts, finalizers and RBAC,
and the ARM emulator enforcing bearer tokens."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import kubernetes
import pytest
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException
from waiting import wait_for

from batchcompute_testbed.controlplane import OPERATOR_USERNAME

if TYPE_CHECKING:
    from conftest import Cluster, Emulator

GROUP = "smoke.testbed.example"
VERSION = "v1"
PLURAL = "widgets"
CRD_NAME = f"{PLURAL}.{GROUP}"
CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": CRD_NAME},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {
            "plural": PLURAL,
            "singular": "widget",
            "kind": "Widget",
            "listKind": "WidgetList",
        },
        "versions": [
            {
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["size"],
                                "properties": {
                                    "size": {"type": "string", "pattern": "^(small|large)$"},
                                    "replicas": {"type": "integer", "minimum": 0},
                                },
                            },
                            "status": {
                                "type": "object",
                                "properties": {"phase": {"type": "string"}},
                            },
                        },
                    }
                },
            }
        ],
    },
}


def _established(kube: ApiClient) -> bool:
    crd = kubernetes.client.ApiextensionsV1Api(kube).read_custom_resource_definition(CRD_NAME)
    conditions = (crd.status.conditions if crd.status else None) or []
    return any(c.type == "Established" and c.status == "True" for c in conditions)


@pytest.fixture(scope="module")
def widget_crd(kube: ApiClient) -> Iterator[str]:
    ext = kubernetes.client.ApiextensionsV1Api(kube)
    try:
        ext.create_custom_resource_definition(CRD)
    except ApiException as exc:
        if exc.status != 409:
            raise
    wait_for(lambda: _established(kube), timeout=30, message=f"CRD {CRD_NAME} Established")
    yield CRD_NAME
    ext.delete_custom_resource_definition(CRD_NAME)


@pytest.fixture
def widgets(kube: ApiClient, widget_crd: str) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(kube)


def _widget(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": spec,
    }


def _status_of(call: Any) -> tuple[int, dict[str, Any]]:
    with pytest.raises(ApiException) as info:
        call()
    body = json.loads(info.value.body or "{}")
    return int(info.value.status), body


def test_crd_is_served(kube: ApiClient, widget_crd: str) -> None:
    assert _established(kube)
    groups = kubernetes.client.ApisApi(kube).get_api_versions()
    assert GROUP in {g.name for g in groups.groups}


def test_schema_is_enforced(widgets: Any, namespace: str) -> None:
    created = widgets.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, _widget("good", size="small", replicas=1)
    )
    assert created["metadata"]["uid"]

    status, body = _status_of(
        lambda: widgets.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, _widget("no-size", replicas=1)
        )
    )
    assert status == 422
    assert "spec.size" in body["message"]
    assert "Required" in body["message"]

    status, body = _status_of(
        lambda: widgets.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, _widget("bad-size", size="HUGE")
        )
    )
    assert status == 422
    assert "spec.size" in body["message"]
    assert "should match" in body["message"]


def test_status_subresource(widgets: Any, namespace: str) -> None:
    widgets.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, _widget("w", size="large")
    )
    # Status written through the main resource is dropped ...
    patched = widgets.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "w", {"status": {"phase": "Ignored"}}
    )
    assert "status" not in patched or patched["status"].get("phase") != "Ignored"
    # ... and spec written through the status subresource is dropped.
    patched = widgets.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        "w",
        {"status": {"phase": "Ready"}, "spec": {"size": "small"}},
    )
    assert patched["status"] == {"phase": "Ready"}
    assert patched["spec"]["size"] == "large"
    # Status changes do not bump metadata.generation.
    assert patched["metadata"]["generation"] == 1


def test_stale_update_conflicts(widgets: Any, namespace: str) -> None:
    widgets.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, _widget("w", size="small", replicas=1)
    )
    stale = widgets.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "w")
    fresh = json.loads(json.dumps(stale))
    fresh["spec"]["replicas"] = 2
    updated = widgets.replace_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "w", fresh
    )
    assert updated["metadata"]["resourceVersion"] != stale["metadata"]["resourceVersion"]
    assert updated["metadata"]["generation"] == 2

    stale["spec"]["replicas"] = 3
    status, body = _status_of(
        lambda: widgets.replace_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "w", stale
        )
    )
    assert status == 409
    assert body["reason"] == "Conflict"


def test_finalizer_blocks_deletion(widgets: Any, namespace: str) -> None:
    body = _widget("w", size="small")
    body["metadata"]["finalizers"] = ["smoke.testbed.example/hold"]
    widgets.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

    widgets.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "w")
    held = widgets.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "w")
    assert held["metadata"]["deletionTimestamp"]
    assert held["metadata"]["finalizers"] == ["smoke.testbed.example/hold"]

    widgets.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "w", {"metadata": {"finalizers": None}}
    )

    def gone() -> bool:
        try:
            widgets.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "w")
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_for(gone, timeout=10, message="the widget to be deleted once its finalizer is removed")


def test_operator_identity_has_no_rights_without_rbac(operator_kube: ApiClient) -> None:
    status, body = _status_of(
        lambda: kubernetes.client.CoreV1Api(operator_kube).list_secret_for_all_namespaces()
    )
    assert status == 403
    assert OPERATOR_USERNAME in body["message"]


def test_rbac_grants_exactly_what_is_bound(
    controlplane: Cluster, kube: ApiClient, widgets: Any, namespace: str
) -> None:
    name = f"smoke-reader-{secrets.token_hex(3)}"
    reader = kubernetes.client.CustomObjectsApi(
        controlplane.client(controlplane.add_user(name, ["smoke:readers"]))
    )
    widgets.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, _widget("w", size="small")
    )
    status, _ = _status_of(
        lambda: reader.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "w")
    )
    assert status == 403

    rbac = kubernetes.client.RbacAuthorizationV1Api(kube)
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "widget-reader"},
            "rules": [{"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get", "list"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "widget-reader"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "widget-reader",
            },
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "smoke:readers"}
            ],
        },
    )
    got = wait_for(
        lambda: reader.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "w"),
        timeout=10,
        message="the RoleBinding to take effect",
        ignore=(ApiException,),
    )
    assert got["spec"]["size"] == "small"
    status, _ = _status_of(
        lambda: reader.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "w")
    )
    assert status == 403


WORKSPACE = {
    "subscriptionId": "00000000-0000-0000-0000-00000000beef",
    "resourceGroup": "smoke-rg",
    "name": "smoke-ws",
    "location": "westeurope",
}
WORKSPACE_PATH = (
    f"/subscriptions/{WORKSPACE['subscriptionId']}/resourceGroups/{WORKSPACE['resourceGroup']}"
    f"/providers/Microsoft.MachineLearningServices/workspaces/{WORKSPACE['name']}"
)


def test_emulator_requires_a_token(emulator: Emulator) -> None:
    emulator.seed({"workspaces": [WORKSPACE]})
    token = emulator.mint_token()
    params = {"api-version": "2021-07-01"}

    with emulator.arm(token) as arm:
        response = arm.get(WORKSPACE_PATH, params=params)
    assert response.status_code == 200, response.text
    assert response.json()["name"] == WORKSPACE["name"]

    with emulator.arm() as anonymous:
        response = anonymous.get(WORKSPACE_PATH, params=params)
    assert response.status_code == 401, response.text

    logged = [r for r in emulator.requests() if WORKSPACE["name"] in json.dumps(r)]
    assert len(logged) >= 2

"""The emulated cloud: subscriptions, resource groups, workspaces, Batch accounts and computes.

Keys are lower-cased because ARM matches names case-insensitively; the spelling used at
creation is kept for ids and answers.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from .arm import (
    COMPUTE_TYPE,
    WORKSPACE_TYPE,
    ArmError,
    BatchAccountRef,
    compute_id,
    normalize_location,
    not_found,
    utc_now_iso,
    workspace_id,
)

WorkspaceKey = tuple[str, str, str]
ComputeKey = tuple[str, str, str, str]


def _key(*parts: str) -> tuple[str, ...]:
    return tuple(p.lower() for p in parts)


@dataclass
class Workspace:
    subscription: str
    resource_group: str
    name: str
    location: str
    workspace_guid: str = field(default_factory=lambda: str(uuid.uuid4()))
    created: str = field(default_factory=utc_now_iso)

    @property
    def key(self) -> WorkspaceKey:
        return (self.subscription.lower(), self.resource_group.lower(), self.name.lower())

    @property
    def operation_location(self) -> str:
        """The region segment used in operation URLs (`westeurope`)."""
        return normalize_location(self.location)

    def to_json(self, base_url: str) -> dict[str, Any]:
        """`base_url` is where the client reached the emulator: the workspace's discovery
        document (and so its regional API host) is served there too."""
        return {
            "id": workspace_id(self.subscription, self.resource_group, self.name),
            "name": self.name,
            "type": WORKSPACE_TYPE,
            "location": self.location,
            "tags": {},
            "sku": {"name": "Basic", "tier": "Basic"},
            "identity": {"type": "SystemAssigned"},
            "properties": {
                "friendlyName": self.name,
                "provisioningState": "Succeeded",
                "workspaceId": self.workspace_guid,
                "creationTime": self.created,
                "discoveryUrl": f"{base_url}/discovery",
            },
        }


@dataclass
class BatchAccount:
    subscription: str
    resource_group: str
    name: str
    location: str

    def to_json(self) -> dict[str, str]:
        return {
            "subscriptionId": self.subscription,
            "resourceGroup": self.resource_group,
            "name": self.name,
            "location": self.location,
        }


@dataclass
class Compute:
    """A compute as the service stores it; `properties` is returned as is."""

    subscription: str
    resource_group: str
    workspace: str
    name: str
    location: str
    tags: dict[str, Any] | None
    properties: dict[str, Any]
    operation_id: str | None = None  # the operation in progress on it, if any

    @property
    def key(self) -> ComputeKey:
        return (
            self.subscription.lower(),
            self.resource_group.lower(),
            self.workspace.lower(),
            self.name.lower(),
        )

    def to_json(self) -> dict[str, Any]:
        properties = dict(self.properties)
        # The service always sends the type-specific `properties` bag, null when a type (Batch
        # among them) has none; SDK v1's compute classes refuse a compute without it.
        properties.setdefault("properties", None)
        return {
            "id": compute_id(self.subscription, self.resource_group, self.workspace, self.name),
            "name": self.name,
            "type": COMPUTE_TYPE,
            "location": self.location,
            "tags": None if self.tags is None else dict(self.tags),
            "properties": properties,
        }


def _seed_items(data: Any, key: str) -> list[dict[str, str]]:
    items = data.get(key, [])
    if not isinstance(items, list):
        raise ValueError(f"{key} must be a list")
    for item in items:
        if not isinstance(item, dict):
            raise ValueError(f"each of {key} must be an object")
        for field_name in ("subscriptionId", "resourceGroup", "name", "location"):
            if not isinstance(item.get(field_name), str) or not item[field_name]:
                raise ValueError(f"{key}[].{field_name} must be a non-empty string")
    return items


def subscription_json(subscription: str, tenant_id: str) -> dict[str, Any]:
    """A subscription as ARM's Microsoft.Resources lists it (api-version 2022-12-01)."""
    return {
        "id": f"/subscriptions/{subscription}",
        "authorizationSource": "RoleBased",
        "managedByTenants": [],
        "subscriptionId": subscription,
        "tenantId": tenant_id,
        "displayName": f"Emulated subscription {subscription[:8]}",
        "state": "Enabled",
        "subscriptionPolicies": {
            "locationPlacementId": "Public_2014-09-01",
            "quotaId": "PayAsYouGo_2014-09-01",
            "spendingLimit": "Off",
        },
    }


class Store:
    """All resources; the ARM and admin handlers are its only writers."""

    def __init__(self) -> None:
        self.subscriptions: dict[str, str] = {}
        self.resource_groups: dict[tuple[str, ...], str] = {}
        self.workspaces: dict[tuple[str, ...], Workspace] = {}
        self.batch_accounts: dict[tuple[str, ...], BatchAccount] = {}
        self.computes: dict[tuple[str, ...], Compute] = {}

    def seed(self, data: Any) -> dict[str, int]:
        """Add the seeded resources (validated first, so a bad seed changes nothing)."""
        if not isinstance(data, dict):
            raise ValueError("seed must be a JSON object")
        unknown = set(data) - {"workspaces", "batchAccounts"}
        if unknown:
            raise ValueError(f"unknown seed keys: {sorted(unknown)}")
        workspaces = _seed_items(data, "workspaces")
        accounts = _seed_items(data, "batchAccounts")
        for item in workspaces:
            self._imply(item)
            ws = Workspace(
                item["subscriptionId"], item["resourceGroup"], item["name"], item["location"]
            )
            self.workspaces.setdefault(ws.key, ws)
        for item in accounts:
            self._imply(item)
            account = BatchAccount(
                item["subscriptionId"], item["resourceGroup"], item["name"], item["location"]
            )
            self.batch_accounts[
                _key(account.subscription, account.resource_group, account.name)
            ] = account
        return {"workspaces": len(workspaces), "batchAccounts": len(accounts)}

    def _imply(self, item: dict[str, str]) -> None:
        sub, rg = item["subscriptionId"], item["resourceGroup"]
        self.subscriptions.setdefault(sub.lower(), sub)
        self.resource_groups.setdefault(_key(sub, rg), rg)

    def check_resource_group(self, sub: str, rg: str) -> None:
        self.check_subscription(sub)
        if _key(sub, rg) not in self.resource_groups:
            message = f"Resource group '{rg}' could not be found."
            raise ArmError(404, "ResourceGroupNotFound", message)

    def check_subscription(self, sub: str) -> None:
        if sub.lower() not in self.subscriptions:
            message = f"The subscription '{sub}' could not be found."
            raise ArmError(404, "SubscriptionNotFound", message)

    def workspace(self, sub: str, rg: str, ws: str) -> Workspace:
        self.check_resource_group(sub, rg)
        found = self.workspaces.get(_key(sub, rg, ws))
        if found is None:
            raise not_found(WORKSPACE_TYPE, ws, rg)
        return found

    def batch_account(self, ref: BatchAccountRef) -> BatchAccount | None:
        return self.batch_accounts.get(_key(ref.subscription, ref.resource_group, ref.name))

    def remove_batch_account(self, sub: str, rg: str, name: str) -> bool:
        return self.batch_accounts.pop(_key(sub, rg, name), None) is not None

    def compute(self, ws: Workspace, name: str) -> Compute | None:
        return self.computes.get((*ws.key, name.lower()))

    def computes_in(self, ws: Workspace) -> list[Compute]:
        """Sorted by lower-cased name: the stable order paging relies on."""
        found = [c for key, c in self.computes.items() if key[:3] == ws.key]
        return sorted(found, key=lambda c: c.name.lower())

    def put_compute(self, compute: Compute) -> None:
        self.computes[compute.key] = compute

    def remove_compute(self, key: tuple[str, ...]) -> Compute | None:
        return self.computes.pop(key, None)

    def resources_json(self) -> dict[str, Any]:
        return {
            "workspaces": [
                {
                    "subscriptionId": w.subscription,
                    "resourceGroup": w.resource_group,
                    "name": w.name,
                    "location": w.location,
                }
                for w in self.workspaces.values()
            ],
            "batchAccounts": [a.to_json() for a in self.batch_accounts.values()],
        }

"""The BatchComputeAttachment spec: its shape and the SDK v1 attach-configuration rules.

The CRD schema rejects most bad input at the API server, but not every cluster evaluates
CEL (`x-kubernetes-validations`) and a schema cannot express every rule, so the operator
validates the whole spec again here before a single ARM call is made. Everything that
later reaches an ARM URL passes through these checks, so a hostile spec cannot steer the
operator to an unintended path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# ARM resource-group names: 1-90 of letters, digits, `._-()`, not ending in a period. ASCII only,
# so look-alike letters from other scripts are refused rather than sent to ARM.
RESOURCE_GROUP = re.compile(r"^[-\w.()]{0,89}[-\w()]$", re.ASCII)
WORKSPACE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_-]{2,32}$")
BATCH_ACCOUNT = re.compile(r"^[a-z0-9]{3,24}$")
# The REST spec gives compute names no pattern; the service's own messages limit compute
# names to 3-24 letters, digits and '-', starting with a letter. The conservative rule wins.
COMPUTE_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{2,23}$")
TAG_KEY_MAX = 512
TAG_VALUE_MAX = 256
# ARM allows 50 tags on a resource and the operator adds its 2 owner tags (reconcile.py).
TAG_COUNT_MAX = 48
DESCRIPTION_MAX = 1024
TAG_KEY_FORBIDDEN = re.compile(r"[<>%&\\?/]")
# Tags the operator writes on the compute to record who owns it; users may not set them.
OWNER_TAG_PREFIX = "batchcompute-operator."
SECRET_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")  # a Kubernetes object name

DeletionPolicy = Literal["Detach", "Orphan"]
ManagementPolicy = Literal["Manage", "Observe"]


class SpecError(ValueError):
    """The spec cannot be acted on; the message is meant for the resource's owner."""

    def __init__(self, problems: list[str], requested_name: str | None = None) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems
        # The compute name the spec asks for (computeName, else metadata.name), shown in
        # status even though the spec cannot be acted on; None when it names none.
        self.requested_name = requested_name


@dataclass(frozen=True)
class WorkspaceRef:
    """An Azure ML workspace, the unit of one compute LIST."""

    subscription_id: str
    resource_group: str
    name: str

    @property
    def arm_id(self) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.MachineLearningServices/workspaces/{self.name}"
        )

    @cached_property
    def key(self) -> tuple[str, str, str]:
        """ARM names are case-insensitive; caches key on the folded form. Computed once: every
        record's loop and claim key on it, and one workspace is shared by all its records."""
        return (self.subscription_id.lower(), self.resource_group.lower(), self.name.lower())

    def compute_id(self, compute_name: str) -> str:
        return f"{self.arm_id}/computes/{compute_name}"


@dataclass(frozen=True, slots=True)
class AttachmentSpec:
    """A validated spec: everything needed to PUT, observe and detach one compute (one per
    record, so without a __dict__ of its own)."""

    workspace: WorkspaceRef
    compute_name: str
    batch_account_id: str
    description: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    deletion_policy: DeletionPolicy = "Detach"
    credentials_secret: str | None = None  # a Secret in the resource's own namespace
    management_policy: ManagementPolicy = "Manage"

    @property
    def observe_only(self) -> bool:
        return self.management_policy == "Observe"

    @property
    def compute_id(self) -> str:
        return self.workspace.compute_id(self.compute_name)


def batch_account_id(subscription_id: str, resource_group: str, account_name: str) -> str:
    return (
        f"/subscriptions/{subscription_id}/resourceGroups/{resource_group}"
        f"/providers/Microsoft.Batch/batchAccounts/{account_name}"
    )


def _text(value: Any, where: str, problems: list[str], *, required: bool = True) -> str | None:
    if value is None:
        if required:
            problems.append(f"{where} is required")
        return None
    if value == "":
        # An empty string is a value, not an absence: the schema refuses it too.
        problems.append(f"{where} is required" if required else f"{where} must not be empty")
        return None
    if not isinstance(value, str):
        problems.append(f"{where} must be a string")
        return None
    return value


def _check(value: str | None, pattern: re.Pattern[str], where: str, rule: str,
           problems: list[str]) -> None:
    if value is not None and not pattern.fullmatch(value):
        problems.append(f"{where} {value!r} is invalid: {rule}")


def parse_batch_resource_id(resource_id: str, problems: list[str]) -> None:
    """The SDK's rule: 9 '/'-separated parts, part 6 `Microsoft.Batch`; we also check each name."""
    parts = resource_id.split("/")
    if len(parts) != 9 or parts[0] != "":
        problems.append(
            f"batchAccount.resourceId: Invalid resource_id provided: {resource_id!r}; expected "
            "/subscriptions/<id>/resourceGroups/<rg>/providers/Microsoft.Batch/batchAccounts/<name>"
        )
        return
    _, subs, sub, rgs, rg, providers, namespace, kind, name = parts
    if namespace.lower() != "microsoft.batch":
        problems.append(
            f"batchAccount.resourceId: Invalid resource_id provided: {resource_id!r}; the "
            f"provider must be Microsoft.Batch, not {namespace!r}"
        )
        return
    if (subs.lower(), rgs.lower(), providers.lower(), kind.lower()) != (
        "subscriptions", "resourcegroups", "providers", "batchaccounts"
    ):
        problems.append(f"batchAccount.resourceId: Invalid resource_id provided: {resource_id!r}; "
                        "not a Batch account id")
        return
    _check(sub, GUID, "batchAccount.resourceId subscription", "must be a GUID", problems)
    _check(rg, RESOURCE_GROUP, "batchAccount.resourceId resource group",
           "1-90 letters, digits, '._-()', not ending in '.'", problems)
    _check(name, BATCH_ACCOUNT, "batchAccount.resourceId account name",
           "3-24 lowercase letters and digits", problems)


def _tags(raw: Any, problems: list[str]) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        problems.append("tags must be a map of strings")
        return {}
    if len(raw) > TAG_COUNT_MAX:
        problems.append(f"tags has {len(raw)} entries; at most {TAG_COUNT_MAX} are allowed "
                        "(ARM allows 50 and the operator adds 2 of its own)")
    tags: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not isinstance(value, str):
            problems.append(f"tag {key!r} must map a string to a string")
            continue
        if not key or len(key) > TAG_KEY_MAX or TAG_KEY_FORBIDDEN.search(key):
            problems.append(
                f"tag name {key[:40]!r} is invalid: 1-{TAG_KEY_MAX} characters, none of <>%&\\?/"
            )
        elif key.lower().startswith(OWNER_TAG_PREFIX):
            problems.append(f"tag name {key!r} is reserved for the operator's ownership record")
        if len(value) > TAG_VALUE_MAX:
            problems.append(f"tag {key[:40]!r} value is longer than {TAG_VALUE_MAX} characters")
        tags[key] = value
    return tags


def _credentials(raw: Any, namespace: str | None, problems: list[str]) -> str | None:
    """A namespace may bring its own Azure identity, but only from a Secret of its own.

    Only this check enforces it: the CRD's CEL rules see metadata.name and generateName but
    not the resource's namespace, so the CRD accepts any secretRef.namespace.
    """
    if raw is None:
        return None
    ref = raw.get("secretRef") if isinstance(raw, Mapping) else None
    if not isinstance(ref, Mapping):
        problems.append("credentials.secretRef.name is required when credentials is given")
        return None
    ref_ns = ref.get("namespace")
    if ref_ns not in (None, "") and ref_ns != namespace:
        problems.append(
            f"credentials.secretRef.namespace {ref_ns!r} is not allowed: a resource may only use "
            "a Secret in its own namespace")
    name = _text(ref.get("name"), "credentials.secretRef.name", problems)
    _check(name, SECRET_NAME, "credentials.secretRef.name", "a Kubernetes object name", problems)
    return name


def parse_spec(spec: Mapping[str, Any], default_name: str,
               namespace: str | None = None) -> AttachmentSpec:
    """Validate a raw `.spec` as the SDK's attach_configuration would, collecting every problem."""
    problems: list[str] = []
    ws_raw = spec.get("workspace")
    if not isinstance(ws_raw, Mapping):
        ws_raw = {}
        problems.append("workspace is required (subscriptionId, resourceGroup, name)")
    sub = _text(ws_raw.get("subscriptionId"), "workspace.subscriptionId", problems)
    ws_rg = _text(ws_raw.get("resourceGroup"), "workspace.resourceGroup", problems)
    ws_name = _text(ws_raw.get("name"), "workspace.name", problems)
    _check(sub, GUID, "workspace.subscriptionId", "must be a GUID", problems)
    _check(ws_rg, RESOURCE_GROUP, "workspace.resourceGroup",
           "1-90 letters, digits, '._-()', not ending in '.'", problems)
    _check(ws_name, WORKSPACE, "workspace.name",
           "3-33 letters, digits, '_' and '-', starting with a letter or digit", problems)

    raw_compute = spec.get("computeName")
    compute = _text(default_name if raw_compute is None else raw_compute, "computeName", problems)
    _check(compute, COMPUTE_NAME, "computeName",
           "3-24 letters, digits and '-', starting with a letter", problems)

    account_raw = spec.get("batchAccount")
    if not isinstance(account_raw, Mapping):
        account_raw = {}
    rid = _text(account_raw.get("resourceId"), "batchAccount.resourceId", problems, required=False)
    acct_rg = _text(account_raw.get("resourceGroup"), "batchAccount.resourceGroup", problems,
                    required=False)
    acct = _text(account_raw.get("accountName"), "batchAccount.accountName", problems,
                 required=False)
    account_id: str | None = None
    if rid is not None:
        if acct_rg is not None or acct is not None:
            problems.append(
                "Since resource_id (batchAccount.resourceId) is provided, please do not provide "
                "resource_group (batchAccount.resourceGroup) or account_name "
                "(batchAccount.accountName)"
            )
        parse_batch_resource_id(rid, problems)
        account_id = rid
    elif acct_rg is not None and acct is not None:
        _check(acct_rg, RESOURCE_GROUP, "batchAccount.resourceGroup",
               "1-90 letters, digits, '._-()', not ending in '.'", problems)
        _check(acct, BATCH_ACCOUNT, "batchAccount.accountName",
               "3-24 lowercase letters and digits", problems)
        if sub is not None:
            account_id = batch_account_id(sub, acct_rg, acct)
    else:
        problems.append(
            "Please provide resource_group (batchAccount.resourceGroup) and account_name "
            "(batchAccount.accountName) for the Batch account being attached, or provide "
            "resource_id (batchAccount.resourceId)"
        )

    description = _text(spec.get("description"), "description", problems, required=False)
    if description is not None and len(description) > DESCRIPTION_MAX:
        problems.append(f"description is longer than {DESCRIPTION_MAX} characters")
    tags = _tags(spec.get("tags"), problems)
    secret = _credentials(spec.get("credentials"), namespace, problems)
    policy = spec.get("deletionPolicy", "Detach")
    if policy not in ("Detach", "Orphan"):
        problems.append(f"deletionPolicy {policy!r} is invalid: Detach or Orphan")
    management = spec.get("managementPolicy", "Manage")
    if management not in ("Manage", "Observe"):
        problems.append(f"managementPolicy {management!r} is invalid: Manage or Observe")

    if problems or sub is None or ws_rg is None or ws_name is None or compute is None:
        raise SpecError(problems or ["spec is incomplete"], requested_name=compute)
    assert account_id is not None
    return AttachmentSpec(
        workspace=WorkspaceRef(sub, ws_rg, ws_name),
        compute_name=compute,
        batch_account_id=account_id,
        description=description,
        tags=tags,
        deletion_policy="Orphan" if policy == "Orphan" else "Detach",
        credentials_secret=secret,
        management_policy="Observe" if management == "Observe" else "Manage",
    )


def same_arm_id(a: str | None, b: str | None) -> bool:
    """ARM ids compare case-insensitively."""
    return a is not None and b is not None and a.lower() == b.lower()


def parse_compute_id(compute_id: str) -> tuple[WorkspaceRef, str] | None:
    """A compute id this operator recorded, re-validated before it reaches a URL again."""
    parts = compute_id.split("/")
    if len(parts) != 11 or parts[0] or parts[1].lower() != "subscriptions" or \
            parts[3].lower() != "resourcegroups" or parts[5].lower() != "providers" or \
            parts[6].lower() != "microsoft.machinelearningservices" or \
            parts[7].lower() != "workspaces" or parts[9].lower() != "computes":
        return None
    sub, rg, ws, name = parts[2], parts[4], parts[8], parts[10]
    if not (GUID.fullmatch(sub) and RESOURCE_GROUP.fullmatch(rg) and WORKSPACE.fullmatch(ws)
            and COMPUTE_NAME.fullmatch(name)):
        return None
    return WorkspaceRef(sub, rg, ws), name

"""A small, copied record of each resource: what the engine decides from instead of its body.

Built from every watch event kopf hands over (and from the answers to our own status writes),
then the body is let go. The spec is parsed once per generation; strings that many records
share (namespaces, workspaces, Batch account ids, policies, and in status.py states, reasons and
timestamps) are kept once.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from batchcompute_operator import GROUP, KIND, PLURAL, VERSION
from batchcompute_operator.reconcile import Owner
from batchcompute_operator.spec import (
    AttachmentSpec,
    SpecError,
    WorkspaceRef,
    parse_compute_id,
    parse_spec,
)
from batchcompute_operator.status import Recorded

FINALIZER = f"{GROUP}/finalizer"
API_VERSION = f"{GROUP}/{VERSION}"


@dataclass(frozen=True, slots=True)
class LoopKey:
    """One observation loop: an identity and a workspace (None: nothing to observe in ARM)."""

    identity: str  # "" for the operator's own identity, else "namespace/secret"
    workspace: tuple[str, str, str] | None


UNPLACED = LoopKey("", None)


@dataclass(frozen=True, slots=True)
class Record:
    uid: str
    namespace: str
    name: str
    generation: int
    resource_version: int
    deleting: bool
    finalized: bool
    spec: AttachmentSpec | SpecError
    recorded: Recorded
    orphan: bool = False  # deletionPolicy Orphan (honoured even when other fields are invalid)
    observe_only: bool = False  # managementPolicy Observe (likewise)

    @property
    def owner(self) -> Owner:
        return Owner(self.namespace, self.name, self.uid, self.generation)

    @property
    def path(self) -> str:
        return f"/apis/{GROUP}/{VERSION}/namespaces/{self.namespace}/{PLURAL}/{self.name}"

    @property
    def valid(self) -> AttachmentSpec | None:
        return self.spec if isinstance(self.spec, AttachmentSpec) else None

    @property
    def acknowledged(self) -> bool:
        return self.recorded.observed_generation == self.generation

    @property
    def requested_name(self) -> str:
        """The compute name the spec asks for, valid or not (status.computeName, the COMPUTE
        column); metadata.name when the spec names none."""
        if isinstance(self.spec, AttachmentSpec):
            return self.spec.compute_name
        return self.spec.requested_name or self.name

    def target(self) -> tuple[WorkspaceRef, str] | None:
        """What a deletion detaches: the compute recorded in status first, else the spec's."""
        if self.recorded.compute_id:
            found = parse_compute_id(self.recorded.compute_id)
            if found is not None:
                return found
        spec = self.valid
        return (spec.workspace, spec.compute_name) if spec is not None else None


class RecordBuilder:
    """Turns bodies into records, sharing what records have in common."""

    def __init__(self) -> None:
        self._workspaces: dict[tuple[str, str, str], WorkspaceRef] = {}

    def workspace(self, ws: WorkspaceRef) -> WorkspaceRef:
        return self._workspaces.setdefault(ws.key, ws)

    def build(self, body: Mapping[str, Any], previous: Record | None) -> Record | None:
        meta = body.get("metadata")
        if not isinstance(meta, Mapping):
            return None
        uid, name, namespace = meta.get("uid"), meta.get("name"), meta.get("namespace")
        if not (isinstance(uid, str) and isinstance(name, str) and isinstance(namespace, str)):
            return None
        generation = meta.get("generation")
        generation = generation if isinstance(generation, int) else 0
        if previous is not None and previous.generation == generation:
            spec = previous.spec
        else:
            spec = self._spec(body.get("spec"), name, namespace)
        finalizers = meta.get("finalizers")
        status = body.get("status")
        raw = body.get("spec")
        raw = raw if isinstance(raw, Mapping) else {}
        return Record(
            uid=uid,
            namespace=sys.intern(namespace),
            name=sys.intern(name),
            generation=generation,
            resource_version=_version(meta.get("resourceVersion")),
            deleting=meta.get("deletionTimestamp") is not None,
            finalized=isinstance(finalizers, list) and FINALIZER in finalizers,
            spec=spec,
            recorded=Recorded.from_status(status if isinstance(status, Mapping) else None),
            orphan=raw.get("deletionPolicy") == "Orphan",
            observe_only=raw.get("managementPolicy") == "Observe",
        )

    def _spec(self, raw: Any, name: str, namespace: str) -> AttachmentSpec | SpecError:
        try:
            spec = parse_spec(raw if isinstance(raw, Mapping) else {}, name, namespace)
        except SpecError as err:
            return err
        return AttachmentSpec(
            workspace=self.workspace(spec.workspace),
            compute_name=sys.intern(spec.compute_name),
            batch_account_id=sys.intern(spec.batch_account_id),
            description=spec.description,
            tags={sys.intern(k): sys.intern(v) for k, v in spec.tags.items()} or _NO_TAGS,
            deletion_policy=spec.deletion_policy,
            credentials_secret=spec.credentials_secret,
            management_policy=spec.management_policy,
        )


_NO_TAGS: Mapping[str, str] = {}


def _version(raw: Any) -> int:
    try:
        return int(raw)
    except (TypeError, ValueError):
        return 0


def involved(record: Record) -> tuple[str, str, str, str, str]:
    return (API_VERSION, KIND, record.namespace, record.name, record.uid)

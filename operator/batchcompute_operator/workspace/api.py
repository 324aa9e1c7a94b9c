"""The workspace REST calls the SDK v1 `BatchCompute` made, as typed async functions."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from batchcompute_operator import metrics
from batchcompute_operator.compute import (
    ComputeView,
    OperationStatus,
    parse_compute,
    parse_operation,
)
from batchcompute_operator.spec import AttachmentSpec, WorkspaceRef
from batchcompute_operator.workspace.client import ArmClient, TokenGetter
from batchcompute_operator.workspace.errors import ArmError

MAX_LIST_PAGES = 1000  # a bound against a nextLink loop; 100k computes in one workspace


@dataclass(frozen=True)
class Submitted:
    """ARM accepted a PUT/DELETE; `url` is the operation to watch (None: already done)."""

    url: str | None


class WorkspaceApi:
    def __init__(self, client: ArmClient) -> None:
        self.client = client
        self._locations: dict[tuple[str, str, str], str] = {}
        self._location_locks: dict[tuple[str, str, str], asyncio.Lock] = {}
        self.last_pages: dict[tuple[str, str, str], int] = {}

    async def location(self, ws: WorkspaceRef, auth: TokenGetter | None = None) -> str:
        """The workspace's region, which every attach payload must carry; cached per process."""
        cached = self._locations.get(ws.key)
        if cached is not None:
            return cached
        lock = self._location_locks.setdefault(ws.key, asyncio.Lock())
        async with lock:
            if ws.key not in self._locations:
                resp = await self.client.call("GET", self.client.url_for(ws.arm_id),
                                              ws.subscription_id, token=auth)
                body = resp.body if isinstance(resp.body, Mapping) else {}
                location = body.get("location")
                if not isinstance(location, str) or not location:
                    raise ArmError(resp.status, "InvalidWorkspace",
                                   f"workspace {ws.name!r} has no location in ARM's answer",
                                   retryable=True)
                self._locations[ws.key] = location
        return self._locations[ws.key]

    async def list_computes(self, ws: WorkspaceRef,
                            auth: TokenGetter | None = None) -> dict[str, ComputeView]:
        """Every compute in the workspace, keyed by folded name; follows nextLink on our host.

        `last_pages` remembers how many pages the workspace's last LIST took.
        """
        url = self.client.url_for(f"{ws.arm_id}/computes")
        found: dict[str, ComputeView] = {}
        for page in range(1, MAX_LIST_PAGES + 1):
            resp = await self.client.call("GET", url, ws.subscription_id, token=auth)
            body = resp.body if isinstance(resp.body, Mapping) else {}
            values = body.get("value")
            if not isinstance(values, list):
                raise ArmError(resp.status, "InvalidListResponse",
                               "ARM's compute list had no 'value' array", retryable=True)
            for raw in values:
                view = parse_compute(raw)
                if view is not None:
                    found[view.name.lower()] = view
            next_link = body.get("nextLink")
            if not isinstance(next_link, str) or not next_link:
                metrics.list_pages.observe(page)
                self.last_pages[ws.key] = page
                return found
            url = self.client.checked(next_link)
        raise ArmError(0, "ListTooLong", "compute list did not end", retryable=False)

    def can_spare_read(self, ws: WorkspaceRef, auth: TokenGetter | None = None) -> bool:
        """Whether one extra read of this subscription's budget costs nothing that matters."""
        return self.client.spare(ws.subscription_id, auth, "reads", 0.5)

    async def get_compute(self, ws: WorkspaceRef, name: str,
                          auth: TokenGetter | None = None) -> ComputeView | None:
        try:
            resp = await self.client.call("GET", self.client.url_for(ws.compute_id(name)),
                                          ws.subscription_id, token=auth)
        except ArmError as err:
            if err.status == 404:
                return None
            raise
        return parse_compute(resp.body)

    async def reserve_write(self, ws: WorkspaceRef, auth: TokenGetter | None = None) -> None:
        """Take a write token for a PUT sent later with `prepaid=True`."""
        await self.client.reserve(ws.subscription_id, auth, "writes")

    async def put_compute(self, spec: AttachmentSpec, location: str, tags: Mapping[str, str],
                          auth: TokenGetter | None = None, *, prepaid: bool = False
                          ) -> Submitted:
        properties: dict[str, str] = {"computeType": "Batch", "resourceId": spec.batch_account_id}
        if spec.description:
            properties["description"] = spec.description
        payload = {"location": location, "tags": dict(tags), "properties": properties}
        resp = await self.client.call("PUT", self.client.url_for(spec.compute_id),
                                      spec.workspace.subscription_id, body=payload, token=auth,
                                      prepaid=prepaid)
        return self._submitted(resp.headers)

    async def delete_compute(self, ws: WorkspaceRef, name: str,
                             auth: TokenGetter | None = None) -> Submitted:
        """Detach only: the SDK refuses to delete a Batch account, and so do we."""
        url = self.client.url_for(ws.compute_id(name)).copy_merge_params(
            {"underlyingResourceAction": "Detach"})
        try:
            resp = await self.client.call("DELETE", url, ws.subscription_id, token=auth)
        except ArmError as err:
            if err.status == 404:
                return Submitted(None)
            raise
        if resp.status == 204:
            return Submitted(None)
        return self._submitted(resp.headers)

    def _submitted(self, headers: Mapping[str, str]) -> Submitted:
        url = headers.get("Azure-AsyncOperation") or headers.get("Location")
        if url:
            self.client.checked(url)  # refuse a foreign operation URL now, not at the first poll
        return Submitted(url or None)

    async def operation(self, url: str, subscription: str,
                        auth: TokenGetter | None = None) -> OperationStatus | None:
        """The operation's status; None when ARM no longer knows it (expired, 404)."""
        try:
            resp = await self.client.call("GET", self.client.checked(url), subscription,
                                          token=auth)
        except ArmError as err:
            if err.status == 404:
                return None
            raise
        if resp.status == 202:
            return OperationStatus("InProgress")  # a Location poll still running
        if resp.status in (200, 201, 204) and "status" not in (resp.body or {}):
            return OperationStatus("Succeeded")  # a Location poll that finished
        return parse_operation(resp.body)

"""The benchmark's own view of the cluster: fast creation and a watch that times every object.

Creating thousands of objects with kubectl takes longer than attaching them; here they are
POSTed concurrently. A single watch stream records when each object first became Ready for
its generation and when it was deleted, so "all Ready" is timed to the event, not to a poll.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

GROUP, VERSION, PLURAL = "batchcompute.azureml.dev", "v1alpha1", "batchcomputeattachments"


class Admin:
    """The test bed's admin identity, from its kubeconfig (server, CA, bearer token)."""

    def __init__(self, kubeconfig: Path) -> None:
        config = yaml.safe_load(kubeconfig.read_text())
        cluster = config["clusters"][0]["cluster"]
        self.server = str(cluster["server"])
        self.token = str(config["users"][0]["user"]["token"])
        ca = base64.b64decode(cluster["certificate-authority-data"])
        with tempfile.NamedTemporaryFile("wb", suffix=".pem", delete=False) as handle:
            handle.write(ca)
        self.ca_file = handle.name
        self.ssl = ssl.create_default_context(cafile=self.ca_file)

    def path(self, namespace: str, name: str = "") -> str:
        base = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
        return f"{base}/{name}" if name else base

    def client(self, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(base_url=self.server, verify=self.ssl, timeout=timeout,
                            headers={"Authorization": f"Bearer {self.token}"})

    def create_all(self, namespace: str, docs: Sequence[dict[str, Any]],
                   concurrency: int = 32) -> None:
        """POST every object, `concurrency` at a time, retrying what the server defers."""
        asyncio.run(self._create_all(namespace, docs, concurrency))

    def async_client(self, concurrency: int) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.server, verify=self.ssl, timeout=60.0,
                                 headers={"Authorization": f"Bearer {self.token}"},
                                 limits=httpx.Limits(max_connections=concurrency))

    async def _create_all(self, namespace: str, docs: Sequence[dict[str, Any]],
                          concurrency: int) -> None:
        limit = asyncio.Semaphore(concurrency)
        async with self.async_client(concurrency) as http:

            async def create(doc: dict[str, Any]) -> None:
                async with limit:
                    for attempt in range(10):
                        resp = await http.post(self.path(namespace), json=doc)
                        if resp.status_code in (201, 409):
                            return
                        if resp.status_code in (429, 500, 503, 504):
                            await asyncio.sleep(0.2 * (attempt + 1))
                            continue
                        raise RuntimeError(f"create {doc['metadata']['name']}: "
                                           f"{resp.status_code} {resp.text[:300]}")
                    raise RuntimeError(f"create {doc['metadata']['name']}: gave up")

            await asyncio.gather(*(create(doc) for doc in docs))

    def patch_statuses(self, namespace: str, statuses: Mapping[str, dict[str, Any]],
                       concurrency: int = 16) -> None:
        """Merge-patch each named object's status subresource, `concurrency` at a time."""
        asyncio.run(self._patch_statuses(namespace, statuses, concurrency))

    async def _patch_statuses(self, namespace: str, statuses: Mapping[str, dict[str, Any]],
                              concurrency: int) -> None:
        limit = asyncio.Semaphore(concurrency)
        async with self.async_client(concurrency) as http:

            async def patch(name: str, status: dict[str, Any]) -> None:
                async with limit:
                    resp = await http.patch(
                        self.path(namespace, name) + "/status", json={"status": status},
                        headers={"Content-Type": "application/merge-patch+json"})
                    if resp.status_code != 200:
                        raise RuntimeError(f"status of {name}: {resp.status_code} "
                                           f"{resp.text[:300]}")

            await asyncio.gather(*(patch(name, status) for name, status in statuses.items()))

    def delete_all(self, namespace: str) -> None:
        with self.client() as http:
            resp = http.delete(self.path(namespace))
            resp.raise_for_status()

    def list(self, namespace: str) -> list[dict[str, Any]]:
        with self.client(timeout=300.0) as http:
            resp = http.get(self.path(namespace))
            resp.raise_for_status()
            items: list[dict[str, Any]] = resp.json()["items"]
            return items


def is_ready(obj: dict[str, Any]) -> bool:
    generation = obj.get("metadata", {}).get("generation")
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True"
                        and cond.get("observedGeneration", generation) == generation)
    return False


class Watcher:
    """One watch stream over a namespace: per object, when it became Ready and when it went."""

    def __init__(self, admin: Admin, namespace: str) -> None:
        self.admin = admin
        self.namespace = namespace
        self.ready: dict[str, bool] = {}
        self.ready_at: dict[str, float] = {}  # the last time each object turned Ready
        self.gone_at: dict[str, float] = {}
        self.first_status_at: dict[str, float] = {}
        self.created_at: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="bench watch")
        self.error: BaseException | None = None

    def start(self) -> Watcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        version = ""
        while not self._stop.is_set():
            try:
                with self.admin.client(timeout=None) as http:  # type: ignore[arg-type]
                    params = {"watch": "true", "allowWatchBookmarks": "true",
                              "timeoutSeconds": "600"}
                    if version:
                        params["resourceVersion"] = version
                    with http.stream("GET", self.admin.path(self.namespace),
                                     params=params) as resp:
                        for line in resp.iter_lines():
                            if self._stop.is_set():
                                return
                            if not line:
                                continue
                            event = json.loads(line)
                            obj = event.get("object") or {}
                            version = obj.get("metadata", {}).get("resourceVersion", version)
                            if event.get("type") == "ERROR":
                                version = ""
                                break
                            self._see(event.get("type", ""), obj)
            except (httpx.HTTPError, ValueError) as exc:  # reconnect, as a client would
                self.error = exc
                time.sleep(0.2)

    def _see(self, kind: str, obj: dict[str, Any]) -> None:
        if kind == "BOOKMARK":
            return
        now = time.monotonic()
        name = obj.get("metadata", {}).get("name", "")
        with self._lock:
            if kind == "DELETED":
                self.gone_at[name] = now
                self.ready[name] = False
                return
            self.created_at.setdefault(name, now)
            if obj.get("status") and name not in self.first_status_at:
                self.first_status_at[name] = now
            ready = is_ready(obj)
            if ready and not self.ready.get(name):
                self.ready_at[name] = now
            self.ready[name] = ready

    def count_ready(self, names: Sequence[str] | None = None) -> int:
        with self._lock:
            keys = names if names is not None else list(self.ready)
            return sum(1 for n in keys if self.ready.get(n))

    def count_gone(self) -> int:
        with self._lock:
            return len(self.gone_at)

    def last_ready(self, names: Sequence[str]) -> float:
        with self._lock:
            return max(self.ready_at[n] for n in names)

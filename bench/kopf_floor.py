"""kopf with the operator's settings and handlers that do nothing: kopf's own CPU per attach.

`python bench/kopf_floor.py` (PYTHONPATH=operator, KUBECONFIG, BCO_* as for the operator).
It logs in, tunes kopf (`handlers.tune`), configures logging and starts kopf (`handlers.run`:
uvloop, one memo for the process) exactly as the operator does, and registers the same kinds
of handler: an event handler for every watch event and a deletion handler, so kopf adds its
finalizer to every resource. Nothing else runs: no engine, no ARM, no events, no status. The
CPU this process spends on a resource's watch events is the part of the operator's CPU per
attach that no change to the engine can remove.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import kopf

from batchcompute_operator import __main__ as entry
from batchcompute_operator import logs
from batchcompute_operator.config import Settings


def main() -> None:
    settings = Settings.from_env()
    logs.configure(settings.log_level, settings.log_format)
    handlers = entry.load_handlers()
    identity = f"{socket.gethostname()}-{os.getpid()}-floor"
    # A registry of its own: importing handlers registered the operator's handlers in kopf's
    # default registry, and none of them may run here.
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
        handlers.tune(settings, memo.settings, identity, 0)

    @kopf.on.event(*handlers.RESOURCE, registry=registry)
    async def observe(**_: Any) -> None:
        return None

    @kopf.on.delete(*handlers.RESOURCE, registry=registry)
    async def release(**_: Any) -> None:
        return None

    kopf.on.login(registry=registry)(handlers.login)
    handlers.run(settings, identity, 0, settings.namespaces, registry=registry,
                 liveness_endpoint=f"http://127.0.0.1:{os.environ['BCO_HEALTH_PORT']}/healthz")


if __name__ == "__main__":
    main()

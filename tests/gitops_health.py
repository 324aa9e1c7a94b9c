"""How GitOps tools judge a BatchComputeAttachment: Argo CD's Lua health check and kstatus.

Two readers, each applied to one object (a dict as the API server returns it):

- `argocd_health(obj)` runs `deploy/argocd/health.lua` in a real Lua 5.1 runtime (lupa), the
  way Argo CD's controller does (util/lua in argo-cd): the object in the global `obj`, only the
  base, table and package libraries plus Argo CD's reduced `os` (no `string`, no `math`, no
  string methods), and the returned table read as `{status, message}`; a status outside Argo
  CD's set becomes `Unknown`, as Argo CD reports it.
- `kstatus(obj)` applies the rules of `status.Compute` in sigs.k8s.io/cli-utils (pkg/kstatus)
  for a custom resource, which Flux's health checks and `kstatus`-based tools use:
    1. `metadata.deletionTimestamp` set: Terminating;
    2. `status.observedGeneration` present and not `metadata.generation`: InProgress;
    3. the first condition, in list order, that is `Reconciling=True` (InProgress) or
       `Stalled=True` (Failed);
    4. a `Ready` condition: True is Current, False or Unknown is InProgress;
    5. otherwise Current, which is why an object without any status reads as Current.

Unit tests feed them the objects in tests/unit/fixtures/statuses/: recorded from the running
operator for every state tests/integration/test_gitops_health.py goes through, written by
hand to the same shape for the others. That integration test feeds them every state a watch
stream shows of the running operator's resources.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any, Literal

from lupa.lua51 import LuaRuntime  # type: ignore[import-untyped]

HEALTH_LUA = Path(__file__).resolve().parents[1] / "deploy" / "argocd" / "health.lua"

ArgoStatus = Literal["Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"]
KStatus = Literal["InProgress", "Current", "Failed", "Terminating"]

ARGO_STATUSES: frozenset[str] = frozenset(
    ("Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"))

# What Argo CD's Lua VM offers a health script when useOpenLibs is off: gopher-lua's base
# library, `table`, `package` (for require) and a reduced `os` with only time and date.
_SANDBOX = """
local keep_os = {time = os.time, date = os.date}
string, math, io, debug, coroutine, python = nil, nil, nil, nil, nil, nil
os = keep_os
getmetatable("").__index = nil
"""


@cache
def health_script() -> str:
    return HEALTH_LUA.read_text()


def _to_lua(runtime: Any, value: Any) -> Any:
    """A JSON value as Argo CD hands it to Lua: objects and arrays become tables (arrays
    indexed from 1), numbers become Lua numbers, null becomes nil."""
    if isinstance(value, Mapping):
        table = runtime.table()
        for key, item in value.items():
            if item is not None:
                table[str(key)] = _to_lua(runtime, item)
        return table
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        table = runtime.table()
        for index, item in enumerate(value, start=1):
            table[index] = _to_lua(runtime, item)
        return table
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"not a JSON value: {value!r}")


def argocd_health(obj: Mapping[str, Any], script: str | None = None) -> tuple[str, str]:
    """Argo CD's verdict on `obj`: (health status, message)."""
    runtime = LuaRuntime(register_eval=False, register_builtins=False,
                         unpack_returned_tuples=False)
    runtime.execute(_SANDBOX)
    runtime.globals().obj = _to_lua(runtime, obj)
    result = runtime.execute(health_script() if script is None else script)
    if result is None:
        return "", ""
    if not hasattr(result, "keys"):
        raise TypeError(f"expect table output from Lua script, not {type(result).__name__}")
    status, message = result["status"], result["message"]
    if status not in ARGO_STATUSES:
        return "Unknown", "Lua returned an invalid health status"
    if message is not None and not isinstance(message, str):
        raise TypeError(f"the message is not a string: {message!r}")
    return str(status), message or ""


def kstatus_result(obj: Mapping[str, Any]) -> tuple[KStatus, str]:
    """kstatus's verdict on a custom resource: (status, message)."""
    metadata = obj.get("metadata") or {}
    status = obj.get("status") or {}
    if metadata.get("deletionTimestamp"):
        return "Terminating", "Resource scheduled for deletion"
    generation = _int_field(metadata, "generation")
    observed = _int_field(status, "observedGeneration")
    if generation is not None and observed is not None and observed != generation:
        return "InProgress", (f"{obj.get('kind', '')} generation is {generation}, "
                              f"but latest observed generation is {observed}")
    conditions = status.get("conditions") or []
    for cond in conditions:
        if cond.get("type") == "Reconciling" and cond.get("status") == "True":
            return "InProgress", str(cond.get("message", ""))
        if cond.get("type") == "Stalled" and cond.get("status") == "True":
            return "Failed", str(cond.get("message", ""))
    for cond in conditions:
        if cond.get("type") != "Ready":
            continue
        if cond.get("status") == "True":
            return "Current", "Resource is Ready"
        if cond.get("status") in ("False", "Unknown"):
            return "InProgress", str(cond.get("message", ""))
    return "Current", "Resource is current"


def kstatus(obj: Mapping[str, Any]) -> KStatus:
    """kstatus's status of a custom resource: InProgress, Current, Failed or Terminating."""
    return kstatus_result(obj)[0]


def _int_field(parent: Mapping[str, Any], key: str) -> int | None:
    """An integer field as kstatus reads it: absent is None, a non-integer is an error."""
    if key not in parent:
        return None
    value = parent[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{key} is not an integer: {value!r}")
    return value

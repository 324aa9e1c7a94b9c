"""Drive Azure ML SDK v1 (azureml-core) against the emulator, one step per subcommand.

Run by the SDK v1 interpreter (its own virtualenv, see hack/sdkv1-venv.sh), never by the
project's: it imports nothing from this repository. Each subcommand prints one JSON object on
stdout; whatever azureml-core prints itself is captured into that object's "printed" field, so
tests can check what an SDK v1 user would have seen.

azureml-core is pointed at the emulator only through its own extension points: an
authentication class (a TokenAuthentication, itself an AbstractAuthentication, whose tokens come
from the emulator's managed-identity endpoint) and the cloud that authentication object carries,
whose `resource_manager` is the emulator. Nothing of azureml-core is patched.

    python sdkv1_driver.py --emulator ready.json --subscription S --resource-group RG \
        --workspace WS STEP [options]

Steps: workspace, attach, status, list, detach, delete.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import ipaddress
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# The managed-identity protocol the emulator serves (App Service, as azure-identity speaks it).
IDENTITY_API_VERSION = "2019-08-01"
CLOUD_NAME = "BatchComputeEmulator"


# Every name looked up and every address connected to that is not loopback: azureml-core
# reaching for Azure by itself. Recorded with an audit hook (PEP 578), not by patching anything.
OUTSIDE: list[str] = []


def _is_loopback(host: object) -> bool:
    if host in ("localhost", None, ""):
        return True
    try:
        return ipaddress.ip_address(str(host)).is_loopback
    except ValueError:
        return False


def _watch_network(event: str, args: tuple[Any, ...]) -> None:
    if event == "socket.getaddrinfo" and not _is_loopback(args[0]):
        OUTSIDE.append(f"lookup {args[0]}")
    elif event == "socket.connect" and isinstance(args[1], tuple) and not _is_loopback(args[1][0]):
        OUTSIDE.append(f"connect {args[1][0]}:{args[1][1]}")


def _emulator_info(ready_file: Path) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(ready_file.read_text())
    if info.get("ca_file"):
        # requests (which azureml-core, msrest and azure-core all use) trusts this bundle.
        os.environ["REQUESTS_CA_BUNDLE"] = info["ca_file"]
    return info


def emulator_cloud(arm_url: str) -> Any:
    """Azure's public cloud, except that Resource Manager is the emulator.

    The trailing slash is kept as in azureml-core's own AzureCloud, so the SDK builds the same
    `https://host//subscriptions/...` URLs it sends to Azure.
    """
    from azureml._vendor.azure_cli_core.cloud import AZURE_PUBLIC_CLOUD

    cloud = copy.deepcopy(AZURE_PUBLIC_CLOUD)
    cloud.name = CLOUD_NAME
    cloud.endpoints.resource_manager = arm_url.rstrip("/") + "/"
    return cloud


def emulator_authentication(info: dict[str, Any]) -> Any:
    """A TokenAuthentication whose tokens come from the emulator's identity endpoint."""
    import requests
    from azureml.core.authentication import TokenAuthentication

    tokens: dict[str, tuple[str, float]] = {}

    def token_for(audience: str) -> str:
        cached = tokens.get(audience)
        if cached is not None and cached[1] - time.time() > 60:
            return cached[0]
        response = requests.get(
            info["identity_endpoint"],
            params={"api-version": IDENTITY_API_VERSION, "resource": audience},
            headers={"X-IDENTITY-HEADER": info["identity_header"]},
            timeout=30,
        )
        response.raise_for_status()
        body = response.json()
        tokens[audience] = (body["access_token"], float(body["expires_on"]))
        return str(body["access_token"])

    class EmulatorAuthentication(TokenAuthentication):  # type: ignore[misc]
        """Tokens from the emulator; the cloud whose Resource Manager is the emulator.

        AbstractAuthentication picks its cloud by name in its constructor, and azureml-core
        knows no cloud by the emulator's name: "AzureCloud" is named (so nothing is looked up
        over the network) and the emulator's cloud then takes its place, as the cloud object
        `_get_cloud_type()` returns.
        """

        def __init__(self) -> None:
            super().__init__(token_for, cloud="AzureCloud")
            self._cloud_type = emulator_cloud(info["arm_url"])

    return EmulatorAuthentication()


class Session:
    """One SDK v1 user: a workspace and the authentication it was opened with."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.info = _emulator_info(args.emulator)
        self.auth = emulator_authentication(self.info)
        self.args = args
        self._workspace: Any = None

    @property
    def workspace(self) -> Any:
        if self._workspace is None:
            from azureml.core import Workspace

            self._workspace = Workspace(
                self.args.subscription,
                self.args.resource_group,
                self.args.workspace,
                auth=self.auth,
            )
        return self._workspace


@contextlib.contextmanager
def captured() -> Iterator[io.StringIO]:
    """What azureml-core prints goes into the result, not onto the JSON stream."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield buffer


def describe(target: Any) -> dict[str, Any]:
    """The public attributes of a compute target object, as an SDK v1 user reads them."""
    return {
        "class": type(target).__name__,
        "name": target.name,
        "type": target.type,
        "provisioning_state": target.provisioning_state,
        "provisioning_errors": target.provisioning_errors,
        "cluster_resource_id": target.cluster_resource_id,
        "cluster_location": target.cluster_location,
        "tags": target.tags,
        "is_attached": target.is_attached,
    }


def step_workspace(session: Session, args: argparse.Namespace) -> dict[str, Any]:
    ws = session.workspace
    return {
        "name": ws.name,
        "location": ws.location,
        "subscription_id": ws.subscription_id,
        "resource_group": ws.resource_group,
        "discovery_url": ws.discovery_url,
        "api_url": ws.service_context._get_api_url(),
    }


def step_attach(session: Session, args: argparse.Namespace) -> dict[str, Any]:
    from azureml.core.compute import BatchCompute, ComputeTarget

    if args.resource_id:
        config = BatchCompute.attach_configuration(resource_id=args.resource_id)
    else:
        config = BatchCompute.attach_configuration(
            resource_group=args.account_resource_group, account_name=args.account_name
        )
    with captured() as printed:
        target = ComputeTarget.attach(session.workspace, args.name, config)
        if not args.no_wait:
            target.wait_for_completion(show_output=True)
    return {**describe(target), "serialized": target.serialize(), "printed": printed.getvalue()}


def step_status(session: Session, args: argparse.Namespace) -> dict[str, Any]:
    from azureml.core.compute import ComputeTarget

    target = ComputeTarget(workspace=session.workspace, name=args.name)
    status = target.get_status()
    target.refresh_state()
    return {**describe(target), "status": status, "serialized": target.serialize()}


def step_list(session: Session, args: argparse.Namespace) -> dict[str, Any]:
    targets = session.workspace.compute_targets
    return {"compute_targets": {name: describe(t) for name, t in sorted(targets.items())}}


def step_detach(session: Session, args: argparse.Namespace) -> dict[str, Any]:
    from azureml.core.compute import ComputeTarget

    target = ComputeTarget(workspace=session.workspace, name=args.name)
    with captured() as printed:
        target.detach()
        if not args.no_wait:
            target.wait_for_completion(show_output=True, is_delete_operation=True)
    return {**describe(target), "printed": printed.getvalue()}


def step_delete(session: Session, args: argparse.Namespace) -> dict[str, Any]:
    from azureml.core.compute import ComputeTarget
    from azureml.exceptions import ComputeTargetException

    target = ComputeTarget(workspace=session.workspace, name=args.name)
    try:
        target.delete()
    except ComputeTargetException as exc:
        return {"raised": type(exc).__name__, "message": exc.message}
    return {"raised": None}


STEPS: dict[str, Callable[[Session, argparse.Namespace], dict[str, Any]]] = {
    "workspace": step_workspace,
    "attach": step_attach,
    "status": step_status,
    "list": step_list,
    "detach": step_detach,
    "delete": step_delete,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--emulator", type=Path, required=True, help="the emulator's ready file")
    p.add_argument("--subscription", required=True)
    p.add_argument("--resource-group", required=True)
    p.add_argument("--workspace", required=True)
    steps = p.add_subparsers(dest="step", required=True)
    steps.add_parser("workspace", help="Workspace(...): read the workspace")
    attach = steps.add_parser("attach", help="BatchCompute.attach_configuration + attach")
    attach.add_argument("--name", required=True)
    attach.add_argument("--resource-id", help="the Batch account's resource id")
    attach.add_argument("--account-resource-group", help="with --account-name")
    attach.add_argument("--account-name")
    attach.add_argument("--no-wait", action="store_true", help="skip wait_for_completion")
    for name, text in (
        ("status", "ComputeTarget(ws, name), get_status, refresh_state, serialize"),
        ("detach", "detach, then wait_for_completion"),
        ("delete", "delete (raises for Batch)"),
    ):
        step = steps.add_parser(name, help=text)
        step.add_argument("--name", required=True)
        if name == "detach":
            step.add_argument("--no-wait", action="store_true")
    steps.add_parser("list", help="ws.compute_targets")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.addaudithook(_watch_network)
    try:
        result = {"ok": True, **STEPS[args.step](Session(args), args)}
        code = 0
    except Exception as exc:  # the caller wants the SDK's own words, as JSON
        result = {
            "ok": False,
            "error": type(exc).__name__,
            "message": str(exc),
            "traceback": traceback.format_exc(),
        }
        code = 1
    result["outside_loopback"] = sorted(set(OUTSIDE))
    sys.stdout.write(json.dumps(result, default=str) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())

"""`batchcompute-operator export`: a workspace's Batch computes as BatchComputeAttachments.

    python -m batchcompute_operator export --subscription S --resource-group RG --workspace WS \
        [--namespace NS] [--deletion-policy Orphan|Detach] > attachments.yaml
    kubectl batchcompute export ...      (the same, as a kubectl plugin: hack/kubectl-batchcompute)

The first step of moving attachments made by Azure ML SDK v1 (or the portal) under the
operator. One paged LIST of the workspace's computes, with the operator's own ARM client and
credential chain (BCO_* settings, `config.Settings`), and one manifest per Batch compute on
stdout, ready for review and Git:

- `deletionPolicy: Orphan` unless asked otherwise, so a first takeover can never detach
  anything, whatever happens to the resources afterwards;
- the spec as ARM has it: the workspace, `computeName` (ARM's spelling), the Batch account's
  `resourceId`, the description and the user tags (never the operator's owner tags);
- `metadata.name` is the compute name made a valid Kubernetes name.

Once applied, the operator adopts each compute with one PUT that adds its owner tags
(README, "Moving off SDK v1"). Nothing here writes to ARM or to Kubernetes.

Computes that cannot be taken over (a name or account id the spec refuses) and computes a
resource already owns are left out, each with a note on stderr. Failures print one line that
says what to do, a missing role with its scope included, and exit 1; bad arguments exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import yaml

from batchcompute_operator import GROUP, KIND, VERSION
from batchcompute_operator.compute import ComputeView
from batchcompute_operator.config import ConfigError, Settings
from batchcompute_operator.credentials import (
    CredentialsUnavailable,
    TokenCache,
    TokenRefused,
    TokenRequestFailed,
    build_credential,
)
from batchcompute_operator.reconcile import OWNER_TAG, OWNER_UID_TAG
from batchcompute_operator.runtime import workspace_api
from batchcompute_operator.spec import (
    GUID,
    OWNER_TAG_PREFIX,
    RESOURCE_GROUP,
    WORKSPACE,
    SpecError,
    WorkspaceRef,
    parse_spec,
)
from batchcompute_operator.workspace.errors import ArmError, AuthenticationFailed, UnsafeUrl
from batchcompute_operator.workspace.transport import arm_http

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")  # a namespace name
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")  # an object name
# The flags that also exist as settings; like the operator's own flags, they win over BCO_*.
SETTING_FLAGS = {
    "arm_endpoint": "BCO_ARM_ENDPOINT",
    "ca_bundle": "BCO_CA_BUNDLE",
    "credential": "BCO_CREDENTIAL",
}
# The kubectl plugin passes this first, so usage lines name the command the user typed.
PLUGIN_FLAG = "--as-kubectl-plugin"
PLUGIN_PROG = "kubectl batchcompute export"


@dataclass(frozen=True)
class Options:
    workspace: WorkspaceRef
    namespace: str | None = None
    deletion_policy: str = "Orphan"
    management_policy: str = "Manage"
    include_owned: bool = False


@dataclass
class Export:
    """What one LIST yielded: the manifests, and a note per compute left out or worth a look."""

    manifests: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    computes: int = 0  # every compute in the workspace, of any type
    batch: int = 0  # of those, Batch computes


# -- manifests ---------------------------------------------------------------------------------


def kubernetes_name(compute_name: str, taken: set[str]) -> str:
    """A metadata.name for the compute: lowercase, ending in a letter or digit, unique.

    Compute names are letters, digits and '-' starting with a letter (spec.COMPUTE_NAME) and
    case-insensitive in ARM, so lowercasing alone never merges two; only a trailing '-' must
    go, and a name it would merge with another gets a numbered suffix.
    """
    base = compute_name.lower().rstrip("-") or "compute"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    taken.add(name)
    return name


def user_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """The compute's tags without the operator's ownership record."""
    return {k: v for k, v in sorted(tags.items()) if not k.lower().startswith(OWNER_TAG_PREFIX)}


def manifest(view: ComputeView, name: str, namespace: str | None,
             options: Options) -> dict[str, Any]:
    ws = options.workspace
    spec: dict[str, Any] = {
        "workspace": {"subscriptionId": ws.subscription_id, "resourceGroup": ws.resource_group,
                      "name": ws.name},
        "computeName": view.name,
        "batchAccount": {"resourceId": view.resource_id},
    }
    if view.description:
        spec["description"] = view.description
    tags = user_tags(view.tags)
    if tags:
        spec["tags"] = tags
    spec["deletionPolicy"] = options.deletion_policy
    if options.management_policy != "Manage":
        spec["managementPolicy"] = options.management_policy
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": metadata,
            "spec": spec}


def _owner(view: ComputeView) -> tuple[str, str] | None:
    """The namespace and name the compute's owner tag records, if it has a usable one."""
    ref = view.tags.get(OWNER_TAG)
    if ref is None and OWNER_UID_TAG not in view.tags:
        return None
    namespace, _, name = (ref or "").partition("/")
    if DNS_LABEL.fullmatch(namespace) and DNS_SUBDOMAIN.fullmatch(name):
        return namespace, name
    return "", ""


def build(computes: Iterable[ComputeView], options: Options) -> Export:
    """The manifests for every Batch compute that can be taken over, sorted by compute name."""
    result = Export()
    taken: set[str] = set()
    views = sorted(computes, key=lambda v: v.name.lower())
    result.computes = len(views)
    batch = [v for v in views if v.compute_type.lower() == "batch"]
    result.batch = len(batch)
    owned = {v.name: _owner(v) for v in batch}
    # Owned computes keep the names their owners have, so they are reserved first.
    for view in batch:
        found = owned[view.name]
        if found and options.include_owned and found[0]:
            taken.add(found[1])
    for view in batch:
        found = owned[view.name]
        namespace = options.namespace
        if found is not None:
            if not found[0]:
                result.notes.append(
                    f"skipped {view.name!r}: it carries the operator's owner tags, but tag "
                    f"{OWNER_TAG} names no namespace/name ({view.tags.get(OWNER_TAG)!r})")
                continue
            where = f"{found[0]}/{found[1]}"
            if not options.include_owned:
                result.notes.append(
                    f"skipped {view.name!r}: it is owned by BatchComputeAttachment {where} "
                    f"(tag {OWNER_TAG}); --include-owned exports it under that namespace and "
                    "name, to recreate resources a cluster lost")
                continue
            namespace, name = found
            result.notes.append(f"{view.name!r} is exported as {where}, the resource its owner "
                                "tag names: applied where that resource still exists, it "
                                "changes that resource's spec")
        else:
            name = kubernetes_name(view.name, taken)
        doc = manifest(view, name, namespace, options)
        try:
            parse_spec(doc["spec"], name, namespace)
        except SpecError as err:
            result.notes.append(f"skipped {view.name!r}: the operator cannot manage it as it "
                                f"is in ARM: {err}")
            continue
        if view.provisioning_state != "Succeeded":
            errors = "; ".join(f"{e.code}: {e.message}" for e in view.provisioning_errors)
            result.notes.append(
                f"{view.name!r} is {view.provisioning_state} in ARM"
                + (f" ({errors})" if errors else "")
                + ": once applied, the operator's PUT attaches it again")
        result.manifests.append(doc)
    return result


def header(options: Options, export: Export) -> str:
    ws = options.workspace
    lines = [
        f"# BatchComputeAttachments for the Batch computes of workspace {ws.name}",
        f"# (resource group {ws.resource_group}, subscription {ws.subscription_id}):",
        f"# {len(export.manifests)} of {export.batch} Batch computes, {export.computes} computes "
        "in all, from `batchcompute-operator export`.",
    ]
    if options.deletion_policy == "Orphan":
        lines.append("# deletionPolicy Orphan: deleting one of these resources leaves its "
                     "compute attached.")
    else:
        lines.append("# deletionPolicy Detach: deleting one of these resources detaches its "
                     "compute from the workspace.")
    if options.management_policy == "Observe":
        lines.append("# managementPolicy Observe: the operator reports on these computes and "
                     "never writes to them.")
    else:
        lines += ["# Once applied, the operator adopts each compute with one PUT that adds the "
                  "tags",
                  f"# {OWNER_TAG} and {OWNER_UID_TAG}."]
    return "\n".join(lines) + "\n"


def render(options: Options, export: Export) -> str:
    """One YAML stream: the header, then one document per compute, each with a comment."""
    parts = [header(options, export)]
    for doc in export.manifests:
        spec = doc["spec"]
        comment = f"# compute {spec['computeName']}: {spec['batchAccount']['resourceId']}"
        body = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False,
                              allow_unicode=True, width=100)
        parts.append(f"---\n{comment}\n{body}")
    return "".join(parts)


# -- ARM ---------------------------------------------------------------------------------------


async def list_computes(settings: Settings, ws: WorkspaceRef) -> list[ComputeView]:
    """The workspace's computes: one paged LIST, with the operator's client and credentials."""
    http = arm_http(settings)  # the operator's own client, with the same guards
    tokens = TokenCache(build_credential(settings), settings.arm_audience, key="export")
    try:
        found = await workspace_api(settings, tokens, http).list_computes(ws)
    finally:
        await http.aclose()
        await tokens.close()
    return list(found.values())


def explain(err: ArmError, ws: WorkspaceRef, settings: Settings) -> str:
    """One paragraph: what failed, and what to change."""
    said = f"{err.code}: {err.message}" if err.code else err.message
    if isinstance(err, CredentialsUnavailable):
        return (f"no Azure credential to use ({err.message}). Sign in (az login), or choose one "
                "with BCO_CREDENTIAL (default, managed-identity, workload-identity, "
                "environment, static-file) and its settings")
    if isinstance(err, TokenRefused):
        return f"ARM refused the token ({err.message}); sign in again, or renew the token"
    if isinstance(err, TokenRequestFailed):
        return f"could not get a token for ARM ({err.message}); check the credential's settings"
    if err.status == 403 or err.code in ("AuthorizationFailed", "LinkedAuthorizationFailed"):
        return (f"the identity may not list the computes of workspace {ws.name!r}: assign it "
                f"the role 'Reader' (or 'AzureML Compute Operator') on the scope {ws.arm_id} "
                "(or on its resource group or subscription); export needs "
                "Microsoft.MachineLearningServices/workspaces/computes/read and nothing else. "
                f"ARM said: {said}")
    if isinstance(err, AuthenticationFailed) or err.status == 401:
        return (f"ARM refused the token ({said}); sign in again, and check that the "
                f"credential's tenant is the one of subscription {ws.subscription_id}")
    if err.status == 404 or err.code in ("ResourceGroupNotFound", "SubscriptionNotFound",
                                         "ResourceNotFound", "WorkspaceNotFound"):
        return (f"workspace {ws.name!r} was not found in resource group {ws.resource_group!r} "
                f"of subscription {ws.subscription_id} (or the identity cannot see it); check "
                f"--subscription, --resource-group and --workspace. ARM said: {said}")
    if isinstance(err, UnsafeUrl):
        return f"{err.message}; check BCO_ARM_ENDPOINT"
    if err.status == 0:
        return f"could not reach ARM at {settings.arm_endpoint}: {err.message}"
    return f"ARM answered {err.status}: {said}"


# -- command line ------------------------------------------------------------------------------


def _pattern(pattern: re.Pattern[str], rule: str) -> Any:
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise argparse.ArgumentTypeError(f"{value!r} is invalid: {rule}")
        return value

    return check


def parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog or "batchcompute-operator export",
        description="Print one BatchComputeAttachment per Batch compute of an Azure ML "
                    "workspace, as YAML ready for review and Git. One LIST of the workspace's "
                    "computes, with the operator's credentials (BCO_* settings); nothing is "
                    "written to Azure or Kubernetes.",
        epilog="Then: review, kubectl apply -f the file, check each resource is Ready and its "
               "compute carries the owner tags, and switch deletionPolicy to Detach where "
               "deleting the resource should detach (README, \"Moving off SDK v1\").")
    p.add_argument("--subscription", required=True, metavar="ID",
                   type=_pattern(GUID, "a subscription id (GUID)"),
                   help="the workspace's subscription id")
    p.add_argument("--resource-group", "-g", required=True, metavar="RG",
                   type=_pattern(RESOURCE_GROUP,
                                 "1-90 letters, digits, '._-()', not ending in '.'"),
                   help="the workspace's resource group")
    p.add_argument("--workspace", "-w", required=True, metavar="NAME",
                   type=_pattern(WORKSPACE, "3-33 letters, digits, '_' and '-'"),
                   help="the workspace's name")
    p.add_argument("--namespace", "-n", metavar="NS",
                   type=_pattern(DNS_LABEL, "a Kubernetes namespace name"),
                   help="metadata.namespace of every resource (default: none, so that "
                        "`kubectl apply` puts them in its current namespace)")
    p.add_argument("--deletion-policy", choices=("Orphan", "Detach"), default="Orphan",
                   help="spec.deletionPolicy (default Orphan: deleting a resource never "
                        "detaches its compute)")
    p.add_argument("--management-policy", choices=("Manage", "Observe"), default="Manage",
                   help="spec.managementPolicy (default Manage; Observe only reports and never "
                        "writes to ARM)")
    p.add_argument("--include-owned", action="store_true",
                   help="also export computes a resource already owns, under the namespace and "
                        "name their owner tag records")
    p.add_argument("--arm-endpoint", help="overrides BCO_ARM_ENDPOINT")
    p.add_argument("--ca-bundle", help="overrides BCO_CA_BUNDLE")
    p.add_argument("--credential", help="overrides BCO_CREDENTIAL (default: default, the "
                                        "DefaultAzureCredential chain, Azure CLI login included)")
    p.add_argument("--allow-insecure-http", action="store_true",
                   help="allow a plain-http ARM endpoint (local development only)")
    p.add_argument("--verbose", action="store_true", help="log ARM calls on stderr")
    return p


def settings_from(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    env = dict(environ)
    for flag, name in SETTING_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            env[name] = value
    if args.allow_insecure_http:
        env["BCO_ALLOW_INSECURE_HTTP"] = "true"
    return Settings.from_env(env)


async def run(argv: Sequence[str], *, stdout: TextIO | None = None,
              stderr: TextIO | None = None, environ: Mapping[str, str] | None = None) -> int:
    """The command: 0 when the manifests were printed (even none), 1 on failure, 2 on usage."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    argv = list(argv)
    as_plugin = argv[:1] == [PLUGIN_FLAG]
    prog = parser(PLUGIN_PROG if as_plugin else None)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            args = prog.parse_args(argv[1:] if as_plugin else argv)
    except SystemExit as stop:  # argparse has printed the help, or the usage and the problem
        return int(stop.code or 0)
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG, stream=err,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = settings_from(args, os.environ if environ is None else environ)
    except ConfigError as problem:
        print(f"{prog.prog}: {problem}", file=err)
        return 2
    options = Options(WorkspaceRef(args.subscription, args.resource_group, args.workspace),
                      args.namespace, args.deletion_policy, args.management_policy,
                      args.include_owned)
    try:
        computes = await list_computes(settings, options.workspace)
    except ArmError as failure:
        print(f"{prog.prog}: {explain(failure, options.workspace, settings)}", file=err)
        return 1
    result = build(computes, options)
    for note in result.notes:
        print(f"{prog.prog}: {note}", file=err)
    if not result.manifests:
        print(f"{prog.prog}: no Batch compute to export from workspace {args.workspace!r} "
              f"({result.computes} computes, {result.batch} of type Batch)", file=err)
        return 0
    out.write(render(options, result))
    out.flush()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(run(sys.argv[1:] if argv is None else argv))

"""The install manifests in deploy/: they render, a real API server accepts every object,
and the operator's RBAC grants exactly what it needs.

Objects are checked with `kubectl apply --dry-run=server`, so the API server runs its full
validation and admission without storing anything. A few prerequisites are stored for real
because a dry run cannot create them for the objects that follow: the CRDs (the samples and
the peering object need their kinds served) and the namespaces (namespaced objects need
their namespace to exist). They are applied idempotently and left in place: the suite shares
one control plane, and the test bed has no namespace controller, so a deleted namespace
would stay Terminating for every later test. The kopf peering CRDs (deploy/kopf-peering),
the stand-in ServiceMonitor CRD the monitoring component needs, and the RBAC objects, which
change what the operator identity may do, are removed afterwards when this module created
them.

Besides deploy/ and its overlays, the optional components are rendered on top of the
overlays they are meant for, and the kind overlay exactly as `make e2e` applies it
(`hack/e2e.sh render` with its images set): every object `make e2e` applies is dry-run here.

Two adaptations for the test bed's v1.20 API server, each applied only when the server
lacks the feature: `x-kubernetes-validations` (CEL, v1.25+) is removed from the CRD before
it is sent, and a policy/v1 PodDisruptionBudget (v1.21+) is sent as policy/v1beta1, whose
fields are the same.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from waiting import eventually, wait_for

from batchcompute_operator.config import Settings
from batchcompute_operator.spec import parse_spec

if TYPE_CHECKING:
    from conftest import Cluster

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
SAMPLES = DEPLOY / "samples"
KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"

GROUP = "batchcompute.azureml.dev"
PLURAL = "batchcomputeattachments"
CRD_NAME = f"{PLURAL}.{GROUP}"
PEERING_CRDS = ("clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev")
SERVICE_MONITOR_CRD = "servicemonitors.monitoring.coreos.com"
OPERATOR_NAMESPACE = "batchcompute-system"
OPERATOR_SA = "batchcompute-operator"
CONFIG = "batchcompute-operator-config"  # generated: CONFIG-<hash of the content>
WATCHED_NAMESPACE = "ml-team-a"  # deploy/overlays/single-namespace
HEALTH_PORT = 8080
METRICS_PORT = 8081
IMAGE_REPO = "ghcr.io/batchcompute-operator/batchcompute-operator"
E2E_IMAGE = "registry.example:5000/bco/operator:e2e-test"
E2E_EMULATOR_IMAGE = "registry.example:5000/bco/emulator@sha256:" + "ab" * 32
# Settings the Deployment sets that the operator gains with its readiness and metrics
# endpoints and JSON logs; until config.py reads them they are accepted here by name.
PENDING_SETTINGS: set[str] = set()
RENDERINGS = {
    "default": DEPLOY,
    "single-namespace": DEPLOY / "overlays" / "single-namespace",
    "ha": DEPLOY / "overlays" / "ha",
}
# Optional components, rendered on top of the overlay named first.
COMPOSED = {
    "default+monitoring": (DEPLOY / "default", ("monitoring",)),
    "ha+monitoring+priority-class": (
        DEPLOY / "overlays" / "ha",
        ("monitoring", "priority-class"),
    ),
}

Rule = tuple[str, str, str, tuple[str, ...]]  # (apiGroup, resource, verb, resourceNames)

# The operator's rights in the default install, rule by rule (see deploy/rbac/role.yaml and
# crd_observer_role.yaml for why each verb is there).
OPERATOR_RULES: set[Rule] = {
    *{(GROUP, PLURAL, verb, ()) for verb in ("get", "list", "watch", "patch")},
    *{(GROUP, f"{PLURAL}/status", verb, ()) for verb in ("get", "patch")},
    ("", "events", "create", ()),
    *{
        ("apiextensions.k8s.io", "customresourcedefinitions", verb, ())
        for verb in ("list", "watch")
    },
}
PEERING_RULES: set[Rule] = {
    ("kopf.dev", "clusterkopfpeerings", "list", ()),
    ("kopf.dev", "clusterkopfpeerings", "watch", ()),
    ("kopf.dev", "clusterkopfpeerings", "get", ("batchcompute-operator",)),
    ("kopf.dev", "clusterkopfpeerings", "patch", ("batchcompute-operator",)),
}


# -- helpers -----------------------------------------------------------------------------


def kustomize(path: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"kubectl kustomize {path} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kustomize_composed(
    tmp: Path, base: Path, components: Sequence[str] = (), **extra: Any
) -> list[dict[str, Any]]:
    """A kustomization of one's own on top of `base`, as a user's overlay would be."""
    tmp.mkdir(parents=True, exist_ok=True)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(base, tmp)],
        **extra,
    }
    if components:
        kustomization["components"] = [
            os.path.relpath(DEPLOY / "components" / c, tmp) for c in components
        ]
    (tmp / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return kustomize(tmp)


def render_composed(name: str, tmp: Path) -> list[dict[str, Any]]:
    base, components = COMPOSED[name]
    return kustomize_composed(tmp / name, base, components)


def render_e2e() -> list[dict[str, Any]]:
    """What `make e2e` applies, through the same script."""
    env = {**os.environ, "IMAGE": E2E_IMAGE, "EMULATOR_IMAGE": E2E_EMULATOR_IMAGE}
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "hack" / "e2e.sh"), "render"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def version() -> str:
    with (REPO_ROOT / "pyproject.toml").open("rb") as f:
        value: str = tomllib.load(f)["project"]["version"]
    return value


def config_of(objects: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The generated settings ConfigMap, checked to be the one the Deployment loads."""
    (config,) = [
        o
        for o in by_kind(objects, "ConfigMap")
        if o["metadata"]["name"].startswith(f"{CONFIG}-")
    ]
    deployment = one(objects, "Deployment", "batchcompute-operator")
    container = manager(deployment)
    assert container["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]
    return config


def manager(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    (container,) = [c for c in containers if c["name"] == "manager"]
    found: dict[str, Any] = container
    return found


def deployment_settings(objects: Sequence[dict[str, Any]]) -> dict[str, str]:
    """The BCO_* settings the operator starts with: the ConfigMap's, then the container's."""
    settings = dict(config_of(objects)["data"])
    container = manager(one(objects, "Deployment", "batchcompute-operator"))
    for env in container.get("env", []):
        if env["name"].startswith("BCO_"):
            settings[env["name"]] = env["value"]
    return settings


def by_kind(objects: Sequence[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: Sequence[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in by_kind(objects, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def as_yaml(objects: Sequence[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(objects, sort_keys=False)


def rules_of(role: dict[str, Any]) -> set[Rule]:
    """Every (group, resource, verb, resourceNames) a Role or ClusterRole grants."""
    flat: set[Rule] = set()
    for rule in role.get("rules", []):
        assert "nonResourceURLs" not in rule, f"{role['metadata']['name']}: non-resource rule"
        names = tuple(sorted(rule.get("resourceNames", [])))
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (group, resource, verb), f"wildcard in {rule}"
                    flat.add((group, resource, verb, names))
    return flat


def binds_operator(binding: dict[str, Any]) -> bool:
    return any(
        s.get("kind") == "ServiceAccount"
        and s.get("name") == OPERATOR_SA
        and s.get("namespace") == OPERATOR_NAMESPACE
        for s in binding.get("subjects", [])
    )


def operator_cluster_rules(objects: Sequence[dict[str, Any]]) -> set[Rule]:
    """The union of the ClusterRoles bound cluster-wide to the operator's ServiceAccount."""
    granted: set[Rule] = set()
    for binding in by_kind(objects, "ClusterRoleBinding"):
        if binds_operator(binding):
            assert binding["roleRef"]["kind"] == "ClusterRole"
            granted |= rules_of(one(objects, "ClusterRole", binding["roleRef"]["name"]))
    return granted


class Kubectl:
    """kubectl against the test bed, as the admin unless another kubeconfig is given."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig

    def run(
        self,
        *args: str,
        stdin: str | None = None,
        kubeconfig: Path | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        argv = [KUBECTL, "--kubeconfig", str(kubeconfig or self.kubeconfig), *args]
        result = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} exited {result.returncode}:\n{result.stderr}{result.stdout}"
            )
        return result

    def apply(self, objects: Sequence[dict[str, Any]], *, dry_run: bool) -> str:
        args = ["apply", "-f", "-"] + (["--dry-run=server"] if dry_run else [])
        return self.run(*args, stdin=as_yaml(objects)).stdout

    def exists(self, kind: str, name: str, namespace: str | None = None) -> bool:
        scope = ["-n", namespace] if namespace else []
        result = self.run("get", kind, name, *scope, "-o", "name", check=False)
        if result.returncode == 0:
            return True
        assert "NotFound" in result.stderr, result.stderr
        return False


@pytest.fixture(scope="module")
def kubectl(controlplane: Cluster) -> Kubectl:
    return Kubectl(controlplane.kubeconfig)


@pytest.fixture(scope="module")
def server_caps(kubectl: Kubectl) -> dict[str, bool]:
    """What the API server supports among the features the manifests use."""
    openapi = json.loads(kubectl.run("get", "--raw", "/openapi/v2").stdout)
    props = openapi["definitions"][
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaProps"
    ]["properties"]
    versions = set(kubectl.run("api-versions").stdout.split())
    return {"cel": "x-kubernetes-validations" in props, "policy/v1": "policy/v1" in versions}


def _strip_cel(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_cel(v) for k, v in node.items() if k != "x-kubernetes-validations"}
    if isinstance(node, list):
        return [_strip_cel(v) for v in node]
    return node


def for_server(objects: Sequence[dict[str, Any]], caps: dict[str, bool]) -> list[dict[str, Any]]:
    """The objects as this API server can take them (see the module docstring)."""
    adapted = []
    for obj in objects:
        if obj["kind"] == "CustomResourceDefinition" and not caps["cel"]:
            obj = _strip_cel(obj)
        if (
            obj["kind"] == "PodDisruptionBudget"
            and obj["apiVersion"] == "policy/v1"
            and not caps["policy/v1"]
        ):
            obj = {**copy.deepcopy(obj), "apiVersion": "policy/v1beta1"}
        adapted.append(obj)
    return adapted


def _established(kubectl: Kubectl, name: str) -> bool:
    crd = json.loads(kubectl.run("get", "crd", name, "-o", "json").stdout)
    conditions = crd.get("status", {}).get("conditions", [])
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


def install_crds(kubectl: Kubectl, crds: Sequence[dict[str, Any]], caps: dict[str, bool]) -> None:
    kubectl.apply(for_server(crds, caps), dry_run=False)
    for crd in crds:
        name = crd["metadata"]["name"]
        wait_for(
            lambda name=name: _established(kubectl, name),
            timeout=30,
            message=f"CRD {name} Established",
        )


def ensure_namespace(kubectl: Kubectl, name: str) -> None:
    if not kubectl.exists("namespace", name):
        kubectl.run("create", "namespace", name)


@pytest.fixture(scope="module")
def attachment_crd(kubectl: Kubectl, server_caps: dict[str, bool]) -> str:
    """The BatchComputeAttachment CRD from deploy/crd, really installed and Established."""
    install_crds(
        kubectl, by_kind(kustomize(DEPLOY / "crd"), "CustomResourceDefinition"), server_caps
    )
    return CRD_NAME


@pytest.fixture(scope="module")
def peering_crds(kubectl: Kubectl, server_caps: dict[str, bool]) -> Iterator[None]:
    """kopf's peering CRDs (deploy/kopf-peering, the step `make peering-crds` runs), really
    installed twice the way that step does it (it must be idempotent), removed after."""
    created = [name for name in PEERING_CRDS if not kubectl.exists("crd", name)]
    crds = kustomize(DEPLOY / "kopf-peering")
    for _ in range(2):
        out = kubectl.run(
            "apply", "--server-side", "--field-manager=kopf-peering-crds", "-f", "-",
            stdin=as_yaml(for_server(crds, server_caps)),
        ).stdout  # fmt: skip
        assert out.count("serverside-applied") == len(crds), out
    install_crds(kubectl, crds, server_caps)
    yield
    for name in created:
        kubectl.run("delete", "crd", name, "--wait=true")


# A minimal stand-in for the Prometheus Operator's ServiceMonitor CRD: the kind served, its
# schema left open. Enough for the API server to accept (and dry-run) a ServiceMonitor.
SERVICE_MONITOR_STAND_IN = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": SERVICE_MONITOR_CRD},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {
            "kind": "ServiceMonitor",
            "listKind": "ServiceMonitorList",
            "plural": "servicemonitors",
            "singular": "servicemonitor",
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}


@pytest.fixture(scope="module")
def service_monitor_crd(kubectl: Kubectl, server_caps: dict[str, bool]) -> Iterator[None]:
    created = not kubectl.exists("crd", SERVICE_MONITOR_CRD)
    install_crds(kubectl, [SERVICE_MONITOR_STAND_IN], server_caps)
    yield
    if created:
        kubectl.run("delete", "crd", SERVICE_MONITOR_CRD, "--wait=true")


# -- rendering ---------------------------------------------------------------------------


def test_top_level_renders_the_default_install() -> None:
    top = kustomize(DEPLOY)
    assert top == kustomize(DEPLOY / "default")
    kinds = {(o["kind"], o["metadata"]["name"]) for o in top}
    assert {
        ("Namespace", OPERATOR_NAMESPACE),
        ("CustomResourceDefinition", CRD_NAME),
        ("ServiceAccount", OPERATOR_SA),
        ("ClusterRole", "batchcompute-operator"),
        ("ClusterRoleBinding", "batchcompute-operator"),
        ("Deployment", "batchcompute-operator"),
    } <= kinds
    config_of(top)


def test_crd_is_the_one_in_crds() -> None:
    """deploy/ ships crds/ unchanged, apart from the labels kustomize adds."""
    rendered = one(kustomize(DEPLOY), "CustomResourceDefinition", CRD_NAME)
    source = one(
        load(REPO_ROOT / "crds" / "batchcomputeattachments.yaml"),
        "CustomResourceDefinition",
        CRD_NAME,
    )
    assert rendered["spec"] == source["spec"]
    assert source["metadata"]["labels"].items() <= rendered["metadata"]["labels"].items()


def test_deployment_is_hardened_and_probed() -> None:
    objects = kustomize(DEPLOY)
    deployment = one(objects, "Deployment", "batchcompute-operator")
    assert deployment["metadata"]["namespace"] == OPERATOR_NAMESPACE
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert labels["azure.workload.identity/use"] == "true"
    assert pod["serviceAccountName"] == OPERATOR_SA
    assert pod["automountServiceAccountToken"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}

    (container,) = pod["containers"]
    assert container["image"] == f"{IMAGE_REPO}:{version()}"  # make version-sync
    assert "command" not in container and "args" not in container  # the image's entrypoint
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == 10001
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    # Sized from `make bench` (README, Performance): peaks of about 149 MiB at 10 000.
    assert container["resources"] == {
        "requests": {"cpu": "100m", "memory": "192Mi"},
        "limits": {"cpu": "500m", "memory": "384Mi"},
    }

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": HEALTH_PORT, "metrics": METRICS_PORT}
    settings = deployment_settings(objects)
    assert settings["BCO_HEALTH_PORT"] == str(HEALTH_PORT)
    assert settings["BCO_METRICS_PORT"] == str(METRICS_PORT)
    assert settings["BCO_LOG_FORMAT"] == "json"
    probes = {
        probe: (container[probe]["httpGet"]["path"], container[probe]["httpGet"]["port"])
        for probe in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert probes == {
        "startupProbe": ("/healthz", "health"),
        "livenessProbe": ("/healthz", "health"),
        "readinessProbe": ("/readyz", "health"),
    }
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60  # time to start
    assert "initialDelaySeconds" not in container["livenessProbe"]  # the startup probe gates it

    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    env = {e["name"]: e for e in container["env"]}
    assert env["TMPDIR"]["value"] == "/tmp"
    assert env["POD_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    config_of(objects)

    account = one(objects, "ServiceAccount", OPERATOR_SA)
    assert account["metadata"]["namespace"] == OPERATOR_NAMESPACE
    assert "azure.workload.identity/client-id" in account["metadata"]["annotations"]


@pytest.mark.parametrize("rendering", sorted(RENDERINGS))
def test_config_is_accepted_by_the_operator(rendering: str) -> None:
    """The ConfigMap and the container hold only known BCO_* settings, and the operator
    starts with them."""
    objects = kustomize(RENDERINGS[rendering])
    data = config_of(objects)["data"]
    known = (REPO_ROOT / "operator" / "batchcompute_operator" / "config.py").read_text()
    for key, value in data.items():
        assert key.startswith("BCO_") and key in known, f"unknown setting {key}"
        assert isinstance(value, str), f"{key} must be a string, got {value!r}"
    settings_env = deployment_settings(objects)
    for key in settings_env:
        assert key in known or key in PENDING_SETTINGS, f"unknown setting {key}"
    settings = Settings.from_env(settings_env, files=False)
    assert settings.health_port == HEALTH_PORT
    assert settings.arm_endpoint.startswith("https://")
    assert not settings.allow_insecure_http
    assert settings.credential == "workload-identity"


def test_a_settings_change_rolls_the_deployment(tmp_path: Path) -> None:
    """The ConfigMap's name carries a hash of its content, and the pod template refers to
    it: editing a setting changes the template, which rolls the Deployment."""
    before = kustomize(DEPLOY / "default")
    after = kustomize_composed(
        tmp_path,
        DEPLOY / "default",
        configMapGenerator=[
            {
                "name": CONFIG,
                "namespace": OPERATOR_NAMESPACE,
                "behavior": "merge",
                "literals": ["BCO_RESYNC_INTERVAL=600"],
            }
        ],
    )
    old, new = config_of(before), config_of(after)
    assert new["data"] == {**old["data"], "BCO_RESYNC_INTERVAL": "600"}
    assert old["metadata"]["name"] != new["metadata"]["name"]
    templates = [
        one(objects, "Deployment", "batchcompute-operator")["spec"]["template"]
        for objects in (before, after)
    ]
    assert templates[0] != templates[1]
    # Nothing else in the pod template changed.
    for template in templates:
        manager(template_as_deployment(template))["envFrom"] = None
    assert templates[0] == templates[1]


def template_as_deployment(template: dict[str, Any]) -> dict[str, Any]:
    return {"spec": {"template": template}}


def test_operator_cluster_role_grants_exactly_what_kopf_uses() -> None:
    objects = kustomize(DEPLOY)
    assert operator_cluster_rules(objects) == OPERATOR_RULES
    assert not by_kind(objects, "RoleBinding")


def test_user_roles_aggregate_into_admin_edit_view() -> None:
    objects = kustomize(DEPLOY)
    expected = {
        "aggregate-to-admin": {
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        },
        "aggregate-to-edit": {"create", "delete", "get", "list", "patch", "update", "watch"},
        "aggregate-to-view": {"get", "list", "watch"},
    }
    for label, verbs in expected.items():
        (role,) = [
            r
            for r in by_kind(objects, "ClusterRole")
            if r["metadata"].get("labels", {}).get(f"rbac.authorization.k8s.io/{label}") == "true"
        ]
        assert rules_of(role) == {(GROUP, PLURAL, v, ()) for v in verbs} | {
            (GROUP, f"{PLURAL}/status", "get", ())
        }
        assert not any(
            binds_operator(b) and b["roleRef"]["name"] == role["metadata"]["name"]
            for b in by_kind(objects, "ClusterRoleBinding")
        )


def test_single_namespace_overlay_grants_only_in_watched_namespaces() -> None:
    objects = kustomize(RENDERINGS["single-namespace"])
    config = config_of(objects)
    watched = [n.strip() for n in config["data"]["BCO_NAMESPACES"].split(",")]
    assert watched == [WATCHED_NAMESPACE]

    # Serving named namespaces, the operator turns kopf's scanning off (no Namespace or CRD
    # watching), so it needs nothing cluster-wide.
    assert operator_cluster_rules(objects) == set()
    namespaced_rules = {r for r in OPERATOR_RULES if r[0] != "apiextensions.k8s.io"}

    bindings = [b for b in by_kind(objects, "RoleBinding") if binds_operator(b)]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == sorted(watched)
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "Role"
        role = [
            r
            for r in by_kind(objects, "Role")
            if r["metadata"]["name"] == binding["roleRef"]["name"]
            and r["metadata"]["namespace"] == binding["metadata"]["namespace"]
        ]
        assert len(role) == 1
        assert rules_of(role[0]) == namespaced_rules


def test_ha_overlay_runs_two_peered_replicas() -> None:
    objects = kustomize(RENDERINGS["ha"])
    deployment = one(objects, "Deployment", "batchcompute-operator")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"

    config = config_of(objects)
    peering_name = config["data"]["BCO_PEERING"]
    assert Settings.from_env(config["data"]).peering == peering_name
    # Cluster-wide operators use the cluster-scoped peering kind.
    assert "BCO_NAMESPACES" not in config["data"]
    one(objects, "ClusterKopfPeering", peering_name)
    assert operator_cluster_rules(objects) == OPERATOR_RULES | PEERING_RULES

    (pdb,) = by_kind(objects, "PodDisruptionBudget")
    assert pdb["metadata"]["namespace"] == OPERATOR_NAMESPACE
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["minAvailable"] == 1

    # Spread: one replica per node, always; across zones where possible.
    pod = deployment["spec"]["template"]["spec"]
    spread = {c["topologyKey"]: c for c in pod["topologySpreadConstraints"]}
    assert set(spread) == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    assert spread["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule"
    assert spread["topology.kubernetes.io/zone"]["whenUnsatisfiable"] == "ScheduleAnyway"
    for constraint in spread.values():
        assert constraint["maxSkew"] == 1
        assert constraint["labelSelector"]["matchLabels"].items() <= pod_labels.items()
    assert "priorityClassName" not in pod  # optional: deploy/components/priority-class


def test_kopf_peering_crds_are_a_step_of_their_own() -> None:
    """kopf's CRDs are shared by every kopf operator in the cluster: no install of this app
    carries them (deleting the app would delete every operator's peering objects)."""
    for rendering, path in RENDERINGS.items():
        crds = by_kind(kustomize(path), "CustomResourceDefinition")
        names = {c["metadata"]["name"] for c in crds}
        assert names == {CRD_NAME}, f"{rendering} installs CRDs {names}"
    peering = kustomize(DEPLOY / "kopf-peering")
    assert {(o["kind"], o["metadata"]["name"]) for o in peering} == {
        ("CustomResourceDefinition", name) for name in PEERING_CRDS
    }
    for crd in peering:
        assert "app.kubernetes.io/part-of" not in crd["metadata"].get("labels", {})
    makefile = (REPO_ROOT / "Makefile").read_text()
    step = "kubectl apply --server-side --field-manager=kopf-peering-crds -k deploy/kopf-peering"
    assert step in makefile


def test_optional_components(tmp_path: Path) -> None:
    ha = kustomize(RENDERINGS["ha"])
    objects = render_composed("ha+monitoring+priority-class", tmp_path)
    deployment = one(objects, "Deployment", "batchcompute-operator")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "batchcompute-operator"
    one(objects, "PriorityClass", "batchcompute-operator")

    service = one(objects, "Service", "batchcompute-operator-metrics")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "metrics"
    assert {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"} in manager(
        deployment
    )["ports"]
    monitor = one(objects, "ServiceMonitor", "batchcompute-operator")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"][
        "labels"
    ].items()
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s", "scheme": "http"}
    ]
    # The components add; they change nothing else.
    added = {("PriorityClass", "batchcompute-operator"),
             ("Service", "batchcompute-operator-metrics"),
             ("ServiceMonitor", "batchcompute-operator")}  # fmt: skip
    assert {(o["kind"], o["metadata"]["name"]) for o in objects} == added | {
        (o["kind"], o["metadata"]["name"]) for o in ha
    }


def test_e2e_overlay_runs_the_image_under_test_with_the_emulator() -> None:
    """`make e2e`: the Deployment of deploy/default with IMAGE, the emulator in the pod, the
    emulator's CA and a test identity, and no workload identity (kind has no webhook)."""
    objects = render_e2e()
    default = kustomize(DEPLOY / "default")
    assert {(o["kind"], o["metadata"]["name"]) for o in objects if o["kind"] != "ConfigMap"} == {
        (o["kind"], o["metadata"]["name"]) for o in default if o["kind"] != "ConfigMap"
    } | {("Secret", one_secret_name(objects))}
    deployment = one(objects, "Deployment", "batchcompute-operator")
    template = deployment["spec"]["template"]
    assert "azure.workload.identity/use" not in template["metadata"]["labels"]
    containers = template["spec"]["containers"]
    assert [c["name"] for c in containers] == ["arm-emulator", "manager"]  # emulator first
    emulator, operator = containers
    assert operator["image"] == E2E_IMAGE
    assert emulator["image"] == E2E_EMULATOR_IMAGE
    assert "postStart" in emulator["lifecycle"]
    assert "--host=127.0.0.1" in emulator["args"] and "--port=8443" in emulator["args"]

    settings = deployment_settings(objects)
    assert settings["BCO_ARM_ENDPOINT"] == "https://127.0.0.1:8443"
    assert settings["BCO_CREDENTIAL"] == "managed-identity"
    ca = settings["BCO_CA_BUNDLE"]
    mounts = {m["name"]: m for m in operator["volumeMounts"]}
    assert ca.startswith(mounts["arm-emulator"]["mountPath"] + "/")
    assert any(a == f"--tls-dir={Path(ca).parent}" for a in emulator["args"])
    env = {e["name"]: e for e in operator["env"]}
    assert env["IDENTITY_ENDPOINT"]["value"] == "https://127.0.0.1:8443/msi/token"
    secret = env["IDENTITY_HEADER"]["valueFrom"]["secretKeyRef"]["name"]
    assert secret == one_secret_name(objects)
    Settings.from_env(settings, files=False)  # the operator accepts them (paths are the pod's)


def one_secret_name(objects: Sequence[dict[str, Any]]) -> str:
    (secret,) = by_kind(objects, "Secret")
    name: str = secret["metadata"]["name"]
    return name


# -- the API server accepts the objects --------------------------------------------------


ALL_RENDERINGS = sorted([*RENDERINGS, *COMPOSED, "e2e-kind"])


@pytest.mark.parametrize("rendering", ALL_RENDERINGS)
def test_api_server_accepts_every_object(
    rendering: str,
    kubectl: Kubectl,
    server_caps: dict[str, bool],
    attachment_crd: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    if rendering in RENDERINGS:
        objects = kustomize(RENDERINGS[rendering])
    elif rendering in COMPOSED:
        objects = render_composed(rendering, tmp_path)
    else:
        objects = render_e2e()
    if any(o["kind"] == "ClusterKopfPeering" for o in objects):
        request.getfixturevalue("peering_crds")  # the peering object needs its kind served
    if any(o["kind"] == "ServiceMonitor" for o in objects):
        request.getfixturevalue("service_monitor_crd")
    for namespace in by_kind(objects, "Namespace"):
        ensure_namespace(kubectl, namespace["metadata"]["name"])
    rendered_namespaces = {n["metadata"]["name"] for n in by_kind(objects, "Namespace")}
    for obj in objects:
        namespace = obj["metadata"].get("namespace")
        if namespace and namespace not in rendered_namespaces:
            ensure_namespace(kubectl, namespace)  # watched namespaces exist before install

    crds = by_kind(objects, "CustomResourceDefinition")
    rest = [o for o in objects if o["kind"] != "CustomResourceDefinition"]
    assert crds and rest
    for batch in (crds, rest):
        out = kubectl.apply(for_server(batch, server_caps), dry_run=True)
        assert out.count("(server dry run)") == len(batch), out


def sample_paths() -> list[Path]:
    return sorted(SAMPLES.glob("*.yaml"))


def test_the_three_samples_are_there() -> None:
    assert {p.name for p in sample_paths()} == {
        "attach-by-resource-id.yaml",
        "attach-by-account-name.yaml",
        "orphan-on-delete.yaml",
    }


@pytest.mark.parametrize("path", sample_paths(), ids=lambda p: p.stem)
def test_sample_is_valid(path: Path, kubectl: Kubectl, attachment_crd: str, namespace: str) -> None:
    (sample,) = load(path)
    assert sample["apiVersion"] == f"{GROUP}/v1alpha1"
    assert "namespace" not in sample["metadata"]  # applied into the user's namespace
    # The operator's own validation: v1.20 does not evaluate the CRD's CEL rules (one
    # batchAccount form only), the operator always does.
    spec = parse_spec(sample["spec"], sample["metadata"]["name"])
    assert spec.workspace.subscription_id == "00000000-0000-0000-0000-000000000001"
    assert (spec.workspace.resource_group, spec.workspace.name) == ("ml-rg", "ml-ws")
    assert spec.batch_account_id.endswith(
        "/resourceGroups/batch-rg/providers/Microsoft.Batch/batchAccounts/mybatchacct"
    )

    out = kubectl.run(
        "apply", "--dry-run=server", "-n", namespace, "-o", "json", "-f", str(path)
    ).stdout
    accepted = json.loads(out)
    assert accepted["spec"]["deletionPolicy"] == sample["spec"].get("deletionPolicy", "Detach")
    assert accepted["spec"]["deletionPolicy"] == spec.deletion_policy


def test_schema_rejects_a_broken_sample(
    kubectl: Kubectl, attachment_crd: str, namespace: str
) -> None:
    """The dry runs above are real validation: a bad sample is refused."""
    (sample,) = load(SAMPLES / "attach-by-account-name.yaml")
    sample["spec"]["workspace"]["subscriptionId"] = "not-a-guid"
    sample["spec"]["deletionPolicy"] = "Destroy"
    result = kubectl.run(
        "apply",
        "--dry-run=server",
        "-n",
        namespace,
        "-f",
        "-",
        stdin=as_yaml([sample]),
        check=False,
    )
    assert result.returncode != 0
    assert "spec.workspace.subscriptionId" in result.stderr
    assert "spec.deletionPolicy" in result.stderr


# -- the operator's identity can do exactly its job --------------------------------------


@pytest.fixture(scope="module")
def operator_rbac(kubectl: Kubectl, controlplane: Cluster, attachment_crd: str) -> Iterator[Path]:
    """deploy/rbac really applied; yields the operator identity's kubeconfig."""
    controlplane.require_local()
    assert controlplane.operator_kubeconfig is not None
    ensure_namespace(kubectl, OPERATOR_NAMESPACE)
    objects = kustomize(DEPLOY / "rbac")
    created = [
        o
        for o in objects
        if not kubectl.exists(o["kind"], o["metadata"]["name"], o["metadata"].get("namespace"))
    ]
    kubectl.apply(objects, dry_run=False)
    yield controlplane.operator_kubeconfig
    for obj in created:
        scope = ["-n", obj["metadata"]["namespace"]] if "namespace" in obj["metadata"] else []
        kubectl.run("delete", obj["kind"], obj["metadata"]["name"], *scope, "--ignore-not-found")


def can_i(kubectl: Kubectl, kubeconfig: Path, *args: str) -> bool:
    result = kubectl.run("auth", "can-i", *args, kubeconfig=kubeconfig, check=False)
    answer = result.stdout.strip()
    assert result.returncode in (0, 1) and answer in ("yes", "no"), result.stderr
    return answer == "yes"


ATTACHMENTS = f"{PLURAL}.{GROUP}"
# Namespaced checks name an arbitrary namespace (the ClusterRoleBinding covers them all);
# cluster-scoped ones use --all-namespaces, i.e. no namespace in the access review.
ALLOWED: list[tuple[str, ...]] = [
    ("list", ATTACHMENTS, "--all-namespaces"),
    ("watch", ATTACHMENTS, "--all-namespaces"),
    ("get", ATTACHMENTS, "-n", "any-team"),
    ("patch", ATTACHMENTS, "-n", "any-team"),
    ("patch", ATTACHMENTS, "--subresource=status", "-n", "any-team"),
    ("get", ATTACHMENTS, "--subresource=status", "-n", "any-team"),
    ("create", "events", "-n", "any-team"),
    ("list", "customresourcedefinitions.apiextensions.k8s.io", "--all-namespaces"),
    ("watch", "customresourcedefinitions.apiextensions.k8s.io", "--all-namespaces"),
]
DENIED: list[tuple[str, ...]] = [
    ("get", "secrets", "-n", OPERATOR_NAMESPACE),
    ("list", "secrets", "--all-namespaces"),
    ("delete", ATTACHMENTS, "-n", "any-team"),
    ("create", ATTACHMENTS, "-n", "any-team"),
    ("update", ATTACHMENTS, "-n", "any-team"),
    ("update", ATTACHMENTS, "--subresource=status", "-n", "any-team"),
    ("create", "pods", "-n", OPERATOR_NAMESPACE),
    ("patch", "events", "-n", "any-team"),
    ("list", "namespaces", "--all-namespaces"),
    ("get", "customresourcedefinitions.apiextensions.k8s.io", "--all-namespaces"),
    ("patch", "customresourcedefinitions.apiextensions.k8s.io", "--all-namespaces"),
    ("list", "clusterkopfpeerings.kopf.dev", "--all-namespaces"),
]


def test_operator_identity_can_do_its_job_and_nothing_more(
    kubectl: Kubectl, operator_rbac: Path
) -> None:
    def check(args: tuple[str, ...]) -> bool:
        return can_i(kubectl, operator_rbac, *args)

    def allowed_now() -> None:  # RBAC reaches the authorizer through an informer: retry
        missing = [" ".join(a) for a in ALLOWED if not check(a)]
        assert not missing, f"the operator may not: {missing}"

    eventually(allowed_now, timeout=15)
    granted = [" ".join(a) for a in DENIED if check(a)]
    assert not granted, f"the operator may, but should not: {granted}"

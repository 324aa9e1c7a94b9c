"""A real etcd + kube-apiserver on loopback for integration tests, demos and benchmarks.

`with ControlPlane(audit_log=True) as cp:` starts both processes and yields once the API
server is ready; `cp.kubeconfig_admin` and `cp.kubeconfig_operator` are kubeconfig files for
a cluster admin and for the operator's ServiceAccount identity.

`with ExtensionsServer(cp) as ext:` adds a modern apiextensions-apiserver that compiles and
enforces the CRDs' CEL rules, which v1.20 does not (see extensions.py).
"""

from batchcompute_testbed.controlplane.cluster import (
    ADMIN_GROUPS,
    ADMIN_USERNAME,
    OPERATOR_GROUPS,
    OPERATOR_NAMESPACE,
    OPERATOR_SERVICE_ACCOUNT,
    OPERATOR_USERNAME,
    ControlPlane,
    ControlPlaneError,
    User,
    find_etcd,
    find_kube_apiserver,
    running,
)
from batchcompute_testbed.controlplane.extensions import (
    ApiextensionsUnavailable,
    CrdRefused,
    ExtensionsServer,
    find_apiextensions_apiserver,
)

__all__ = [
    "ADMIN_GROUPS",
    "ADMIN_USERNAME",
    "OPERATOR_GROUPS",
    "OPERATOR_NAMESPACE",
    "OPERATOR_SERVICE_ACCOUNT",
    "OPERATOR_USERNAME",
    "ApiextensionsUnavailable",
    "ControlPlane",
    "ControlPlaneError",
    "CrdRefused",
    "ExtensionsServer",
    "User",
    "find_apiextensions_apiserver",
    "find_etcd",
    "find_kube_apiserver",
    "running",
]

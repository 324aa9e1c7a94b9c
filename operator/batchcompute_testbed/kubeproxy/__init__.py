"""A fault-injecting HTTPS proxy in front of the kube-apiserver (see proxy.py).

`KubeProxy(server, ca_file, tls_dir).start()` listens on loopback; its `kubeconfig()` rewrites
a kubeconfig to go through it, and its methods inject faults at run time: slow or failing
requests by method and path, lost answers, stalled or cut watch streams, a paused API server.
"""

from batchcompute_testbed.kubeproxy.faults import (
    EVENT_POST,
    STATUS_PATCH,
    Action,
    Answer,
    Rule,
    server_timeout,
    too_many_requests,
)
from batchcompute_testbed.kubeproxy.proxy import Entry, KubeProxy

__all__ = [
    "EVENT_POST",
    "STATUS_PATCH",
    "Action",
    "Answer",
    "Entry",
    "KubeProxy",
    "Rule",
    "server_timeout",
    "too_many_requests",
]

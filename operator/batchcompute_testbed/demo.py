"""`make demo`: a Batch account attached and detached end to end, on this machine alone.

Starts a real kube-apiserver + etcd and the ARM emulator (seeded with the workspace and Batch
account the samples name), installs the CRD and RBAC from deploy/, runs the operator as its
ServiceAccount, applies deploy/samples/attach-by-account-name.yaml, and narrates.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from batchcompute_testbed.controlplane import ControlPlane
from batchcompute_testbed.stack import (
    REPO_ROOT,
    EmulatorProcess,
    install,
    kubectl,
    start_operator,
    stop_process,
)

SUBSCRIPTION = "00000000-0000-0000-0000-000000000001"
SEED = {
    "workspaces": [{"subscriptionId": SUBSCRIPTION, "resourceGroup": "ml-rg", "name": "ml-ws",
                    "location": "westeurope"}],
    "batchAccounts": [{"subscriptionId": SUBSCRIPTION, "resourceGroup": "batch-rg",
                       "name": "mybatchacct", "location": "westeurope"}],
}
SAMPLE = REPO_ROOT / "deploy/samples/attach-by-account-name.yaml"
NAMESPACE = "default"


def say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def watch(kubeconfig: Path, until: Any, timeout: float = 60) -> None:
    """`kubectl get bca -w`, in effect: print the table whenever a row changes."""
    last, header_shown = "", False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        table = kubectl(kubeconfig, "-n", NAMESPACE, "get", "bca", check=False).splitlines()
        header, rows = (table[0], "\n".join(table[1:])) if table else ("", "")
        # AGE changes every second; compare the rest so only real transitions print.
        key = "\n".join(line.rsplit(None, 1)[0] for line in rows.splitlines())
        if key != last:
            if header and not header_shown:
                print(f"    {header}", flush=True)
                header_shown = True
            for line in rows.splitlines() or ["(no BatchComputeAttachments left)"]:
                print(f"    {line}", flush=True)
            last = key
        if until(rows):
            return
        time.sleep(0.3)
    raise TimeoutError("the demo did not converge in time; see the operator log above")


def main() -> int:
    started = time.monotonic()
    sample = yaml.safe_load(SAMPLE.read_text())
    name = str(sample["metadata"]["name"])
    compute = str(sample["spec"].get("computeName") or name)
    with tempfile.TemporaryDirectory(prefix="bco-demo-") as tmp:
        work = Path(tmp)
        say("Starting a local Kubernetes control plane (etcd + kube-apiserver on loopback)")
        with ControlPlane() as plane:
            admin = plane.kubeconfig_admin
            print(f"    API server {plane.server}, ready in {plane.startup_seconds:.1f}s")
            say("Starting the Azure ML workspace API emulator (ARM on https://127.0.0.1)")
            emulator = EmulatorProcess(work / "emulator", ["--operation-seconds", "3",
                                                           "--latency-ms", "50"], SEED).start()
            operator = None
            try:
                print(f"    {emulator.arm_url}: workspace ml-ws (westeurope), Batch account "
                      "mybatchacct in batch-rg")
                say("Installing the CRD and the operator's RBAC from deploy/")
                install(admin)
                say("Running the operator (python -m batchcompute_operator) as its "
                    "ServiceAccount")
                log_file = work / "operator.log"
                operator = start_operator(plane.kubeconfig_operator, {
                    **emulator.operator_env(), "BCO_POLL_INTERVAL": "1",
                    "BCO_NAMESPACES": NAMESPACE}, log_file)
                say(f"kubectl apply -f {SAMPLE.relative_to(REPO_ROOT)}")
                print("    " + kubectl(admin, "-n", NAMESPACE, "apply", "-f", str(SAMPLE)).strip())
                say("kubectl get bca -w   (Attaching ... Succeeded / Ready)")
                watch(admin, lambda rows: "True" in rows.split())
                say(f"kubectl wait --for=condition=Ready bca/{name}")
                print("    " + kubectl(admin, "-n", NAMESPACE, "wait", "--for=condition=Ready",
                                      "--timeout=30s", f"bca/{name}").strip())
                say("The compute as the workspace API now holds it")
                show_compute(emulator, compute)
                say("Events on the resource")
                print(kubectl(admin, "-n", NAMESPACE, "get", "events", "--field-selector",
                              f"involvedObject.name={name}",
                              "-o", "custom-columns=TYPE:.type,REASON:.reason,MESSAGE:.message"))
                say(f"kubectl delete bca {name}   (detach; the Batch account itself stays)")
                kubectl(admin, "-n", NAMESPACE, "delete", "bca", name, "--wait=false")
                watch(admin, lambda rows: not rows)
                computes = emulator.admin("GET", "computes")
                print(f"    computes left in the workspace: {len(computes)}")
                summary(emulator)
            except Exception:
                if operator is not None:
                    print((work / "operator.log").read_text()[-5000:], file=sys.stderr)
                raise
            finally:
                stop_process(operator)
                emulator.stop()
    say(f"Done in {time.monotonic() - started:.0f}s; everything was stopped and removed.")
    print(NEXT_STEPS)
    return 0


def show_compute(emulator: EmulatorProcess, compute: str) -> None:
    token = emulator.admin("POST", "tokens", json={"expires_in": 300})["access_token"]
    path = (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/ml-rg/providers/"
            f"Microsoft.MachineLearningServices/workspaces/ml-ws/computes/{compute}")
    with httpx.Client(verify=emulator.tls(), timeout=30) as http:
        resp = http.get(f"{emulator.arm_url}{path}", params={"api-version": "2020-02-02"},
                        headers={"Authorization": f"Bearer {token}"})
    print("    GET " + path)
    print("\n".join("    " + line for line in json.dumps(resp.json(), indent=2).splitlines()))


def summary(emulator: EmulatorProcess) -> None:
    calls = [r for r in emulator.admin("GET", "requests") if r["kind"] != "identity"]
    by_method: dict[str, int] = {}
    for call in calls:
        by_method[call["method"]] = by_method.get(call["method"], 0) + 1
    counts = ", ".join(f"{n} {m}" for m, n in sorted(by_method.items()))
    print(f"    ARM calls made by the operator for one attach + one detach: {counts}")


NEXT_STEPS = """
Next: run it against a real cluster and Azure
  1. kubectl apply -k deploy/            # CRD, RBAC, the operator Deployment
  2. Give the operator an identity (README.md, "Install on a real cluster": workload
     identity, AzureML Compute Operator + Reader on the workspace, read and listKeys on
     the Batch account) and put its client id on the ServiceAccount.
  3. kubectl apply -f deploy/samples/attach-by-account-name.yaml  (edit ids first)
  Or run it locally against your current kubeconfig: make run
"""


if __name__ == "__main__":
    sys.exit(main())

"""Rehearse `make e2e`'s scenarios without Docker (`make e2e-rehearse`).

What the kind pod would run, run as host processes on the test bed: the rendering of
`hack/e2e.sh render` is applied (all but the Deployment) to a local kube-apiserver, the
emulator is started with the emulator container's arguments, and the operator with the
manager container's settings (the generated ConfigMap, its env, the test identity from the
Secret). Only ports and the emulator's directory differ: the pod's 8443 and
/var/run/arm-emulator become a free port and a temporary directory. The scenarios in
hack/e2e/ then run against that operator; the two that need the pod itself (the image that
runs, its metrics port) are skipped.

This checks the overlay's settings, the emulator's CA and the test identity together, and
the scenario module itself; it does not check the image, the pod spec or the kubelet's
container ordering, which only `make e2e` does.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
POD_DIR = "/var/run/arm-emulator"
POD_PORT = "8443"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_file(path: Path, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"{path.name} did not appear:\n{log.read_text(errors='replace')[-4000:]}")
        time.sleep(0.1)


def strip_cel(node: Any) -> Any:
    """The test bed's v1.20 API server does not know x-kubernetes-validations."""
    if isinstance(node, dict):
        return {k: strip_cel(v) for k, v in node.items() if k != "x-kubernetes-validations"}
    if isinstance(node, list):
        return [strip_cel(v) for v in node]
    return node


@contextmanager
def process(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def render() -> list[dict[str, Any]]:
    env = {**os.environ, "IMAGE": "rehearsal/operator:none", "EMULATOR_IMAGE": "rehearsal/emu:none"}
    out = subprocess.run(
        ["bash", str(REPO_ROOT / "hack" / "e2e.sh"), "render"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def main() -> int:
    python = sys.executable
    base_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "operator")}
    objects = render()
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    containers = {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}
    emulator, manager = containers["arm-emulator"], containers["manager"]
    (config,) = [o for o in objects if o["kind"] == "ConfigMap"]
    (secret,) = [o for o in objects if o["kind"] == "Secret"]
    secret_data = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}

    with tempfile.TemporaryDirectory(prefix="e2e-rehearsal-") as tmp:
        work = Path(tmp)
        port = str(free_port())

        def local(value: str) -> str:
            value = value.replace(POD_DIR, str(work / "pod")).replace(f":{POD_PORT}", f":{port}")
            return value.replace(f"--port={POD_PORT}", f"--port={port}")

        def pod_env(container: dict[str, Any]) -> dict[str, str]:
            """The container's env; fieldRef values (POD_ID) are the pod's, set by caller."""
            env = {}
            for entry in container.get("env", []):
                if "value" in entry:
                    env[entry["name"]] = local(str(entry["value"]))
                elif "secretKeyRef" in entry["valueFrom"]:
                    ref = entry["valueFrom"]["secretKeyRef"]
                    assert ref["name"] == secret["metadata"]["name"]
                    env[entry["name"]] = secret_data[ref["key"]]
            return env

        state = work / "controlplane"
        plane_log = work / "controlplane.log"
        plane_argv = [python, "-m", "batchcompute_testbed.controlplane", "up",
                      "--state-dir", str(state)]  # fmt: skip
        with process(plane_argv, base_env, plane_log) as plane:
            wait_for_file(state / "env.json", plane, plane_log, timeout=120)
            kubeconfig = json.loads((state / "env.json").read_text())["kubeconfig_admin"]
            rest = [strip_cel(o) for o in objects if o["kind"] != "Deployment"]
            subprocess.run(
                ["kubectl", "--kubeconfig", kubeconfig, "apply", "-f", "-"],
                input=yaml.safe_dump_all(rest),
                text=True,
                check=True,
                capture_output=True,
                timeout=120,
            )

            (work / "pod").mkdir()
            emulator_env = {**base_env, **pod_env(emulator)}
            emulator_args = [
                local(arg.replace("$(IDENTITY_HEADER)", emulator_env["IDENTITY_HEADER"]))
                for arg in emulator["args"]
            ]
            emulator_log = work / "emulator.log"
            emulator_argv = [python, "-m", "batchcompute_testbed.emulator", *emulator_args]
            with process(emulator_argv, emulator_env, emulator_log) as emu:
                wait_for_file(work / "pod" / "ready.json", emu, emulator_log, timeout=30)

                operator_env = {
                    k: v for k, v in base_env.items() if not k.startswith(("BCO_", "AZURE_"))
                }
                operator_env.update({k: local(v) for k, v in config["data"].items()})
                operator_env.update(pod_env(manager))
                operator_env.update(
                    KUBECONFIG=kubeconfig,
                    POD_ID="e2e-rehearsal",
                    BCO_HEALTH_PORT=str(free_port()),
                    BCO_METRICS_PORT=str(free_port()),
                )
                operator_log = work / "operator.log"
                operator_argv = [python, "-m", "batchcompute_operator"]
                with process(operator_argv, operator_env, operator_log) as operator:
                    time.sleep(3)
                    if operator.poll() is not None:
                        print(operator_log.read_text(errors="replace")[-4000:], file=sys.stderr)
                        return 1
                    scenarios = subprocess.run(
                        [python, "-m", "pytest", str(REPO_ROOT / "hack" / "e2e"), "-q",
                         "-p", "no:cacheprovider", "-rs"],
                        cwd=REPO_ROOT,
                        env={**base_env,
                             "BCO_KUBECONFIG": kubeconfig,
                             "BCO_E2E_ARM_URL": f"https://127.0.0.1:{port}",
                             "BCO_E2E_CA_FILE": str(work / "pod" / "tls" / "ca.pem")},
                        timeout=900,
                    )  # fmt: skip
                    if scenarios.returncode != 0:
                        print(operator_log.read_text(errors="replace")[-8000:], file=sys.stderr)
                    return scenarios.returncode


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# End-to-end test of the image on kind (`make e2e`), and the manifests it applies:
#
#   hack/e2e.sh render   print every object `run` applies, for IMAGE and EMULATOR_IMAGE
#                        (make test dry-runs this output on the test bed)
#   hack/e2e.sh run      on a machine with Docker and kind: create the cluster, build the
#                        operator image (IMAGE) and the emulator image (EMULATOR_IMAGE, the
#                        Dockerfile's `emulator` stage), load both, apply the rendering,
#                        wait for the Deployment, run the scenarios in hack/e2e/ against it,
#                        delete the cluster
#
# Variables (the Makefile passes them): IMAGE, EMULATOR_IMAGE, VERSION, KIND_CLUSTER, PYTHON.
# The operator under test is the Deployment only: no operator runs on the host.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

IMAGE=${IMAGE:?IMAGE names the operator image under test}
EMULATOR_IMAGE=${EMULATOR_IMAGE:?EMULATOR_IMAGE names the emulator image}
KIND_CLUSTER=${KIND_CLUSTER:-batchcompute-e2e}
PYTHON=${PYTHON:-.venv/bin/python}
NAMESPACE=batchcompute-system
DEPLOYMENT=batchcompute-operator
OPERATOR_IMAGE_NAME=ghcr.io/batchcompute-operator/batchcompute-operator
EMULATOR_IMAGE_NAME=arm-emulator

log() { printf '[e2e] %s\n' "$*" >&2; }

# An `images:` entry for kustomize: name, and newName plus newTag or digest from a reference
# such as registry:5000/team/image:1.2.3 or image@sha256:...
image_entry() {  # image_entry NAME REFERENCE
  local name=$1 ref=$2 repo_part tag="" digest=""
  repo_part=$ref
  case "$ref" in *@*) repo_part=${ref%@*}; digest=${ref#*@} ;; esac
  local last=${repo_part##*/}
  case "$last" in *:*) tag=${last##*:}; repo_part=${repo_part%:*} ;; esac
  [ -n "$tag$digest" ] || tag=latest  # as docker reads a reference without either
  printf '  - name: "%s"\n    newName: "%s"\n' "$name" "$repo_part"
  [ -n "$tag" ] && printf '    newTag: "%s"\n' "$tag"
  [ -n "$digest" ] && printf '    digest: "%s"\n' "$digest"
  return 0
}

render() {
  local dir overlay
  dir=$(mktemp -d)
  # kustomize takes a base by relative path only.
  overlay=$(realpath --relative-to="$dir" "$repo/deploy/overlays/e2e-kind")
  {
    printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n'
    printf 'resources:\n  - %s\nimages:\n' "$overlay"
    image_entry "$OPERATOR_IMAGE_NAME" "$IMAGE"
    image_entry "$EMULATOR_IMAGE_NAME" "$EMULATOR_IMAGE"
  } > "$dir/kustomization.yaml"
  local status=0
  kubectl kustomize "$dir" || status=$?
  rm -rf "$dir"
  return $status
}

free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

run() {
  for tool in docker kind kubectl; do
    command -v "$tool" >/dev/null || { log "$tool is needed"; exit 1; }
  done
  docker info >/dev/null 2>&1 || { log "no Docker engine answers (docker info)"; exit 1; }

  local work kubeconfig
  work=$(mktemp -d)
  kubeconfig="$work/kubeconfig"
  local pf_pid=""
  cleanup() {
    [ -n "$pf_pid" ] && kill "$pf_pid" 2>/dev/null || true
    if [ -z "${E2E_KEEP:-}" ]; then
      kind delete cluster --name "$KIND_CLUSTER" >/dev/null 2>&1 || true
      rm -rf "$work"
    else
      log "kept: kind cluster $KIND_CLUSTER, kubeconfig $kubeconfig"
    fi
  }
  trap cleanup EXIT

  log "kind cluster $KIND_CLUSTER"
  kind create cluster --name "$KIND_CLUSTER" --wait 120s
  kind get kubeconfig --name "$KIND_CLUSTER" > "$kubeconfig"
  local k=(kubectl --kubeconfig "$kubeconfig")

  log "building $IMAGE and $EMULATOR_IMAGE"
  docker build --build-arg "VERSION=${VERSION:?}" -t "$IMAGE" .
  docker build --build-arg "VERSION=$VERSION" --target emulator -t "$EMULATOR_IMAGE" .
  kind load docker-image "$IMAGE" "$EMULATOR_IMAGE" --name "$KIND_CLUSTER"

  log "deploying (deploy/overlays/e2e-kind with IMAGE=$IMAGE)"
  render > "$work/e2e.yaml"
  "${k[@]}" apply -f "$work/e2e.yaml"
  "${k[@]}" wait --for condition=Established --timeout=60s \
    crd/batchcomputeattachments.batchcompute.azureml.dev
  if ! "${k[@]}" -n "$NAMESPACE" rollout status "deployment/$DEPLOYMENT" --timeout=300s; then
    "${k[@]}" -n "$NAMESPACE" describe pods >&2 || true
    "${k[@]}" -n "$NAMESPACE" logs "deployment/$DEPLOYMENT" --all-containers --tail=200 >&2 || true
    exit 1
  fi

  # The emulator's admin API and the operator's metrics, through one port-forward.
  local arm_port metrics_port
  arm_port=$(free_port)
  metrics_port=$(free_port)
  "${k[@]}" -n "$NAMESPACE" port-forward "deployment/$DEPLOYMENT" \
    "$arm_port:8443" "$metrics_port:8081" > "$work/port-forward.log" 2>&1 &
  pf_pid=$!
  "${k[@]}" -n "$NAMESPACE" exec "deployment/$DEPLOYMENT" -c arm-emulator -- \
    cat /var/run/arm-emulator/tls/ca.pem > "$work/emulator-ca.pem"
  for _ in $(seq 50); do
    grep -q "Forwarding from" "$work/port-forward.log" 2>/dev/null && break
    sleep 0.2
  done

  log "scenarios against the Deployment"
  local status=0
  BCO_KUBECONFIG="$kubeconfig" \
  BCO_E2E_IMAGE="$IMAGE" \
  BCO_E2E_ARM_URL="https://127.0.0.1:$arm_port" \
  BCO_E2E_CA_FILE="$work/emulator-ca.pem" \
  BCO_E2E_METRICS_URL="http://127.0.0.1:$metrics_port/metrics" \
    "$PYTHON" -m pytest hack/e2e -q -p no:cacheprovider || status=$?
  if [ "$status" -ne 0 ]; then
    "${k[@]}" -n "$NAMESPACE" logs "deployment/$DEPLOYMENT" --all-containers --tail=300 >&2 || true
  fi
  return $status
}

case "${1:-}" in
  render) render ;;
  run) run ;;
  *) echo "usage: hack/e2e.sh render|run" >&2; exit 2 ;;
esac

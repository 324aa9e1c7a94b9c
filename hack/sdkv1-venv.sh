#!/usr/bin/env bash
# Azure ML SDK v1 (azureml-core) in a virtualenv of its own, for the interop tests.
#
# azureml-core pins an old dependency set that must not mix with the project's, and it supports
# Python 3.8-3.11 only, so it gets its own interpreter and virtualenv. They are built from the
# lock in tests/interop/sdkv1-requirements.txt (exact versions, sha256 hashes, wheels only) and
# cached outside the repo, keyed by the lock and the interpreter, so only the first run pays.
#
# Prints the path of the virtualenv's python on its last line of stdout.
#
#   hack/sdkv1-venv.sh           create (once) and print the interpreter
#   hack/sdkv1-venv.sh --relock  resolve azureml-core==$AZUREML_CORE_VERSION afresh, rewrite the lock
set -euo pipefail

AZUREML_CORE_VERSION="${AZUREML_CORE_VERSION:-1.61.0.post4}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCK="$ROOT/tests/interop/sdkv1-requirements.txt"
CACHE_DIR="${BCO_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/batchcompute-operator}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

log() { printf '[sdkv1] %s\n' "$*" >&2; }

# An interpreter azureml-core supports: $SDKV1_PYTHON, else the newest pyenv 3.11, else
# python3.11 on PATH, else python3 if it is 3.8-3.11.
find_python() {
  if [ -n "${SDKV1_PYTHON:-}" ]; then
    printf '%s\n' "$SDKV1_PYTHON"
    return
  fi
  local candidate
  candidate="$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.11.*/bin/python3.11 2>/dev/null \
    | sort -V | tail -n 1 || true)"
  if [ -n "$candidate" ]; then
    printf '%s\n' "$candidate"
    return
  fi
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 \
      && "$candidate" -c 'import sys; sys.exit(not (3, 8) <= sys.version_info[:2] <= (3, 11))'; then
      command -v "$candidate"
      return
    fi
  done
  log "no Python 3.8-3.11 found for azureml-core (set SDKV1_PYTHON to one)"
  exit 1
}

relock() {
  local python="$1"
  RELOCK_DIR="$(mktemp -d)"
  trap 'rm -rf "$RELOCK_DIR"' EXIT
  local work="$RELOCK_DIR"
  log "resolving azureml-core==$AZUREML_CORE_VERSION with $("$python" --version)"
  "$python" -m venv "$work/venv"
  "$work/venv/bin/python" -m pip install -q "azureml-core==$AZUREML_CORE_VERSION" >&2
  "$work/venv/bin/python" -m pip freeze --all --exclude pip --exclude setuptools --exclude wheel \
    > "$work/pins.txt"
  "$work/venv/bin/python" -m pip download -q --no-deps --only-binary=:all: -d "$work/files" \
    -r "$work/pins.txt" >&2
  "$python" - "$work/pins.txt" "$work/files" "$LOCK" "$AZUREML_CORE_VERSION" <<'EOF'
import hashlib
import pathlib
import platform
import re
import sys

pins_file, files_dir, lock_file, version = sys.argv[1:]
def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
files: dict[str, list[pathlib.Path]] = {}
for path in sorted(pathlib.Path(files_dir).iterdir()):
    files.setdefault(norm(path.name.split("-")[0]), []).append(path)
lines = [
    f"# azureml-core=={version} and everything it needs, as pip resolved them on CPython "
    f"{platform.python_version()} ({platform.machine()} Linux).",
    "# Exact versions with the sha256 of each wheel: hack/sdkv1-venv.sh installs with",
    "# --require-hashes. Regenerate with hack/sdkv1-venv.sh --relock.",
]
for pin in sorted(pathlib.Path(pins_file).read_text().split(), key=lambda p: norm(p.split("==")[0])):
    name, exact = pin.split("==")
    hashes = " ".join(
        f"--hash=sha256:{hashlib.sha256(p.read_bytes()).hexdigest()}" for p in files[norm(name)]
    )
    lines.append(f"{norm(name)}=={exact} \\\n    {hashes}")
pathlib.Path(lock_file).write_text("\n".join(lines) + "\n")
EOF
  log "wrote $LOCK"
}

PYTHON="$(find_python)"
if [ "${1:-}" = "--relock" ]; then
  relock "$PYTHON"
  exit 0
fi

# The key covers the lock and the interpreter (version, build, machine).
KEY="$({ cat "$LOCK"; "$PYTHON" -c 'import platform, sys; print(sys.version, platform.machine())'; } \
  | sha256sum | cut -c1-12)"
VENV="$CACHE_DIR/sdkv1-$KEY"
mkdir -p "$CACHE_DIR"
exec 9>"$VENV.lock"
flock 9  # one builder at a time; the others then find it complete

if [ -f "$VENV/.complete" ]; then
  log "azureml-core $AZUREML_CORE_VERSION cached at $VENV"
else
  log "creating $VENV with $("$PYTHON" --version) (first run only)"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --no-compile --no-deps --require-hashes --only-binary=:all: \
    -r "$LOCK" >&2
  "$VENV/bin/python" -m pip check >&2
  "$VENV/bin/python" -c "import importlib.metadata as m, azureml.core.compute
v = m.version('azureml-core'); assert v == '$AZUREML_CORE_VERSION', v"
  touch "$VENV/.complete"
fi
printf '%s\n' "$VENV/bin/python"

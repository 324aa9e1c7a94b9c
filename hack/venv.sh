#!/usr/bin/env bash
# Creates (or brings up to date) a development virtualenv from the hashed lock:
#   hack/venv.sh PYTHON VENV_DIR
#
# Every dependency comes from requirements-dev.lock with --require-hashes; the operator itself
# is then installed editable without dependencies and without build isolation, so its build
# backend is the locked setuptools, not whatever an isolated build would fetch. A stamp named
# after the hash of pyproject.toml and the locks skips the work when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${1:?usage: hack/venv.sh PYTHON VENV_DIR}
venv=${2:?usage: hack/venv.sh PYTHON VENV_DIR}
stamp="$venv/.installed-$(cat pyproject.toml requirements.lock requirements-dev.lock | sha1sum | cut -c1-12)"
[ -e "$stamp" ] && exit 0

if ! command -v "$python" >/dev/null 2>&1; then
  if [ "$python" = python3 ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq python3 python3-venv
  else
    echo "hack/venv.sh: $python not found" >&2
    exit 1
  fi
fi
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --require-hashes -r requirements-dev.lock
"$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
rm -f "$venv"/.installed-*
touch "$stamp"

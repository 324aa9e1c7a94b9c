#!/usr/bin/env bash
# Regenerates the hashed locks from pyproject.toml (`make lock`):
#
#   requirements.lock      what the image installs: the operator's runtime dependencies and
#                          the build backend ([build-system] requires), nothing else
#   requirements-dev.lock  what `make venv` installs: the same versions, plus the test bed's
#                          and the development dependencies, and pip itself
#
# Both are resolved once for every supported Python (uv's universal resolution, from 3.11
# up), so the virtualenvs of `make test-pythons` install the same pins, and every pin
# carries the hashes of all its published files (`pip install --require-hashes`).
# The development lock is constrained by the runtime lock: a package in both has one version.
#
# uv is pinned (UV_VERSION) and installed into a virtualenv of its own (.venv/lock-tools), so
# that a pyproject.toml the old lock no longer satisfies can still be locked.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION="${UV_VERSION:?set by the Makefile}"
PYTHON="${PYTHON:-python3}"
TOOLS="${LOCK_TOOLS_VENV:-.venv/lock-tools}"
MIN_PYTHON=3.11

if [ "$("$TOOLS/bin/uv" --version 2>/dev/null | awk '{print $2}')" != "$UV_VERSION" ]; then
  rm -rf "$TOOLS"
  "$PYTHON" -m venv "$TOOLS"
  "$TOOLS/bin/python" -m pip install -q "uv==$UV_VERSION"
fi
uv="$TOOLS/bin/uv"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The build backend, as pyproject.toml pins it; and pip for the development virtualenvs.
"$TOOLS/bin/python" - pyproject.toml > "$work/build-system-requires.in" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print("\n".join(tomllib.load(f)["build-system"]["requires"]))
EOF
echo 'pip>=24' > "$work/venv-tools.in"

compile() {  # compile OUTPUT INPUT...
  local out=$1; shift
  # Relative input paths in the header: run from the repository root, name temporary
  # inputs by what they are.
  UV_CUSTOM_COMPILE_COMMAND="make lock" "$uv" pip compile --quiet \
    --universal --python-version "$MIN_PYTHON" \
    --generate-hashes --no-strip-extras \
    --index-url https://pypi.org/simple \
    --output-file "$out" "$@"
}

compile requirements.lock pyproject.toml "$work/build-system-requires.in"
compile requirements-dev.lock pyproject.toml "$work/build-system-requires.in" "$work/venv-tools.in" \
  --extra dev --extra testbed --constraint requirements.lock

# The temporary inputs appear in the "via" comments: drop their random directory.
sed -i -e "s|$work/||g" requirements.lock requirements-dev.lock
echo "locked with uv $UV_VERSION: requirements.lock, requirements-dev.lock" >&2

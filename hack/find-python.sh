#!/usr/bin/env bash
# Prints the path of a Python interpreter of the given minor version:
#   hack/find-python.sh 3.12
# Looks in pyenv's versions (newest patch release first), then on PATH; the candidate must
# really report that version (a pyenv shim for a version that is not selected does not).
set -euo pipefail

want=${1:?usage: hack/find-python.sh MAJOR.MINOR}
pyenv_root=${PYENV_ROOT:-$HOME/.pyenv}

candidates=()
while IFS= read -r dir; do
  candidates+=("$dir/bin/python$want")
done < <(ls -d "$pyenv_root/versions/$want".* 2>/dev/null | sort -rV)
for name in "python$want" "/usr/bin/python$want" "/usr/local/bin/python$want"; do
  path=$(command -v "$name" 2>/dev/null) && candidates+=("$path")
done

for python in "${candidates[@]}"; do
  [ -x "$python" ] || continue
  got=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || continue
  if [ "$got" = "$want" ]; then
    echo "$python"
    exit 0
  fi
done
echo "hack/find-python.sh: no Python $want found (pyenv versions under $pyenv_root, or PATH);" \
  "install it, e.g. 'pyenv install $want', or narrow PYTHON_VERSIONS" >&2
exit 1

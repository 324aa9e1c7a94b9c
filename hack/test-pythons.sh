#!/usr/bin/env bash
# The unit suite on every supported Python, two at a time:
#   hack/test-pythons.sh VENV "3.11 3.12 3.13" [pytest args...]
# VENV serves its own Python; any other version gets VENV/pythons/3.X from hack/venv.sh.
# The virtualenvs are made one after another (they download), the suites then run side by
# side, each with its own log, printed whole when it ends; exit 1 if any of them failed.
set -euo pipefail

venv=${1:?usage: hack/test-pythons.sh VENV "VERSIONS" [pytest args...]}
versions=${2:?usage: hack/test-pythons.sh VENV "VERSIONS" [pytest args...]}
shift 2
here=$(cd "$(dirname "$0")" && pwd)
own=$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

envs=()
for v in $versions; do
  if [ "$v" = "$own" ]; then
    envs+=("$v=$venv")
  else
    python=$(bash "$here/find-python.sh" "$v")
    bash "$here/venv.sh" "$python" "$venv/pythons/$v"
    envs+=("$v=$venv/pythons/$v")
  fi
done

run() {  # version env
  local start=$SECONDS status=0
  "$2/bin/pytest" tests/unit -q -p no:cacheprovider "${@:3}" >"$logs/$1.log" 2>&1 || status=$?
  { echo "== unit suite on Python $1 ($2): exit $status after $((SECONDS - start)) s"
    cat "$logs/$1.log"; } >"$logs/$1.out"
  return $status
}

failed=0
declare -A running=()  # pid -> version
finish_one() {  # wait for whichever suite ends first and print its log
  local pid status=0
  wait -n -p pid "${!running[@]}" || status=$?
  [ "$status" -eq 0 ] || failed=1
  cat "$logs/${running[$pid]}.out"
  unset "running[$pid]"
}
for pair in "${envs[@]}"; do
  [ ${#running[@]} -lt 2 ] || finish_one  # two cores: at most two suites at once
  run "${pair%%=*}" "${pair#*=}" "$@" &
  running[$!]=${pair%%=*}
done
while [ ${#running[@]} -gt 0 ]; do
  finish_one
done
exit $failed

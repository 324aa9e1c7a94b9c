#!/usr/bin/env bash
# Builds a modern apiextensions-apiserver (the CustomResourceDefinition half of kube-apiserver)
# once and caches it, so the test bed can check the CRD's CEL rules on a current API server.
#
# No modern kube-apiserver is packaged for the machines we build on (Debian strips cmd/ and
# pkg/ from its kubernetes source package), but Debian sid ships k8s.io/apiextensions-apiserver
# as golang-k8s-apiextensions-apiserver-dev, with every dependency as a Go source package.
# We download that closure and a Go toolchain from sid as .debs into our own apt directories
# (the system's apt state is never touched), unpack them with dpkg-deb -x (no install), and
# `go build` the server's main package in GOPATH mode. Nothing is patched.
#
# The versions are pinned in hack/apiextensions-apiserver.debs. sid keeps only its newest
# versions, so once it has moved on from a pin the current closure is built instead (and the
# log says so); `--lock` prints the current closure in the pin file's format to refresh it.
# The cache is keyed by the exact .deb versions built (and BUILD_REVISION), under
# ~/.cache/batchcompute-operator/apiextensions-apiserver/. A cold build takes ~6 min and
# ~1.2 GB RSS on 2 cores (6-10 min on a busy machine), a 76 MB binary, and ~4 GB of scratch
# space that is removed afterwards. Two clean builds give the same sha256.
#
# On success, prints the binary's path on the last line of stdout. On failure, prints one line
# "apiextensions-apiserver unavailable: <reason>" on stderr and exits 1; a failure is
# remembered for FAILURE_TTL seconds (BCO_APIEXTENSIONS_RETRY=1 tries again at once), so a
# broken sid costs one attempt, not one per test run.
set -euo pipefail
export LC_ALL=C

# Bump to rebuild every cached binary (a change to how it is built, not to what from).
BUILD_REVISION=1
FAILURE_TTL=$((6 * 3600))
SUITE="${BCO_APIEXTENSIONS_SUITE:-sid}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PINS="$HERE/apiextensions-apiserver.debs"
CACHE_DIR="${BCO_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/batchcompute-operator}"
ROOT="$CACHE_DIR/apiextensions-apiserver"
WORK="$CACHE_DIR/apiextensions-apiserver-build"
# The packages the build needs from the closure: Go sources, and one Go toolchain.
WANTED='^(golang-.+-dev|golang-1\.[0-9]+-(go|src))$'

# The only progress line is the one before the long build: a failure is one line.
log() { printf '[apiextensions] %s\n' "$*" >&2; }
stage="starting"
mode=build
fail() {
  local line="apiextensions-apiserver unavailable: $*"
  printf '%s\n' "$line" >&2
  if [ -n "${want_key:-}" ] && [ "$mode" = build ]; then
    printf '%s\n' "$line" > "$ROOT/failed-$want_key"
  fi
  exit 1
}
on_error() { fail "$stage failed (log: $ROOT/build.log)"; }

sha12() { sha256sum | cut -c1-12; }

mode=build
case "${1:-}" in
  --lock) mode=lock ;;
  "") ;;
  *) echo "usage: $0 [--lock]" >&2; exit 2 ;;
esac

mkdir -p "$ROOT"
exec 9>"$ROOT/.lock"
flock 9

pins=""
[ -f "$PINS" ] && pins="$(grep -vE '^\s*(#|$)' "$PINS" | sort)"
# What to look for in the cache without asking the network: the pinned set.
want_key="$(printf '%s\nrevision %s\nsuite %s\n' "$pins" "$BUILD_REVISION" "$SUITE" | sha12)"

if [ "$mode" = build ]; then
  for candidate in "$ROOT/$want_key" "$(cat "$ROOT/resolved-$want_key" 2>/dev/null || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate/apiextensions-apiserver" ]; then
      echo "$candidate/apiextensions-apiserver"
      exit 0
    fi
  done
  failed="$ROOT/failed-$want_key"
  if [ -f "$failed" ] && [ -z "${BCO_APIEXTENSIONS_RETRY:-}" ] \
      && [ $(( $(date +%s) - $(stat -c %Y "$failed") )) -lt "$FAILURE_TTL" ]; then
    cat "$failed" >&2
    exit 1
  fi
fi

trap on_error ERR
rm -rf "$WORK"
mkdir -p "$WORK/apt/lists/partial" "$WORK/apt/parts" "$WORK/apt/cache" "$WORK/debs" "$WORK/root"
: > "$ROOT/build.log"

# A sid entry for the mirror the system's sources already name, in our own lists directory.
# An empty status file makes apt resolve the whole closure, as for an empty system.
mirror=$(grep -hoE '^(URIs:|deb) *https?://[^ ]+' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
  | grep -v security | head -n1 | sed -E "s/^(URIs:|deb) *//" || true)
mirror="${BCO_APIEXTENSIONS_MIRROR:-${mirror:-http://deb.debian.org/debian}}"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
printf 'deb [signed-by=%s] %s %s main\n' "$keyring" "$mirror" "$SUITE" > "$WORK/apt/parts/sid.list"
aptopts=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$WORK/apt/parts"
         -o "Dir::State::Lists=$WORK/apt/lists" -o "Dir::Cache=$WORK/apt/cache"
         -o "Dir::Cache::Archives=$WORK/debs" -o "Dir::State::status=/dev/null"
         -o "APT::Sandbox::User=root" -o "APT::Install-Recommends=false"
         -o "APT::Update::Error-Mode=any" -q)

stage="fetching Debian $SUITE's package lists from $mirror"
apt-get "${aptopts[@]}" update >> "$ROOT/build.log" 2>&1

closure() {  # "name version" lines of what `apt-get install $*` would bring, filtered
  apt-get "${aptopts[@]}" -s install "$@" 2>>"$ROOT/build.log" \
    | awk '$1 == "Inst" { v = $3; gsub(/[()]/, "", v); print $2, v }' \
    | awk -v re="$WANTED" '$1 ~ re' | sort
}

stage="resolving golang-k8s-apiextensions-apiserver-dev in Debian $SUITE"
if [ "$mode" = lock ]; then
  echo "# The Debian $SUITE packages hack/build-apiextensions-apiserver.sh builds from (name version)."
  echo "# Refresh: hack/build-apiextensions-apiserver.sh --lock > hack/apiextensions-apiserver.debs"
  closure golang-k8s-apiextensions-apiserver-dev
  rm -rf "$WORK"
  exit 0
fi
if [ -n "$pins" ] && closure $(awk '{print $1 "=" $2}' <<< "$pins") > "$WORK/pinned" \
    && [ -s "$WORK/pinned" ]; then
  manifest="$pins"
else
  manifest="$(closure golang-k8s-apiextensions-apiserver-dev)"
  [ -n "$manifest" ] || fail "Debian $SUITE has no golang-k8s-apiextensions-apiserver-dev"
  changed=$(comm -13 <(printf '%s\n' "$pins") <(printf '%s\n' "$manifest") | wc -l)
  note="; Debian $SUITE has moved on from $changed pinned versions, so its current ones"
fi
key="$(printf '%s\nrevision %s\nsuite %s\n' "$manifest" "$BUILD_REVISION" "$SUITE" | sha12)"
if [ -x "$ROOT/$key/apiextensions-apiserver" ]; then
  [ "$key" = "$want_key" ] || echo "$ROOT/$key" > "$ROOT/resolved-$want_key"
  rm -rf "$WORK"
  echo "$ROOT/$key/apiextensions-apiserver"
  exit 0
fi
version=$(awk '$1 == "golang-k8s-apiextensions-apiserver-dev" {print $2}' <<< "$manifest")
go_pkg=$(awk '$1 ~ /^golang-1\.[0-9]+-go$/ {print $1; exit}' <<< "$manifest")
[ -n "$go_pkg" ] || fail "no golang-1.NN-go in the closure of golang-k8s-apiextensions-apiserver-dev"
upstream="${version%%-*}"           # 0.36.4-1 -> 0.36.4, the staging tag of Kubernetes v1.36.4
minor="${upstream#0.}"; minor="${minor%%.*}"
kube_version="v1.${upstream#0.}"

stage="downloading $(wc -l <<< "$manifest") packages from Debian $SUITE"
(cd "$WORK/debs" && apt-get "${aptopts[@]}" download $(awk '{print $1 "=" $2}' <<< "$manifest") \
  >> "$ROOT/build.log" 2>&1)

stage="unpacking the packages"
for deb in "$WORK"/debs/*.deb; do dpkg-deb -x "$deb" "$WORK/root"; done

stage="go build of k8s.io/apiextensions-apiserver $version with $go_pkg"
log "building apiextensions-apiserver $kube_version from Debian $SUITE with $go_pkg${note:-} (once, ~6-10 min)"
go_version="${go_pkg#golang-}"
goroot="$WORK/root/usr/lib/go-${go_version%-go}"
export GOROOT="$goroot" GOPATH="$WORK/root/usr/share/gocode" GO111MODULE=off CGO_ENABLED=0 \
  GOFLAGS=-buildvcs=false GOCACHE="$WORK/gocache" GOTOOLCHAIN=local GOPROXY=off GOTELEMETRY=off \
  GOENV=off
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
(cd "$GOPATH/src/k8s.io/apiextensions-apiserver" \
  && "$goroot/bin/go" build -p 2 -trimpath -ldflags "$ldflags" -o "$WORK/apiextensions-apiserver" . \
  >> "$ROOT/build.log" 2>&1)

stage="storing the build"
mkdir -p "$ROOT/$key"
printf '%s\n' "$manifest" > "$ROOT/$key/debs.txt"
cp "$ROOT/build.log" "$ROOT/$key/build.log"
mv "$WORK/apiextensions-apiserver" "$ROOT/$key/apiextensions-apiserver.tmp"
mv "$ROOT/$key/apiextensions-apiserver.tmp" "$ROOT/$key/apiextensions-apiserver"
[ "$key" = "$want_key" ] || echo "$ROOT/$key" > "$ROOT/resolved-$want_key"
rm -f "$ROOT/failed-$want_key"
rm -rf "$WORK"
log "built $ROOT/$key/apiextensions-apiserver"
echo "$ROOT/$key/apiextensions-apiserver"

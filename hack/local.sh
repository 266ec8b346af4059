#!/usr/bin/env bash
# The README's local-mode command: set-up, then the API emulator + the operator for this machine.
# Its kubeconfig is written to .local/kubeconfig (use: KUBECONFIG=.local/kubeconfig .venv/bin/kubectl get lvm).
# Extra arguments go to `libvirt-operator dev` (see `.venv/bin/libvirt-operator dev --help`).
#
# hack/local.sh --real-cluster [RUN FLAGS]: the same walk-through on the real control plane of
# hack/cluster.sh instead (built once per machine): the CRD applied, this node registered, and
# `libvirt-operator run` for it; kubeconfig .local/cluster/kubeconfig (`eval "$(hack/cluster.sh env)"`).
set -euo pipefail
cd "$(dirname "$0")/.."

bash hack/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

if [ "${1:-}" != --real-cluster ]; then
    exec .venv/bin/libvirt-operator dev --kubeconfig ./.local/kubeconfig "$@"
fi
shift

node="${NODE_NAME:-dev-node}"
args=("$@")
for i in "${!args[@]}"; do
    case "${args[$i]}" in
        --node-name=*) node="${args[$i]#--node-name=}" ;;
        --node-name) node="${args[$((i + 1))]:-$node}" ;;
    esac
done

bash hack/cluster.sh up
kubeconfig="$PWD/.local/cluster/kubeconfig"
kubectl --kubeconfig "$kubeconfig" apply --server-side --force-conflicts -f deploy/crds/ >/dev/null
kubectl --kubeconfig "$kubeconfig" wait --for=condition=Established --timeout=60s \
    crd/virtualmachines.virt.libvirt-operator.dev >/dev/null
# The Node a kubelet would register (local mode's own manifest), created once.
.venv/bin/python -c 'import sys; from pathlib import Path; from libvirt_operator.local import register_node
register_node(Path(sys.argv[1]), sys.argv[2])' "$kubeconfig" "$node"
state="${LVO_LOCAL_STATE:-/var/lib/libvirt-operator/real-cluster}/$node"
mkdir -p "$state/images" "$state/disks"
echo "local mode on the real control plane: node $node; images $state/images, disks $state/disks"
echo "in another terminal: export KUBECONFIG=$kubeconfig"
exec .venv/bin/libvirt-operator run --kubeconfig "$kubeconfig" --node-name "$node" \
    --image-dir "$state/images" --storage-dir "$state/disks" "$@"

#!/usr/bin/env bash
# The README's local-mode command: set-up, then the API emulator + the operator for this machine.
# Its kubeconfig is written to .local/kubeconfig (use: KUBECONFIG=.local/kubeconfig .venv/bin/kubectl get lvm).
# Extra arguments go to `libvirt-operator dev` (see `.venv/bin/libvirt-operator dev --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

bash hack/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/libvirt-operator dev --kubeconfig ./.local/kubeconfig "$@"

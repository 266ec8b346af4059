#!/usr/bin/env bash
# A real single-node Kubernetes control plane on 127.0.0.1, built from upstream Go modules.
#
#   hack/cluster.sh up     build once per machine (cached by version), start etcd, kube-apiserver,
#                          kube-controller-manager and kube-scheduler, wait for /readyz, then a node:
#                          containerd + a kubelet (node "$LVO_NODE_NAME", default lvo-node) until Ready;
#                          idempotent, seconds when running. LVO_CLUSTER_NODE=0: no node.
#   hack/cluster.sh down   stop every process `up` started, leave none behind
#   hack/cluster.sh env    print `export KUBECONFIG=...` (eval "$(hack/cluster.sh env)")
#   hack/cluster.sh build  only build (or find in the cache) the binaries
#   hack/cluster.sh status one line per component
#   hack/cluster.sh stop C stop one component (tests take the API server offline; `up` starts it again)
#
# The versions are pinned by hack/k8s/go.mod (k8s.io/kubernetes and every staging module at the matching
# release). etcd is built from the etcd server module that this kubernetes release itself requires (3.6):
# Debian's etcd-server 3.4.23 predates the watch progress-notify fix (3.4.31), so kube-apiserver 1.34
# would turn off consistent reads from its watch cache on it, and the tests would not see what a real
# cluster serves.
#
# State (PKI, etcd data, logs, pid files, kubeconfigs) lives in .local/cluster/ of the checkout; the
# binaries in $LVO_CACHE_DIR (default /var/cache/libvirt-operator), outside the checkout.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KUBE_VERSION=v1.34.5
GO_MOD_DIR="$ROOT/hack/k8s"
STATE="${LVO_CLUSTER_DIR:-$ROOT/.local/cluster}"
PKI="$STATE/pki"
LOGS="$STATE/logs"
RUN="$STATE/run"
APISERVER_PORT="${LVO_APISERVER_PORT:-16443}"
ETCD_CLIENT_PORT="${LVO_ETCD_PORT:-23790}"
ETCD_PEER_PORT=$((ETCD_CLIENT_PORT + 10))
SERVICE_CIDR=10.96.0.0/24  # never routed: nothing here listens on it, no test sends to it
KUBECONFIG_ADMIN="$STATE/kubeconfig"
READY_TIMEOUT_S="${LVO_CLUSTER_TIMEOUT:-120}"

# The cache key is the version plus a hash of the pinning files: any change to what is built rebuilds.
CACHE_ROOT="${LVO_CACHE_DIR:-/var/cache/libvirt-operator}"
BIN="$CACHE_ROOT/k8s-$KUBE_VERSION-$(cat "$GO_MOD_DIR/go.mod" "$GO_MOD_DIR/go.sum" "$GO_MOD_DIR/etcd/main.go" | sha256sum | cut -c1-12)/bin"
NODE_NAME="${LVO_NODE_NAME:-lvo-node}"
KUBELET_PORT="${LVO_KUBELET_PORT:-10250}"  # a second cluster on one machine needs other kubelet ports
WITH_NODE="${LVO_CLUSTER_NODE:-1}"
# containerd's runtime directory is per state directory: `down` of one cluster never touches another's node.
CONTAINERD_RUN="/run/lvo-containerd-$(echo "$STATE" | sha256sum | cut -c1-8)"
CONTAINERD_SOCK="$CONTAINERD_RUN/containerd.sock"
PAUSE_IMAGE=localhost/lvo-pause:1
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler)
NODE_COMPONENTS=(containerd kubelet)

say() { echo "cluster: $*" >&2; }

fail() {  # fail STEP LOG
    say "$1 failed; last lines of $2:"
    tail -n 40 "$2" >&2 2>/dev/null || true
    exit 1
}

# --- build ------------------------------------------------------------------------------------------

built() {
    local c
    for c in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet; do
        [ -x "$BIN/$c" ] || return 1
    done
}

build() {
    built && return 0
    # Debian 12's golang-go (1.19) is too old: kubernetes 1.34 needs Go >= 1.24 (the machines have one).
    command -v go >/dev/null || { say "go is not installed (Go >= 1.24 builds the control plane)"; exit 1; }
    mkdir -p "$BIN.partial" "$LOGS"
    local log="$LOGS/build.log" started=$SECONDS
    say "building kubernetes $KUBE_VERSION and etcd into $BIN (once per machine; 10-25 min on 2 cores)"
    local v=${KUBE_VERSION#v} ldflags
    ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION"
    ldflags+=" -X k8s.io/component-base/version.gitMajor=${v%%.*}"
    ldflags+=" -X k8s.io/component-base/version.gitMinor=$(echo "$v" | cut -d. -f2)"
    ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
    ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION"
    if ! (cd "$GO_MOD_DIR" && GOFLAGS=-mod=readonly CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" \
            -o "$BIN.partial/" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
            k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet ./etcd) >"$log" 2>&1; then
        fail "go build" "$log"
    fi
    rm -rf "$BIN" && mv "$BIN.partial" "$BIN"  # a half build never counts as built
    say "built in $((SECONDS - started)) s"
}

# --- PKI --------------------------------------------------------------------------------------------

openssl_quiet() { openssl "$@" 2>>"$LOGS/pki.log" >/dev/null; }

# cert NAME CN [ORG] [SERVER_SANS]: a key and a certificate signed by the cluster CA.
cert() {
    local name=$1 cn=$2 org=${3:-} sans=${4:-} subj ext="$PKI/$1.ext"
    [ -f "$PKI/$name.crt" ] && return 0
    subj="/CN=$cn"
    [ -z "$org" ] || subj="/O=$org$subj"
    openssl_quiet genrsa -out "$PKI/$name.key" 2048
    openssl_quiet req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr"
    {
        echo "basicConstraints=CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        if [ -n "$sans" ]; then echo "extendedKeyUsage=serverAuth,clientAuth"; echo "subjectAltName=$sans"
        else echo "extendedKeyUsage=clientAuth"; fi
    } >"$ext"
    openssl_quiet x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
        -days 3650 -sha256 -extfile "$ext" -out "$PKI/$name.crt"
    rm -f "$PKI/$name.csr" "$ext"
}

pki() {
    mkdir -p "$PKI" "$LOGS"
    chmod 700 "$PKI"
    if [ ! -f "$PKI/ca.crt" ]; then
        openssl_quiet genrsa -out "$PKI/ca.key" 2048
        openssl_quiet req -x509 -new -key "$PKI/ca.key" -subj "/CN=libvirt-operator-dev-ca" -days 3650 \
            -sha256 -out "$PKI/ca.crt"
    fi
    cert apiserver kube-apiserver "" \
        "IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:10.96.0.1"
    cert admin kubernetes-admin system:masters
    cert controller-manager system:kube-controller-manager
    cert scheduler system:kube-scheduler
    cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
    cert "kubelet-$NODE_NAME" "system:node:$NODE_NAME" system:nodes
    cert "kubelet-serving-$NODE_NAME" "$NODE_NAME" "" "IP:127.0.0.1,DNS:$NODE_NAME"
    if [ ! -f "$PKI/sa.key" ]; then
        openssl_quiet genrsa -out "$PKI/sa.key" 2048
        openssl_quiet rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub"
    fi
}

# kubeconfig FILE CERT_NAME: a client-certificate kubeconfig for the local API server.
kubeconfig() {
    local file=$1 name=$2 tmp
    tmp="$(mktemp "$file.XXXX")"
    cat >"$tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: $name
  user:
    client-certificate: $PKI/$name.crt
    client-key: $PKI/$name.key
contexts:
- name: local
  context: {cluster: local, user: $name}
current-context: local
EOF
    chmod 600 "$tmp"
    mv "$tmp" "$file"
}

audit_policy() {
    # Metadata (verb, resource, user) for every request but the control plane's own chatter: the tests
    # count an operator's API requests per verb and resource from this log, by its user name.
    cat >"$STATE/audit-policy.yaml" <<'EOF'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  users: [system:kube-controller-manager, system:kube-scheduler, system:apiserver]
- level: None
  nonResourceURLs: [/readyz*, /livez*, /healthz*, /metrics, /version]
- level: Metadata
EOF
}

# --- processes --------------------------------------------------------------------------------------

pid_of() { cat "$RUN/$1.pid" 2>/dev/null || true; }
alive() { local pid; pid="$(pid_of "$1")"; [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }

# start NAME ARGS...: the binary from the cache, its own process group and log, its pid in run/.
start() {
    local name=$1
    shift
    alive "$name" && return 0
    mkdir -p "$RUN" "$LOGS"
    echo "=== $(date -Is) $name $*" >>"$LOGS/$name.log"
    local exe="$BIN/$name"
    [ -x "$exe" ] || exe="$(command -v "$name")"
    setsid "$exe" "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
    echo $! >"$RUN/$name.pid"
}

wait_until() {  # wait_until WHAT LOG COMMAND...
    local what=$1 log=$2 deadline=$((SECONDS + READY_TIMEOUT_S))
    shift 2
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then fail "waiting ${READY_TIMEOUT_S}s for $what" "$log"; fi
        sleep 0.2
    done
}

etcd_healthy() { curl -sf "http://127.0.0.1:$ETCD_CLIENT_PORT/health" | grep -q '"health":"true"'; }
apiserver_ready() {
    curl -sf --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
        "https://127.0.0.1:$APISERVER_PORT/readyz" | grep -qx ok
}
process_running() { alive "$1"; }

start_etcd() {
    start etcd --name local --data-dir "$STATE/etcd" \
        --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
        --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
        --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster "local=http://127.0.0.1:$ETCD_PEER_PORT" \
        --listen-metrics-urls "" --quota-backend-bytes 4294967296 --log-level warn
    wait_until "etcd /health" "$LOGS/etcd.log" etcd_healthy
}

start_apiserver() {
    start kube-apiserver --bind-address 127.0.0.1 --advertise-address 127.0.0.1 \
        --secure-port "$APISERVER_PORT" --etcd-servers "http://127.0.0.1:$ETCD_CLIENT_PORT" \
        --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
        --client-ca-file "$PKI/ca.crt" \
        --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
        --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
        --kubelet-certificate-authority "$PKI/ca.crt" --kubelet-preferred-address-types InternalIP \
        --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
        --service-account-issuer https://kubernetes.default.svc.cluster.local \
        --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
        --api-audiences https://kubernetes.default.svc.cluster.local \
        --service-cluster-ip-range "$SERVICE_CIDR" --endpoint-reconciler-type none \
        --allow-privileged=true --profiling=false \
        --audit-policy-file "$STATE/audit-policy.yaml" --audit-log-path "$LOGS/audit.log" \
        --audit-log-maxsize 0 --audit-log-format json --audit-log-mode blocking
    wait_until "kube-apiserver /readyz" "$LOGS/kube-apiserver.log" apiserver_ready
}

start_controller_manager() {
    kubeconfig "$STATE/controller-manager.kubeconfig" controller-manager
    start kube-controller-manager --kubeconfig "$STATE/controller-manager.kubeconfig" \
        --authentication-kubeconfig "$STATE/controller-manager.kubeconfig" \
        --authorization-kubeconfig "$STATE/controller-manager.kubeconfig" \
        --bind-address 127.0.0.1 --secure-port 0 --leader-elect=false \
        --use-service-account-credentials --service-account-private-key-file "$PKI/sa.key" \
        --root-ca-file "$PKI/ca.crt" --cluster-signing-cert-file "$PKI/ca.crt" \
        --cluster-signing-key-file "$PKI/ca.key" --controllers '*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller'
    wait_until "kube-controller-manager to stay up" "$LOGS/kube-controller-manager.log" process_running kube-controller-manager
}

start_scheduler() {
    kubeconfig "$STATE/scheduler.kubeconfig" scheduler
    # DaemonSet pods are bound by the default scheduler (the DaemonSet controller only sets node affinity).
    start kube-scheduler --kubeconfig "$STATE/scheduler.kubeconfig" \
        --authentication-kubeconfig "$STATE/scheduler.kubeconfig" \
        --authorization-kubeconfig "$STATE/scheduler.kubeconfig" \
        --bind-address 127.0.0.1 --secure-port 0 --leader-elect=false
    wait_until "kube-scheduler to stay up" "$LOGS/kube-scheduler.log" process_running kube-scheduler
}

admin_kubectl() { "$ROOT/.venv/bin/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }
ctr_k8s() { ctr -a "$CONTAINERD_SOCK" -n k8s.io "$@"; }

# --- the node: containerd + kubelet ------------------------------------------------------------------

start_containerd() {
    command -v containerd >/dev/null || { say "containerd is not installed (hack/setup.sh installs it)"; exit 1; }
    local dir="$STATE/containerd"
    mkdir -p "$dir/root" "$dir/cni" "$(dirname "$CONTAINERD_SOCK")"
    # Host-network pods are all the node runs; a loopback-only CNI network lets the runtime report ready
    # without creating any interface or address on the host.
    echo '{"cniVersion": "0.4.0", "name": "lvo-host-only", "plugins": [{"type": "loopback"}]}' \
        >"$dir/cni/10-loopback.conflist"
    # restrict_oom_score_adj: the machine lacks CAP_SYS_RESOURCE, so a sandbox's oom_score_adj (-998)
    # cannot go below containerd's own (without it every sandbox fails: "can't get final child's PID").
    cat >"$dir/config.toml" <<EOF
version = 2
root = "$dir/root"
state = "$CONTAINERD_RUN/state"
[grpc]
  address = "$CONTAINERD_SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = false
EOF
    start containerd --config "$dir/config.toml"
    wait_until "containerd to answer" "$LOGS/containerd.log" ctr_k8s version
    if ! ctr_k8s images ls -q | grep -qx "$PAUSE_IMAGE"; then
        # The pod sandbox image cannot be pulled here: a static pause binary of our own, as an OCI archive.
        gcc -Os -static -o "$dir/pause" "$ROOT/hack/pause.c" >>"$LOGS/containerd.log" 2>&1 \
            || fail "building the pause binary" "$LOGS/containerd.log"
        python3 "$ROOT/hack/oci_archive.py" "$dir/pause.tar" "$PAUSE_IMAGE" /pause "$dir/pause=/pause"
        ctr_k8s images import "$dir/pause.tar" >>"$LOGS/containerd.log" 2>&1 \
            || fail "importing the pause image" "$LOGS/containerd.log"
    fi
}

node_ready() {
    [ "$(admin_kubectl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' \
        2>/dev/null)" = True ]
}
node_registered() { admin_kubectl get node "$NODE_NAME" -o name >/dev/null 2>&1; }

start_kubelet() {
    local dir="$STATE/kubelet"
    mkdir -p "$dir"
    # Mount propagation into pods (the chart mounts its host directories HostToContainer) needs the host's
    # mounts shared, as systemd makes them at boot; machines without systemd leave / private.
    if [ "$(findmnt -no PROPAGATION / 2>/dev/null)" = private ]; then mount --make-rshared /; fi
    kubeconfig "$dir/kubeconfig" "kubelet-$NODE_NAME"
    cat >"$dir/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $((KUBELET_PORT - 2))
tlsCertFile: $PKI/kubelet-serving-$NODE_NAME.crt
tlsPrivateKeyFile: $PKI/kubelet-serving-$NODE_NAME.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
failSwapOn: false
failCgroupV1: false
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
imageServiceEndpoint: unix://$CONTAINERD_SOCK
resolvConf: /etc/resolv.conf
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
EOF
    # --cloud-provider=external: the kubelet refuses a loopback node IP, so it leaves the addresses to a
    # "cloud", and this script plays that part: InternalIP 127.0.0.1, so that the API server reaches the
    # kubelet (logs, exec) on loopback only.
    start kubelet --config "$dir/config.yaml" --kubeconfig "$dir/kubeconfig" --hostname-override "$NODE_NAME" \
        --cloud-provider external --root-dir "$dir/root" --cert-dir "$dir/pki" -v 1
    wait_until "kubelet to register node $NODE_NAME" "$LOGS/kubelet.log" node_registered
    admin_kubectl patch node "$NODE_NAME" --subresource=status --type=merge -p \
        '{"status":{"addresses":[{"type":"InternalIP","address":"127.0.0.1"},{"type":"Hostname","address":"'"$NODE_NAME"'"}]}}' \
        >/dev/null
    admin_kubectl taint node "$NODE_NAME" node.cloudprovider.kubernetes.io/uninitialized- >/dev/null 2>&1 || true
    wait_until "node $NODE_NAME to be Ready" "$LOGS/kubelet.log" node_ready
}

all_running() {
    local c
    for c in "${COMPONENTS[@]}"; do alive "$c" || return 1; done
    if [ "$WITH_NODE" = 1 ]; then
        for c in "${NODE_COMPONENTS[@]}"; do alive "$c" || return 1; done
    fi
    apiserver_ready
}

up() {
    if all_running; then say "already running (https://127.0.0.1:$APISERVER_PORT)"; return 0; fi
    command -v openssl >/dev/null || { say "openssl is not installed"; exit 1; }
    command -v curl >/dev/null || { say "curl is not installed"; exit 1; }
    build
    pki
    audit_policy
    start_etcd
    start_apiserver
    kubeconfig "$KUBECONFIG_ADMIN" admin
    start_controller_manager
    start_scheduler
    if [ "$WITH_NODE" = 1 ]; then
        start_containerd
        start_kubelet
    fi
    say "ready at https://127.0.0.1:$APISERVER_PORT; $(env_line)"
}

stop_one() {
    local name=$1 pid i
    pid="$(pid_of "$name")"
    [ -n "$pid" ] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$pid" 2>/dev/null || true
        for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$RUN/$name.pid"
}

# Every container of the node killed and removed (containerd's shims outlive containerd itself), then
# the mounts the kubelet and containerd made under the state directory.
stop_node() {
    local id
    stop_one kubelet
    if alive containerd; then
        for id in $(ctr_k8s tasks ls -q 2>/dev/null); do ctr_k8s tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
        for id in $(ctr_k8s tasks ls -q 2>/dev/null); do ctr_k8s tasks delete -f "$id" >/dev/null 2>&1 || true; done
        for id in $(ctr_k8s containers ls -q 2>/dev/null); do ctr_k8s containers delete "$id" >/dev/null 2>&1 || true; done
    fi
    stop_one containerd
    pkill -KILL -f "containerd-shim-runc-v2 .*-address $CONTAINERD_SOCK" 2>/dev/null || true
    { grep -oE " ($STATE|$CONTAINERD_RUN)/[^ ]*" /proc/mounts || true; } | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done
}

down() {
    local c
    stop_node
    for c in kube-scheduler kube-controller-manager kube-apiserver etcd; do stop_one "$c"; done
    say "stopped"
}

env_line() { echo "export KUBECONFIG=$KUBECONFIG_ADMIN"; }

status() {
    local c
    for c in "${COMPONENTS[@]}" "${NODE_COMPONENTS[@]}"; do
        if alive "$c"; then echo "$c running (pid $(pid_of "$c"))"; else echo "$c stopped"; fi
    done
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    env) env_line ;;
    build) build; echo "$BIN" ;;
    status) status ;;
    stop) stop_one "${2:?usage: hack/cluster.sh stop COMPONENT}" ;;
    node-name) echo "$NODE_NAME" ;;
    containerd-socket) echo "$CONTAINERD_SOCK" ;;
    bin-dir) echo "$BIN" ;;
    *) echo "usage: hack/cluster.sh up|down|env|build|status" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Make qemu:///system answer, idempotently, with or without systemd (CI containers have none), and
# record which domain type guests can use: "kvm" if QEMU (as libvirt's qemu user) can open /dev/kvm,
# else "qemu" (TCG). The result goes to .local/libvirt-domain-type; the last stdout line is a summary.
# No libvirt network is started or needed: the tests' guests have no NICs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
URI=qemu:///system
QEMU_CONF=/etc/libvirt/qemu.conf
DEADLINE_S=60

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else
        echo "need root for: $*" >&2; return 1
    fi
}

answering() { timeout 10 virsh -c "$URI" version >/dev/null 2>&1; }

# A process with exactly this command name is alive (no procps on minimal images, so read /proc).
running() {
    local f comm
    for f in /proc/[0-9]*/comm; do
        read -r comm <"$f" 2>/dev/null || continue
        [ "$comm" = "$1" ] && return 0
    done
    return 1
}

wait_for() {  # wait_for DESCRIPTION COMMAND...: poll until COMMAND succeeds or the deadline passes
    local what=$1 deadline=$((SECONDS + DEADLINE_S))
    shift
    until "$@"; do
        if [ "$SECONDS" -ge "$deadline" ]; then echo "timed out after ${DEADLINE_S}s waiting for $what" >&2; return 1; fi
        sleep 0.2
    done
}

conf_value() {  # last active `key = "value"` in qemu.conf
    sed -n -E "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*\"([^\"]*)\".*/\1/p" "$QEMU_CONF" 2>/dev/null | tail -n1
}

qemu_user() {
    local u
    u="$(conf_value user)"
    if [ -z "$u" ]; then  # the compiled-in default differs per distribution
        for u in libvirt-qemu qemu root; do id "$u" >/dev/null 2>&1 && break; done
    fi
    case "$u" in +*) u="$(getent passwd "${u#+}" | cut -d: -f1)" ;; esac
    echo "${u:-root}"
}

# Can USER open /dev/kvm read-write? Opening it is the only honest test (device cgroups, ACLs).
kvm_open_as() {
    [ -c /dev/kvm ] || return 1
    if [ "$1" = root ] || [ "$1" = "$(id -un)" ]; then
        (exec 3<>/dev/kvm) 2>/dev/null
    else
        as_root runuser -u "$1" -- sh -c 'exec 3<>/dev/kvm' 2>/dev/null
    fi
}

set_conf() {  # set_conf KEY VALUE: edit the active line if there is one, never add a duplicate
    if grep -Eq "^[[:space:]]*$1[[:space:]]*=" "$QEMU_CONF"; then
        as_root sed -i -E "s/^[[:space:]]*$1[[:space:]]*=.*/$1 = \"$2\"/" "$QEMU_CONF"
    else
        echo "$1 = \"$2\"" | as_root tee -a "$QEMU_CONF" >/dev/null
    fi
}

# QEMU runs as an unprivileged user that may not reach a root-only /dev/kvm (containers without udev
# rules). Running QEMU as root there keeps KVM usable; it must be set before libvirtd reads the file.
conf_changed=0
user="$(qemu_user)"
if [ -c /dev/kvm ] && kvm_open_as root && ! kvm_open_as "$user"; then
    [ -f "$QEMU_CONF.libvirt-operator.bak" ] || as_root cp -p "$QEMU_CONF" "$QEMU_CONF.libvirt-operator.bak"
    set_conf user root
    set_conf group root
    conf_changed=1
    echo "libvirtd: /dev/kvm is not usable by '$user'; QEMU now runs as root (backup: $QEMU_CONF.libvirt-operator.bak)"
fi

daemon=libvirtd
command -v libvirtd >/dev/null || daemon=virtqemud  # modular-daemon-only installs

if [ -d /run/systemd/system ] && command -v systemctl >/dev/null \
        && systemctl cat "$daemon.service" >/dev/null 2>&1; then
    if [ "$conf_changed" = 1 ]; then as_root systemctl restart "$daemon.service"; fi
    answering || as_root systemctl start "$daemon.service"
else
    as_root mkdir -p /var/log/libvirt /run/libvirt
    # libvirtd hands guest consoles to virtlogd; without it guests fail to start.
    if ! running virtlogd; then
        as_root virtlogd -d
        wait_for "virtlogd socket" test -S /run/libvirt/virtlogd-sock
    fi
    if [ "$conf_changed" = 1 ] && running "$daemon"; then
        pid="$(cat "/run/$daemon.pid" 2>/dev/null || true)"
        if [ -n "$pid" ]; then
            echo "libvirtd: restarting $daemon (pid $pid) to apply $QEMU_CONF"
            as_root kill -TERM "$pid"
            wait_for "$daemon to exit" sh -c "! kill -0 $pid 2>/dev/null"
        fi
    fi
    if ! answering && ! running "$daemon"; then
        # A concurrent start may win the pid-file race; the wait below is what decides.
        as_root env LIBVIRT_LOG_OUTPUTS="3:file:/var/log/libvirt/$daemon.log" "$daemon" -d || true
    fi
fi

if ! wait_for "virsh -c $URI version" answering; then
    tail -n 20 "/var/log/libvirt/$daemon.log" >&2 2>/dev/null || true
    exit 1
fi

# libvirt's own verdict (it checks /dev/kvm as its qemu user) decides what guests may use.
mkdir -p "$ROOT/.local"
if virsh -c "$URI" domcapabilities --virttype kvm >/dev/null 2>&1; then
    echo kvm >"$ROOT/.local/libvirt-domain-type"
    echo "libvirtd ok (kvm)"
else
    echo qemu >"$ROOT/.local/libvirt-domain-type"
    if [ -c /dev/kvm ]; then reason="/dev/kvm not usable by QEMU"; else reason="no /dev/kvm"; fi
    echo "libvirtd ok (tcg: $reason)"
fi

#!/usr/bin/env bash
# A real Debian 12 guest for the VMs of libvirt-operator, built from Debian packages only (no cloud
# image is downloaded): cloud-init (NoCloud), OpenSSH, the QEMU guest agent, systemd-networkd (DHCP).
#
#   hack/guest-image.sh [DIR]   build it once per machine (cached), then put into DIR:
#       debian-cloud.qcow2    the root filesystem: ext4 on the whole disk (no partition table), 2 GiB,
#                             grown to the disk's size at boot (cloud-init resizefs)
#       debian-cloud.vmlinuz  the kernel (linux-image-cloud-amd64) and its initramfs, for direct kernel
#       debian-cloud.initrd   boot: the image has no boot loader
#       debian-cloud.cmdline  the kernel command line to boot it with (one line)
#   The only line on stdout is DIR.
#
# DIR defaults to the image directory of local mode for node "dev-node" (`hack/local.sh`), where
# spec.disks[].image is looked up: /var/lib/libvirt-operator/local/dev-node/images for root, else
# ${XDG_STATE_HOME:-~/.local/state}/libvirt-operator/dev-node/images (operator/libvirt_operator/settings.py
# _state_dir() and local.py node_state_dir()). For another node give its directory: with
# `hack/local.sh --node-name my-node` that is /var/lib/libvirt-operator/local/my-node/images, with
# --image-dir (or LIBVIRT_OPERATOR_IMAGE_DIR) that directory; `libvirt-operator run` (the DaemonSet)
# looks in /var/lib/libvirt-operator/images by default.
#
# The cache is $LVO_CACHE_DIR/guest-<hash>/ (default LVO_CACHE_DIR=/var/cache/libvirt-operator, outside
# the checkout); <hash> covers the recipe below (the suite, the packages, the disk size, the kernel
# command line and the functions that build), not the mirror nor this header: a change to the recipe
# builds anew (the newest $LVO_GUEST_KEEP builds, default 3, are kept), a cached build is copied into DIR
# in about a second. Building takes 2-3 minutes on 2 cores (mostly mmdebstrap) and needs root; copying
# from the cache does not. Log: $LVO_CACHE_DIR/guest-<hash>.log; a failed step is named, with the last
# lines of the log.
#
# Mirror: $LVO_GUEST_MIRROR (anything mmdebstrap takes as a mirror: a URL, a .list or .sources file, or
# several separated by '|'); by default the host's own Debian sources when the host is Debian 12
# (its mirror may be a snapshot: hence no Valid-Until check), else http://deb.debian.org/debian. That
# mirror, through apt and mmdebstrap, is the only network the script uses. Tools it needs (mmdebstrap,
# e2fsprogs, qemu-utils, genisoimage for NoCloud seeds) are installed with apt-get (update only if an
# install fails).
#
# Booting it (docs/guest-image.md): <domain type='qemu'> (TCG) on machine pc, <kernel>, <initrd> and
# <cmdline> from the files above, a qcow2 overlay on debian-cloud.qcow2 as the first virtio disk (vda), a
# NoCloud seed (an ISO with volume id "cidata") on IDE: the cloud kernel has no AHCI, so a SATA CD-ROM of
# q35 is invisible to it. The default user is "debian" (sudo, gets the seed's SSH keys).
set -euo pipefail
umask 022  # QEMU (user libvirt-qemu) must be able to read the files and enter DIR

# --- the recipe (everything here is hashed into the cache key) --------------------------------------
SUITE=bookworm
PACKAGES=systemd-sysv,udev,dbus,e2fsprogs,linux-image-cloud-amd64,initramfs-tools,cloud-init,openssh-server,qemu-guest-agent,sudo,iproute2,netbase
DISK_SIZE=2G
CMDLINE="root=/dev/vda rw console=ttyS0"
NAME=debian-cloud
FILES=("$NAME.qcow2" "$NAME.vmlinuz" "$NAME.initrd" "$NAME.cmdline")

# Run by mmdebstrap as a --customize-hook with the root filesystem's path as $1.
customize() {
    local root=$1
    case "$root" in /?*) ;; *) echo "customize: not a root filesystem: '$root'"; return 1 ;; esac
    echo "/dev/vda / ext4 defaults,errors=remount-ro 0 1" >"$root/etc/fstab"
    # DHCP on every Ethernet interface (cloud-init writes its own networkd file for the NIC it finds;
    # this one serves a boot without a seed).
    cat >"$root/etc/systemd/network/90-dhcp-ethernet.network" <<'EOF'
[Match]
Name=en* eth*

[Network]
DHCP=yes
EOF
    chroot "$root" systemctl enable systemd-networkd.service
    cat >"$root/etc/cloud/cloud.cfg.d/90-libvirt-operator.cfg" <<'EOF'
# Written by hack/guest-image.sh: a NoCloud seed (ISO or disk labelled cidata) or nothing.
datasource_list: [NoCloud, None]
# The only locale the image has: nothing to generate at boot.
locale: C.UTF-8
# The hostname in /etc/hosts (sudo resolves it).
manage_etc_hosts: localhost
# No RSA (nor DSA) host key: generating an RSA key takes 5-20 s under TCG, and SSH waits for the keys.
ssh_genkeytypes: [ed25519, ecdsa]
EOF
    # No host keys nor machine id shared by every copy of the image: cloud-init generates the keys at the
    # first boot (the drop-in covers a boot without cloud-init), systemd the machine id.
    rm -f "$root"/etc/ssh/ssh_host_*
    mkdir -p "$root/etc/systemd/system/ssh.service.d"
    cat >"$root/etc/systemd/system/ssh.service.d/host-key.conf" <<'EOF'
[Service]
ExecStartPre=/bin/sh -c 'ls /etc/ssh/ssh_host_*_key >/dev/null 2>&1 || ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key'
EOF
    # e2scrub checks LVM snapshots, of which a guest has none: not a task for every boot of a 1-vCPU guest.
    chroot "$root" systemctl disable e2scrub_reap.service e2scrub_all.timer
    : >"$root/etc/machine-id"
    rm -f "$root/var/lib/dbus/machine-id"
}

bootstrap() {  # bootstrap TARBALL MIRROR...
    local tar=$1
    shift
    local hook="${tar%/*}/customize.sh"
    # mmdebstrap runs a hook with sh -c and the root filesystem as $1: customize is a bash function.
    { echo '#!/bin/bash'; echo 'set -euo pipefail'; declare -f customize; echo 'customize "$1"'; } >"$hook"
    # No documentation, manual pages nor translations in the guest (a smaller image, a faster build).
    mmdebstrap --variant=apt --mode=root --aptopt='Acquire::Check-Valid-Until "false"' \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
        --include="$PACKAGES" --customize-hook="bash $hook \"\$1\"" "$SUITE" "$tar" "$@"
}

make_disk() {  # make_disk TARBALL WORKDIR OUTDIR: the qcow2, the kernel, the initramfs, the command line
    local tar=$1 work=$2 out=$3 kernels initrds
    mkdir "$work/rootfs"
    tar --numeric-owner -xpf "$tar" -C "$work/rootfs"
    kernels=("$work"/rootfs/boot/vmlinuz-*)
    initrds=("$work"/rootfs/boot/initrd.img-*)
    [ ${#kernels[@]} -eq 1 ] && [ -f "${kernels[0]}" ] || { echo "not one kernel in /boot: ${kernels[*]}"; return 1; }
    [ ${#initrds[@]} -eq 1 ] && [ -f "${initrds[0]}" ] || { echo "not one initramfs in /boot: ${initrds[*]}"; return 1; }
    cp "${kernels[0]}" "$out/$NAME.vmlinuz"
    cp "${initrds[0]}" "$out/$NAME.initrd"
    echo "$CMDLINE" >"$out/$NAME.cmdline"
    # mke2fs 1.47.0 cannot read a tarball for -d: from the unpacked tree, no loop mount needed.
    mke2fs -q -F -t ext4 -L rootfs -d "$work/rootfs" "$work/disk.raw" "$DISK_SIZE"
    qemu-img convert -c -O qcow2 "$work/disk.raw" "$out/$NAME.qcow2"
    chmod 0644 "$out"/*
}

recipe_hash() {
    { declare -p SUITE PACKAGES DISK_SIZE CMDLINE NAME FILES; declare -f customize bootstrap make_disk; } \
        | sha256sum | cut -c1-12
}

# --- the rest: where, tools, cache, copy ------------------------------------------------------------
say() { echo "guest-image: $*" >&2; }

state_dir() {  # as operator/libvirt_operator/settings.py _state_dir()
    if [ "$(id -u)" -eq 0 ]; then echo /var/lib/libvirt-operator/local
    else echo "${XDG_STATE_HOME:-$HOME/.local/state}/libvirt-operator"; fi
}

case "${1:-}" in
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    -*) say "unknown option $1 (usage: hack/guest-image.sh [DIR])"; exit 2 ;;
esac
[ $# -le 1 ] || { say "usage: hack/guest-image.sh [DIR]"; exit 2; }
DIR=${1:-$(state_dir)/dev-node/images}
CACHE_ROOT="${LVO_CACHE_DIR:-/var/cache/libvirt-operator}"
HASH=$(recipe_hash)
CACHE="$CACHE_ROOT/guest-$HASH"
LOG="$CACHE_ROOT/guest-$HASH.log"

fail() {  # fail STEP
    say "$1 failed; last lines of $LOG:"
    tail -n 40 "$LOG" >&2 2>/dev/null || true
    rm -rf "$CACHE.partial"  # the half build (a root filesystem, its tarball): never kept
    exit 1
}

# step WHAT COMMAND...: the command's output goes to the log; a failure names WHAT and shows the log's tail.
step() {
    local what=$1 rc
    shift
    echo "=== $what: $*" >>"$LOG"
    set +e
    (set -e; "$@") >>"$LOG" 2>&1 </dev/null 9>&-
    rc=$?
    set -e
    [ "$rc" -eq 0 ] || fail "$what"
}

cached() {
    local f
    for f in "${FILES[@]}"; do [ -s "$CACHE/$f" ] || return 1; done
}

install_tools() {
    local missing=() tool
    # command:package
    for tool in mmdebstrap:mmdebstrap mke2fs:e2fsprogs qemu-img:qemu-utils genisoimage:genisoimage flock:util-linux; do
        command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    echo "=== apt-get install ${missing[*]}" >>"$LOG"
    if ! apt-get install -y --no-install-recommends -o DPkg::Lock::Timeout=300 "${missing[@]}" >>"$LOG" 2>&1 </dev/null; then
        step "apt-get update" apt-get update
        step "apt-get install ${missing[*]}" apt-get install -y --no-install-recommends -o DPkg::Lock::Timeout=300 "${missing[@]}"
    fi
}

mirrors() {  # one mirror argument per line for mmdebstrap
    local codename="" f
    if [ -n "${LVO_GUEST_MIRROR:-}" ]; then tr '|' '\n' <<<"$LVO_GUEST_MIRROR"; return; fi
    [ -r /etc/os-release ] && codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    if [ "$codename" = "$SUITE" ] && grep -qs "^ID=debian" /etc/os-release; then
        for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
            [ -s "$f" ] && grep -qs "^[^#]*debian" "$f" && echo "$f"
        done
        return 0
    fi
    echo http://deb.debian.org/debian
}

build() {
    local work="$CACHE.partial" started=$SECONDS m=()
    echo "=== build of $CACHE, $(date -u +%FT%TZ)" >>"$LOG"
    mapfile -t m < <(mirrors)
    [ ${#m[@]} -gt 0 ] || m=(http://deb.debian.org/debian)
    say "building the $SUITE guest into $CACHE (once per machine, 2-3 minutes); mirror: ${m[*]}"
    rm -rf "$work"
    mkdir -p "$work/out"
    step "mmdebstrap (the root filesystem)" bootstrap "$work/rootfs.tar" "${m[@]}"
    step "the disk (tar, mke2fs -d, qemu-img convert)" make_disk "$work/rootfs.tar" "$work" "$work/out"
    rm -rf "$CACHE"
    mv "$work/out" "$CACHE"  # a half build never counts as built
    rm -rf "$work"
    say "built in $((SECONDS - started)) s: $(du -h "$CACHE/$NAME.qcow2" | cut -f1) qcow2"
    prune
}

prune() {  # keep the newest $LVO_GUEST_KEEP (default 3) builds, this one among them
    local keep=${LVO_GUEST_KEEP:-3} d n=1
    while read -r d; do
        d=${d%/}
        case "$d" in "$CACHE" | *.partial) continue ;; esac
        n=$((n + 1))
        [ "$n" -gt "$keep" ] || continue
        say "removing $d (the build of an older recipe)"
        rm -rf "$d" "$d.log"
    done < <(ls -1dt "$CACHE_ROOT"/guest-*/ 2>/dev/null || true)
}

copy_out() {
    local f
    mkdir -p "$DIR"
    for f in "${FILES[@]}"; do
        cmp -s "$CACHE/$f" "$DIR/$f" && continue
        # A copy, not a link: what is done to DIR's file (libvirt's chown, an edit) never reaches the cache.
        cp --reflink=auto "$CACHE/$f" "$DIR/.$f.tmp"
        chmod 0644 "$DIR/.$f.tmp"
        mv -f "$DIR/.$f.tmp" "$DIR/$f"  # atomic: a reader never sees half an image
    done
}

if [ "$(id -u)" -eq 0 ]; then
    mkdir -p "$CACHE_ROOT"
    install_tools  # on a cached build too: genisoimage makes the NoCloud seeds of the guests
fi
if ! cached; then
    if [ "$(id -u)" -ne 0 ]; then
        say "no build in $CACHE yet, and building needs root (mmdebstrap, the files' owners): run as root once"
        exit 1
    fi
    # Two runs at once (two test sessions) build once: the second waits, then copies.
    exec 9>"$CACHE_ROOT/guest-$HASH.lock"
    flock 9
    cached || build
    exec 9>&-
fi
copy_out
say "$NAME.{qcow2,vmlinuz,initrd,cmdline} in $DIR (from $CACHE)"
echo "$DIR"

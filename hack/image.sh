#!/usr/bin/env bash
# The operator image, built with rootful podman (runc) from the repository's Dockerfile on a Debian base
# that this script bootstraps from Debian packages (mmdebstrap): nothing is pulled from any registry.
#
#   hack/image.sh          build it, or find it in the cache (seconds); the only line on stdout is the path
#                          of its OCI archive, for a node: ctr -n k8s.io images import PATH
#   hack/image.sh hash     print the content hash of the checkout (no build, nothing installed)
#   hack/image.sh inputs   print the files the hash covers, one per line, relative to the checkout
#   hack/image.sh clean    remove the images, their build cache, the base and the archives (next build is cold)
#
# Tags: localhost/libvirt-operator:<version> (pyproject.toml) and localhost/libvirt-operator:<hash>. The
# hash covers the Dockerfile, .dockerignore, this script and every file of the build context (what
# .dockerignore lets through, without what it excludes). podman builds from a copy of exactly those files
# (.local/image/context), so a file edited during the build never makes the tag lie. The base image
# (localhost/debian-base:bookworm) is bootstrapped once per machine and is not part of the hash:
# `hack/image.sh clean` makes the next build bootstrap it again.
#
# The archive, whose image is named localhost/libvirt-operator:<version> inside, is
# $LVO_CACHE_DIR/images/libvirt-operator-<hash>.oci.tar (default LVO_CACHE_DIR=/var/cache/libvirt-operator,
# outside the checkout). The newest $LVO_IMAGE_KEEP (default 3) archives and their images are kept; the
# build cache of older builds goes.
#
# podman runs with a containers.conf of its own (.local/image/containers.conf, through CONTAINERS_CONF):
# runc (crun fails on cgroup v1 hybrid hosts), cgroupfs, file events, ulimits the host lets it set. The
# machine's containers configuration is never changed. Logs: .local/image/logs/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="$ROOT/.local/image"
LOGS="$STATE/logs"
CONTEXT="$STATE/context"
CACHE="${LVO_CACHE_DIR:-/var/cache/libvirt-operator}/images"
KEEP="${LVO_IMAGE_KEEP:-3}"
REPO=localhost/libvirt-operator
BUILD_REPO=localhost/libvirt-operator-build  # the Dockerfile's first stage, kept as build cache
BASE=localhost/debian-base:bookworm
SUITE=bookworm
HOST_CA=/etc/ssl/certs/ca-certificates.crt  # the host's CA bundle: PyPI is reached through a TLS proxy
# What .dockerignore's lines other than `*` and the `!` ones exclude, as find(1) patterns.
EXCLUDED_DIRS=(__pycache__ '*.egg-info')
EXCLUDED_FILES=('*.py[co]')

say() { echo "image: $*" >&2; }

fail() {  # fail STEP LOG
    say "$1 failed; last lines of $2:"
    tail -n 40 "$2" >&2 2>/dev/null || true
    exit 1
}

# --- the hash ---------------------------------------------------------------------------------------

inputs() {  # inputs [DIR]: the files the image is made of, relative to DIR (default: the checkout)
    local dir=${1:-$ROOT} paths=() line prune=() exclude=() p
    while IFS= read -r line; do
        case "$line" in '!'*) paths+=("${line#!}") ;; esac
    done <"$dir/.dockerignore"
    for p in "${EXCLUDED_DIRS[@]}"; do prune+=(-name "$p" -o); done
    for p in "${EXCLUDED_FILES[@]}"; do exclude+=(! -name "$p"); done
    (
        cd "$dir"
        printf '%s\n' Dockerfile .dockerignore hack/image.sh
        find "${paths[@]%/}" -type d \( "${prune[@]}" -false \) -prune \
            -o \( -type f -o -type l \) "${exclude[@]}" -print
    ) | LC_ALL=C sort -u
}

content_hash() {  # content_hash [DIR]: names, contents, modes and symlink targets; not owners or times
    local dir=${1:-$ROOT}
    inputs "$dir" | (cd "$dir" && tar --create --no-recursion --verbatim-files-from --files-from=- \
        --owner=0 --group=0 --numeric-owner --mtime=@0 --format=gnu) | sha256sum | cut -c1-12
}

stage() {  # copy the inputs into $CONTEXT: the build context, hashed as podman sees it
    rm -rf "$CONTEXT.tmp"
    mkdir -p "$CONTEXT.tmp"
    inputs | (cd "$ROOT" && tar --create --no-recursion --verbatim-files-from --files-from=-) \
        | tar --extract --directory "$CONTEXT.tmp"
    rm -rf "$CONTEXT"
    mv "$CONTEXT.tmp" "$CONTEXT"
}

version() {
    sed -n 's/^version = "\(.*\)"$/\1/p' "$1/pyproject.toml" | head -n 1
}

# --- tools and podman's configuration ---------------------------------------------------------------

install_tools() {
    local missing=() tool log="$LOGS/apt.log"
    # command:package. runc satisfies podman's runtime dependency (crun | runc); crun would not run here.
    for tool in podman:podman runc:runc mmdebstrap:mmdebstrap flock:util-linux; do
        command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
        { apt-get update && apt-get install -y --no-install-recommends "${missing[@]}"; } >>"$log" 2>&1 \
            || fail "apt-get install ${missing[*]}" "$log"
    fi
}

podman_config() {
    mkdir -p "$STATE" "$LOGS"
    cat >"$STATE/containers.conf.tmp" <<'EOF'
# Written by hack/image.sh, read by its podman only (CONTAINERS_CONF).
[containers]
# podman's default (nofile 1048576) is more than these hosts let a process raise its limit to.
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
    mv "$STATE/containers.conf.tmp" "$STATE/containers.conf"
    export CONTAINERS_CONF="$STATE/containers.conf"
}

lock() {  # one build at a time per machine: the image store, the tags and the archives are shared
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.lock"
    flock 9
}

# --- the base ---------------------------------------------------------------------------------------

base() {
    podman image exists "$BASE" && return 0
    local log="$LOGS/base.log" tar="$STATE/debian-base.tar" started=$SECONDS sources=()
    # The host's own Debian sources (its mirror may be a snapshot: hence no Valid-Until check).
    [ -f /etc/apt/sources.list.d/debian.sources ] && sources=(/etc/apt/sources.list.d/debian.sources)
    say "bootstrapping $BASE with mmdebstrap (once per machine)"
    # The apt and dpkg options stay in the base (/etc/apt/apt.conf.d, /etc/dpkg/dpkg.cfg.d): the
    # Dockerfile's apt-get calls use the same mirror and install no documentation either.
    if ! mmdebstrap --variant=minbase --mode=root \
            --aptopt='Acquire::Check-Valid-Until "false"' --aptopt='Acquire::Languages "none"' \
            --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
            --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
            --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
            "$SUITE" "$tar" "${sources[@]}" >"$log" 2>&1; then
        rm -f "$tar"
        fail "mmdebstrap" "$log"
    fi
    if ! podman import --change 'ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'CMD=["bash"]' --message "mmdebstrap --variant=minbase $SUITE" "$tar" "$BASE" >>"$log" 2>&1; then
        rm -f "$tar"
        fail "podman import" "$log"
    fi
    rm -f "$tar"
    say "base ready in $((SECONDS - started)) s"
}

# --- build, archive, prune --------------------------------------------------------------------------

build() {  # build HASH VERSION
    local log="$LOGS/build.log" started=$SECONDS secret=()
    # pip in the build trusts the host's CA bundle (the Dockerfile's optional build secret pip-ca).
    [ -f "$HOST_CA" ] && secret=(--secret "id=pip-ca,src=$HOST_CA")
    say "building $REPO:$2 ($1)"
    if ! podman build --pull=never --network=host --layers "${secret[@]}" \
            --build-arg BASE_IMAGE="$BASE" \
            --label org.opencontainers.image.version="$2" --label dev.libvirt-operator.image.hash="$1" \
            -t "$REPO:$1" -t "$REPO:$2" -f "$CONTEXT/Dockerfile" "$CONTEXT" >"$log" 2>&1; then
        fail "podman build" "$log"
    fi
    # The first stage's last layer, tagged (all from the cache, a second): a tagged image is no dangling
    # build cache, so the next build, with only operator/ changed, still starts from its dependencies.
    if ! podman build --pull=never --network=host --layers "${secret[@]}" --build-arg BASE_IMAGE="$BASE" \
            --target build -t "$BUILD_REPO:$1" -f "$CONTEXT/Dockerfile" "$CONTEXT" >>"$log" 2>&1; then
        fail "podman build --target build" "$log"
    fi
    say "built in $((SECONDS - started)) s"
}

export_archive() {  # export_archive VERSION ARCHIVE
    local log="$LOGS/save.log"
    rm -f "$2.partial"
    # Saved under its version tag: the name a node's containerd gives it (ctr images import).
    podman save --format oci-archive -o "$2.partial" "$REPO:$1" >"$log" 2>&1 \
        || { rm -f "$2.partial"; fail "podman save" "$log"; }
    mv "$2.partial" "$2"  # a half-written archive is never found
}

remove_dangling() {  # untagged, childless images built on $BASE: build cache no kept image descends from
    local id removed
    for _ in $(seq 50); do
        removed=0
        # `since` the base: made after it (what is built on it is); the lock keeps builds of ours out.
        for id in $(podman images -a -q --no-trunc --filter dangling=true --filter since="$BASE"); do
            podman rmi "$id" >>"$LOGS/prune.log" 2>&1 && removed=1
        done
        [ "$removed" -eq 1 ] || return 0  # removing a leaf may leave its parent dangling: next round
    done
}

prune() {  # prune HASH: keep the newest $KEEP archives, their images and their build cache
    local old hash image
    while IFS= read -r old; do
        hash=${old##*/libvirt-operator-}
        hash=${hash%.oci.tar}
        [ "$hash" = "$1" ] && continue
        rm -f "$old"
        for image in "$REPO:$hash" "$BUILD_REPO:$hash"; do
            if podman image exists "$image"; then podman rmi "$image" >>"$LOGS/prune.log" 2>&1 || true; fi
        done
    done < <(find "$CACHE" -maxdepth 1 -name 'libvirt-operator-*.oci.tar' -printf '%T@ %p\n' | sort -rn \
        | tail -n +"$((KEEP + 1))" | cut -d' ' -f2-)  # all but the newest $KEEP
    if podman image exists "$BASE"; then remove_dangling; fi
}

main_build() {
    local hash version archive started=$SECONDS
    mkdir -p "$STATE" "$LOGS"
    install_tools
    podman_config
    lock
    stage
    hash=$(content_hash "$CONTEXT")
    version=$(version "$CONTEXT")
    [ -n "$version" ] || { say "no version in pyproject.toml"; exit 1; }
    archive="$CACHE/libvirt-operator-$hash.oci.tar"
    if podman image exists "$REPO:$hash"; then
        say "$REPO:$hash is built"
    elif [ -f "$archive" ]; then
        say "loading $REPO:$hash from $archive"
        podman load -i "$archive" >"$LOGS/load.log" 2>&1 || fail "podman load" "$LOGS/load.log"
        podman tag "$REPO:$version" "$REPO:$hash"
    else
        base
        build "$hash" "$version"
    fi
    podman tag "$REPO:$hash" "$REPO:$version"  # the version tag follows the checkout last built
    if [ -f "$archive" ]; then
        touch "$archive"  # recently used: pruned last
    else
        export_archive "$version" "$archive"
    fi
    prune "$hash"
    say "$REPO:$version = $REPO:$hash ($(podman image inspect --format '{{.Size}}' "$REPO:$hash" \
        | awk '{printf "%.0f MB", $1 / 1e6}'), archive $(du -m "$archive" | cut -f1) MB; $((SECONDS - started)) s)"
    echo "$archive"
}

clean() {
    if command -v podman >/dev/null; then
        podman_config
        lock
        local tags
        tags=$(podman images --format '{{.Repository}}:{{.Tag}}' --filter reference="$REPO" \
            --filter reference="$BUILD_REPO")
        # shellcheck disable=SC2086  # one tag per word
        [ -z "$tags" ] || podman rmi $tags >"$LOGS/clean.log" 2>&1 || fail "podman rmi" "$LOGS/clean.log"
        if podman image exists "$BASE"; then
            remove_dangling
            podman rmi "$BASE" >>"$LOGS/clean.log" 2>&1 || fail "podman rmi $BASE" "$LOGS/clean.log"
        fi
    fi
    rm -f "$CACHE"/libvirt-operator-*.oci.tar "$CACHE"/libvirt-operator-*.oci.tar.partial
    rm -rf "$CONTEXT" "$CONTEXT.tmp"
    say "removed $REPO, its build cache, $BASE and the archives"
}

case "${1:-build}" in
    build) main_build ;;
    hash) content_hash ;;
    inputs) inputs ;;
    clean) clean ;;
    *) echo "usage: hack/image.sh [build|hash|inputs|clean]" >&2; exit 2 ;;
esac

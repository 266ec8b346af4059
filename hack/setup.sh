#!/usr/bin/env bash
# Developer/CI set-up, idempotent and quiet: system packages, .venv, kubectl + helm, libvirtd.
# Run by hack/test.sh and hack/local.sh; safe to run again (fast when everything is in place).
# Everything it does is logged to .local/setup.log; on failure the log's tail is printed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
mkdir -p .local
LOG="$ROOT/.local/setup.log"
VENV="$ROOT/.venv"
STAMP="$VENV/.setup-pyproject.sha256"

# Debian 12 and Ubuntu names. Optional ones are installed only where the distribution has them
# (e.g. the QEMU driver is a separate package on Debian 12 but may be part of libvirt-daemon elsewhere).
REQUIRED_PKGS=(libvirt-daemon libvirt-daemon-system libvirt-clients libvirt-dev pkg-config
               qemu-system-x86 qemu-utils genisoimage gcc python3-venv python3-dev
               openssl curl iproute2 containerd runc containernetworking-plugins)
OPTIONAL_PKGS=(libvirt-daemon-driver-qemu ovmf)

export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1

# Two set-ups at once (test.sh next to local.sh) would race on apt, pip and the daemons.
exec 9>"$ROOT/.local/setup.lock"
flock 9
: >"$LOG"

fail() {
    echo "setup: $1 failed; last lines of $LOG:" >&2
    tail -n 40 "$LOG" >&2
    exit 1
}

# Run one step with its output in the log. The subshell's own `set -e` stays in force because the
# step is not run from a condition (bash ignores -e inside `if`/`||` contexts).
step() {
    local what=$1
    shift
    echo "=== $what: $*" >>"$LOG"
    set +e
    (set -e; "$@") >>"$LOG" 2>&1 </dev/null 9>&-
    local rc=$?
    set -e
    [ "$rc" -eq 0 ] || fail "$what"
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else
        echo "need root for: $*" >&2; return 1
    fi
}

# (captured, not piped into `grep -q`: an early-exiting grep would fail the pipeline under pipefail)
installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }
has_candidate() { local re='Candidate: [^(]'; [[ "$(apt-cache policy "$1" 2>/dev/null)" =~ $re ]]; }

missing_pkgs() {
    local p
    for p in "${REQUIRED_PKGS[@]}" "$@"; do installed "$p" || echo "$p"; done
    for p in "${OPTIONAL_PKGS[@]}"; do installed "$p" || ! has_candidate "$p" || echo "$p"; done
}

apt_install() {
    local -a missing
    mapfile -t missing < <(missing_pkgs "$@")
    [ "${#missing[@]}" -gt 0 ] || return 0
    as_root apt-get update -q
    mapfile -t missing < <(missing_pkgs "$@")  # optional packages are known only after the update
    [ "${#missing[@]}" -gt 0 ] || return 0
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"
}

python_ok() { "$1" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; }

# First Python >= 3.11 that can create a virtualenv: $PYTHON, then python3 (pyenv or system), then
# versioned names (e.g. Ubuntu 22.04's python3.11 next to its 3.10 default).
pick_python() {
    local c
    for c in "${PYTHON:-}" python3 python3.13 python3.12 python3.11 /usr/bin/python3; do
        [ -n "$c" ] && command -v "$c" >/dev/null && python_ok "$c" && { command -v "$c"; return 0; }
    done
    return 1
}

ensure_venv() {
    if [ -x "$VENV/bin/python" ] && python_ok "$VENV/bin/python"; then return 0; fi
    local py
    py="$(pick_python)" || { echo "no python3 >= 3.11 with venv support found" >&2; return 1; }
    echo "creating $VENV with $py ($("$py" -V 2>&1))"
    rm -rf "$VENV"
    "$py" -m venv "$VENV"
}

# The dependencies' wheels are kept per machine outside the checkout, keyed by pyproject.toml and the
# Python version: a fresh clone installs from them offline (about 25 s) instead of downloading and
# building them again (about 80 s, libvirt-python compiled from source). Byte-compiling is left to the
# first import, which compiles only what is used.
pip_install() {
    local want wheels
    want="$(cat pyproject.toml <("$VENV/bin/python" -VV) | sha256sum | cut -c1-12)"
    if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then return 0; fi
    wheels="${LVO_CACHE_DIR:-/var/cache/libvirt-operator}/wheels-$want"
    if [ ! -f "$wheels/.complete" ]; then
        rm -rf "$wheels.tmp"
        "$VENV/bin/python" -m pip wheel -q -w "$wheels.tmp" '.[test,bench]' 'setuptools>=68' wheel
        rm -f "$wheels.tmp"/libvirt_operator-*.whl  # the project itself is installed editable, from the checkout
        touch "$wheels.tmp/.complete"
        rm -rf "$wheels"
        mv "$wheels.tmp" "$wheels"
    fi
    "$VENV/bin/python" -m pip install -q --no-compile --no-index --find-links "$wheels" -e '.[test,bench]'
    echo "$want" >"$STAMP"
}

# --- 1. system packages ------------------------------------------------------------------------
step "apt packages" apt_install
if ! pick_python >/dev/null; then
    # e.g. Ubuntu 22.04: python3 is 3.10, but python3.11 is packaged
    step "python 3.11 packages" apt_install python3.11 python3.11-venv python3.11-dev
fi

# --- 2. virtualenv + project ---------------------------------------------------------------------
step "virtualenv" ensure_venv
step "pip install -e .[test,bench]" pip_install

# --- 3. kubectl + helm ----------------------------------------------------------------------------
step "kubectl/helm" bash "$ROOT/hack/tools.sh" "$VENV/bin" "$VENV/bin/python"

# --- 4. libvirtd -------------------------------------------------------------------------------------
step "libvirtd" bash "$ROOT/hack/libvirtd.sh"

# --- 5. summary --------------------------------------------------------------------------------------
kubectl_v="$("$VENV/bin/kubectl" version --client 2>/dev/null | sed -n 's/^Client Version: //p')"
helm_v="$("$VENV/bin/helm" version --template '{{.Version}}' 2>/dev/null)"
virt="$(cat "$ROOT/.local/libvirt-domain-type" 2>/dev/null || echo '?')"
[ "$virt" = qemu ] && virt="tcg"
echo "setup: venv ok, kubectl ${kubectl_v:-?}, helm ${helm_v:-?}, libvirtd ok ($virt)"

#!/usr/bin/env bash
# The README's test command (and CI's, via .ci/run): set-up, then lint, type-check and the test suite.
# Every check runs even if an earlier one failed; the exit code is the first failure's.
# Extra arguments go to pytest, e.g. `hack/test.sh -x -k lifecycle` or `hack/test.sh tests/unit`.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

bash hack/setup.sh || exit $?
export PATH="$PWD/.venv/bin:$PATH"  # tests and tools find kubectl/helm here

first_failure=0
check() {  # check NAME COMMAND...
    local name=$1 rc
    shift
    echo "== $name"
    "$@"
    rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "== $name FAILED (exit $rc)"
        [ "$first_failure" -ne 0 ] || first_failure=$rc
    fi
    return 0
}

lint() {
    check ruff .venv/bin/ruff check operator tests benchmarks
    check mypy .venv/bin/mypy
}

# The real control plane the end-to-end and Helm tests run on (built once per machine, then seconds).
# LVO_API=emulator runs them on the API emulator instead, without it.
control_plane() {
    [ "${LVO_API:-real}" = real ] || return 0
    echo "== control plane (hack/cluster.sh up)"
    started=$SECONDS
    bash hack/cluster.sh up || exit $?
    echo "== control plane ready in $((SECONDS - started)) s"
}

# The operator image the DaemonSet test runs on the node (built once per content hash, seconds after).
operator_image() {
    [ "${LVO_API:-real}" = real ] && [ "${LVO_CLUSTER_NODE:-1}" = 1 ] || return 0
    echo "== operator image (hack/image.sh)"
    started=$SECONDS
    bash hack/image.sh >/dev/null || exit $?
    echo "== operator image ready in $((SECONDS - started)) s"
}

pytest_rc() {  # pytest_rc RC: pytest's exit code, with "no tests collected" (5) as a failure
    if [ "$1" -eq 5 ]; then
        echo "test.sh: pytest collected no tests (exit 5); this is a failure" >&2
    fi
    return "$1"
}

if [ "$#" -gt 0 ]; then  # what the caller asked for, in one run (the whole suite unless a path is given)
    lint
    control_plane
    operator_image
    paths=(tests)
    for arg in "$@"; do
        case "$arg" in -*) continue ;; esac
        if [ -e "${arg%%::*}" ]; then paths=(); break; fi
    done
    echo "== pytest"
    .venv/bin/python -m pytest -q --durations=25 "${paths[@]}" "$@"
    pytest_rc $?
    rc=$?
    [ "$first_failure" -ne 0 ] || first_failure=$rc
    exit "$first_failure"
fi

# The whole suite in three lanes, the first two side by side (2 cores: the real guest's TCG boots take one):
# - guest: the real Debian guest (tests/e2e/test_cloud_guest.py), minutes of boots;
# - side: what never stops, restarts or floods the shared libvirtd and API server: unit, differential,
#   emulator, Helm, the benchmark smoke run, live migration (on its own namespaced libvirtds) and the
#   chart's DaemonSet pod on the kubelet node;
# - then the rest of the end-to-end tests alone: they take libvirtd and the API server down and up.
GUEST=(tests/e2e/test_cloud_guest.py)
SIDE=(tests/unit tests/differential tests/emulator tests/helm tests/benchmarks tests/e2e/test_migration.py
      tests/e2e/test_daemonset_pod.py)
lanes=$(mktemp -d /tmp/lvo-test-lanes.XXXXXX)
lane() {  # lane NAME PYTEST-ARGS...: in the background, its output into $lanes/NAME.log
    local name=$1
    shift
    (
        started=$SECONDS
        .venv/bin/python -m pytest -q -p no:cacheprovider --durations=15 --basetemp="$lanes/$name" "$@" \
            >"$lanes/$name.log" 2>&1
        rc=$?
        echo "$rc $((SECONDS - started))" >"$lanes/$name.rc"
    ) &
}
report() {  # report NAME: its output, then its exit code into first_failure
    local name=$1 rc seconds
    read -r rc seconds <"$lanes/$name.rc"
    echo "== pytest lane $name (${seconds} s, exit $rc)"
    cat "$lanes/$name.log"
    pytest_rc "$rc"
    rc=$?
    [ "$first_failure" -ne 0 ] || first_failure=$rc
}
# The guest lane starts as soon as the control plane answers: lint and the image build run beside it.
control_plane
if [ -n "${CI:-}" ]; then  # what an interrupted earlier session left (each session would remove the others')
    .venv/bin/python -m testbed.leftovers --remove-owned e2e
fi
export LVO_TEST_LANES=1
echo "== pytest lane guest started in the background (${GUEST[*]})"
lane guest "${GUEST[@]}"
lint
operator_image
echo "== pytest lane side started in the background (${SIDE[*]})"
lane side "${SIDE[@]}"
wait
report guest
report side
ignore=()
for path in "${GUEST[@]}" "${SIDE[@]}"; do ignore+=("--ignore=$path"); done
echo "== pytest lane rest (tests, without the two lanes above)"
started=$SECONDS
.venv/bin/python -m pytest -q --durations=25 tests "${ignore[@]}"
pytest_rc $?
rc=$?
echo "== pytest lane rest: $((SECONDS - started)) s, exit $rc"
[ "$first_failure" -ne 0 ] || first_failure=$rc
rm -rf "$lanes"
exit "$first_failure"

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

# The whole suite in lanes, side by side where they cannot disturb each other (2 cores; the real guest's
# TCG boots take most of one):
# 0. apioff (the one test that stops the shared API server) beside what needs no API server (unit and
#    emulator tests, ruff, mypy);
# 1. disruptive (the end-to-end tests that take the shared libvirtd down and up) beside migration (its
#    hypervisor hosts have libvirtds of their own, which the disruptive tests leave alone) and the image
#    build;
# 2. then three lanes at once: guest (the real Debian guest, minutes of boots); side (differential, Helm,
#    the benchmark smoke run, the chart's DaemonSet pod); e2e (every other test: the end-to-end tests that
#    share libvirtd and the API server but leave them up).
APIOFF=(tests/e2e/test_api_server_stopped.py)
OFFLINE=(tests/unit tests/emulator)
DISRUPTIVE=(tests/e2e/test_connection_loss.py tests/e2e/test_faults.py)
MIGRATION=(tests/e2e/test_migration.py)
GUEST=(tests/e2e/test_cloud_guest.py)
SIDE=(tests/differential tests/helm tests/benchmarks tests/e2e/test_daemonset_pod.py)
lanes=$(mktemp -d /tmp/lvo-test-lanes.XXXXXX)
lane() {  # lane NAME PYTEST-ARGS...: in the background, its output into $lanes/NAME.log
    local name=$1
    shift
    echo "== pytest lane $name started ($*)"
    (
        started=$SECONDS
        .venv/bin/python -m pytest -q -p no:cacheprovider --durations=15 --basetemp="$lanes/$name" "$@" \
            >"$lanes/$name.log" 2>&1
        rc=$?
        echo "$rc $((SECONDS - started))" >"$lanes/$name.rc"
    ) &
    echo $! >"$lanes/$name.pid"
}
report() {  # report NAME: waits for the lane, prints its output, then its exit code into first_failure
    local name=$1 rc seconds
    wait "$(cat "$lanes/$name.pid")"
    read -r rc seconds <"$lanes/$name.rc"
    echo "== pytest lane $name (${seconds} s, exit $rc)"
    cat "$lanes/$name.log"
    pytest_rc "$rc"
    rc=$?
    [ "$first_failure" -ne 0 ] || first_failure=$rc
}
suite_started=$SECONDS
control_plane
if [ -n "${CI:-}" ]; then  # what an interrupted earlier session left (each session would remove the others')
    .venv/bin/python -m testbed.leftovers --remove-owned e2e
fi
export LVO_TEST_LANES=1
lane offline "${OFFLINE[@]}"
lane apioff "${APIOFF[@]}"
lint
report apioff
echo "== phase 0 done at $((SECONDS - suite_started)) s"
lane disruptive "${DISRUPTIVE[@]}"
lane migration "${MIGRATION[@]}"
operator_image
report disruptive
echo "== phase 1 done at $((SECONDS - suite_started)) s"
lane guest "${GUEST[@]}"
lane side "${SIDE[@]}"
ignore=()
for path in "${APIOFF[@]}" "${OFFLINE[@]}" "${DISRUPTIVE[@]}" "${MIGRATION[@]}" "${GUEST[@]}" "${SIDE[@]}"; do
    ignore+=("--ignore=$path")
done
lane e2e tests "${ignore[@]}"
report offline
report migration
report e2e
report side
report guest
echo "== suite done in $((SECONDS - suite_started)) s"
rm -rf "$lanes"
exit "$first_failure"
